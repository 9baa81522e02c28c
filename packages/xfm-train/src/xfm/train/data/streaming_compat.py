"""Every use xfm makes of mosaicml-streaming beyond its public API, in one place.

xfm uses streaming's public API where there is one: ``StreamingDataset`` (subclassed by
:class:`~xfm.train.data.dataset.SourceDataset`), its ``load_state_dict``, ``MDSWriter`` and
``Stream``. What it needs and the public API does not offer is below, each with the reason. The
names were checked against :data:`SUPPORTED` (the range ``pyproject.toml`` pins);
:func:`check_internals` verifies them (run by ``tests/test_streaming_compat.py``), so a
streaming release that renames or changes one fails that test instead of training silently
wrong. Outside :data:`SUPPORTED` a warning is logged once at import.

===============================  ==============================================================
internal                         why xfm needs it
===============================  ==============================================================
``StreamingDataset.next_epoch``  Streaming keeps an epoch counter in shared memory and ignores a
(property setter)                resume state whose epoch is below it (it then starts the next
                                 epoch from its beginning). The counter moves on whenever an
                                 iteration is started and abandoned (the distributed probe step,
                                 a resume after any batch), so the loader points it at its own
                                 epoch before each epoch: :func:`set_next_epoch`.
``streaming.base.world.World``   The number of ranks streaming partitions an epoch over, counted
                                 as streaming counts it (also inside loader workers and before
                                 ``torch.distributed`` starts): :func:`world_size`.
``StreamingDataset``             ``prepare_shard(shard_id, blocking)``, ``on_exception(future)``
overridable methods              and ``get_item(sample_id, retry)`` are overridden to turn a
                                 failed download (which streaming only signals with an event,
                                 ``_event``) into an error naming the shard:
                                 :func:`background_failed`.
``_ShardState`` and              A shard whose download failed stays ``PREPARING`` in shared
``_shard_states``                memory and the other workers wait for it forever; marking it
                                 ``LOCAL`` sends them to read it, find it absent and fail with the
                                 same clear error: :func:`mark_shard_local`.
``shards``, ``file_pairs``,      Which shard file holds a sample and which stream it comes from,
``spanner``, ``streams``,        to name the file of a bad sample or a missing shard, and the
``stream_per_shard``,            columns of the dataset (to refuse a dataset of another source):
``column_names``, ``raw_data``   :func:`shard_file_pairs`, :func:`sample_location`,
                                 :func:`shard_stream`, :func:`column_names`.
shared-memory members            Streaming keeps every shared-memory block of a dataset until the
(``_locals_shm``, ...)           process exits; a long-lived process that builds many datasets
                                 runs out of file handles. :func:`release_shared_memory` closes
                                 them when a loader is released for good.
``streaming.base.format.``       Reading the shards of a local MDS folder row by row, without a
``reader_from_json``,            ``StreamingDataset`` (no shared memory, no workers), including
``streaming.base.compression.``  compressed shards (``xfm.tasks.task_mds``): no public reader
``decompress``                   offers random access with decompression.
===============================  ==============================================================
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import logging
from typing import Any, Final

__all__ = [
    "SUPPORTED",
    "background_failed",
    "check_internals",
    "column_names",
    "decompress",
    "mark_shard_local",
    "reader_from_json",
    "release_shared_memory",
    "sample_location",
    "set_next_epoch",
    "shard_file_pairs",
    "shard_stream",
    "supported_version",
    "world_size",
]

log = logging.getLogger("xfm.train.data")

SUPPORTED: Final[tuple[tuple[int, int], tuple[int, int]]] = ((0, 13), (0, 14))
"""mosaicml-streaming versions whose internals this module was written against:
``>=0.13,<0.14`` (the range of xfm-train's ``pyproject.toml``)."""

#: The shared-memory members of a ``StreamingDataset``: its locals record and resume state
#: (``SharedMemory``), and objects holding one (``SharedArray`` / ``SharedScalar`` /
#: ``SharedBarrier``).
SHM_MEMBERS: Final[tuple[str, ...]] = ("_locals_shm", "_resume_shm")
SHM_HOLDERS: Final[tuple[str, ...]] = (
    "_shared_barrier",
    "_next_epoch",
    "_cache_usage",
    "_shard_states",
    "_shard_access_times",
)

#: Methods of ``StreamingDataset`` that :class:`~xfm.train.data.dataset.SourceDataset`
#: overrides or calls, with the parameters it passes.
METHODS: Final[dict[str, tuple[str, ...]]] = {
    "prepare_shard": ("self", "shard_id", "blocking"),
    "on_exception": ("self", "future"),
    "get_item": ("self", "sample_id", "retry"),
    "load_state_dict": ("self", "obj"),
}

#: Attributes of a built ``StreamingDataset`` that this module reads.
INSTANCE_ATTRIBUTES: Final[tuple[str, ...]] = (
    "shards",
    "spanner",
    "streams",
    "stream_per_shard",
    "_event",
    "_shard_states",
    *SHM_MEMBERS,
    *SHM_HOLDERS,
)


def supported_version(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed streaming's) lies in :data:`SUPPORTED`."""
    if version is None:
        version = importlib.metadata.version("mosaicml-streaming")
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    low, high = SUPPORTED
    return low <= tuple(parts) < high


# --------------------------------------------------------------------------- dataset state


def set_next_epoch(dataset: Any, epoch: int) -> None:
    """Point streaming's shared epoch counter of ``dataset`` at ``epoch`` (see the table)."""
    dataset.next_epoch = epoch


def world_size() -> int:
    """The number of ranks streaming partitions each epoch over (``World.detect()``)."""
    from streaming.base.world import World

    return int(World.detect().num_ranks)


def background_failed(dataset: Any) -> bool:
    """Whether a background download thread of ``dataset`` has failed (streaming's event)."""
    event = getattr(dataset, "_event", None)
    return bool(event is not None and event.is_set())


def mark_shard_local(dataset: Any, shard_id: int) -> None:
    """Mark ``shard_id`` as present so that workers waiting for it stop waiting (they then
    read it, find it absent, and fail with a clear error)."""
    from streaming.base.dataset import _ShardState

    dataset._shard_states[shard_id] = _ShardState.LOCAL


# --------------------------------------------------------------------------- shards


def shard_file_pairs(dataset: Any) -> list[tuple[str, str | None]]:
    """``(raw file name, compressed file name or None)`` of every file of every shard."""
    return [
        (raw.basename, zipped.basename if zipped is not None else None)
        for shard in dataset.shards
        for raw, zipped in shard.file_pairs
    ]


def sample_location(dataset: Any, sample_id: int) -> tuple[int, str, int]:
    """``(shard id, shard file name, index in the shard)`` of global sample ``sample_id``."""
    shard_id, index = dataset.spanner[sample_id]
    shard = dataset.shards[shard_id]
    name = shard.raw_data.basename if hasattr(shard, "raw_data") else f"shard {shard_id}"
    return int(shard_id), name, int(index)


def shard_stream(dataset: Any, shard_id: int) -> tuple[str, str | None, str]:
    """``(local folder, remote or None, first file name)`` of shard ``shard_id``."""
    shard = dataset.shards[shard_id]
    stream = dataset.streams[dataset.stream_per_shard[shard_id]]
    name = shard.file_pairs[0][0].basename if shard.file_pairs else f"shard {shard_id}"
    return stream.local, stream.remote, name


def column_names(dataset: Any) -> list[str]:
    """The MDS columns of ``dataset`` (those of its first shard; ``[]`` without shards)."""
    return list(getattr(dataset.shards[0], "column_names", [])) if dataset.shards else []


# --------------------------------------------------------------------------- shared memory


def release_shared_memory(dataset: Any) -> None:
    """Close (and unlink, where this process created them) ``dataset``'s shared memory.

    Streaming keeps every shared-memory object alive until the process exits (an ``atexit``
    handler holds it) and, when a dataset starts, opens the blocks of every prefix still in
    use: in a long-lived process (a notebook, a test session) each new dataset then holds
    handles to all earlier ones, and the open files grow quadratically until the process limit
    (seen: 20,000 after ~100 trainer runs). The dataset cannot be iterated afterwards. A member
    a streaming version does not have is skipped.
    """
    shms = [getattr(dataset, name, None) for name in SHM_MEMBERS]
    for name in SHM_HOLDERS:
        holder = getattr(dataset, name, None)
        arr = getattr(holder, "arr", None) or getattr(holder, "_arr", None) or holder
        shms.append(getattr(arr, "shm", None))
    for shm in shms:
        cleanup = getattr(shm, "cleanup", None)
        if cleanup is None:
            continue
        with contextlib.suppress(Exception):
            cleanup()


# --------------------------------------------------------------------------- MDS readers


def reader_from_json(dirname: str, split: str | None, obj: dict[str, Any]) -> Any:
    """The shard reader of one ``index.json`` shard entry (``streaming.base.format``)."""
    from streaming.base.format import reader_from_json as _reader

    return _reader(dirname, split, obj)


def decompress(algo: str | None, data: bytes) -> bytes:
    """Decompress shard bytes written with compression ``algo`` (``streaming.base.compression``)."""
    from streaming.base.compression import decompress as _decompress

    return _decompress(algo, data)


# --------------------------------------------------------------------------- checks


def _params(fn: Any) -> tuple[str, ...]:
    return tuple(inspect.signature(fn).parameters)


def check_internals(dataset: Any | None = None) -> list[str]:
    """What of the internals above the installed streaming lacks or has changed (``[]``: all
    present with the expected signatures). With ``dataset`` (a ``StreamingDataset`` that was
    given a resume state and iterated once: ``_resume_shm`` and ``_event`` are created then),
    its instance attributes are checked too."""
    problems: list[str] = []
    version = importlib.metadata.version("mosaicml-streaming")
    if not supported_version(version):
        low, high = SUPPORTED
        problems.append(
            f"mosaicml-streaming {version} is outside the supported range "
            f">={low[0]}.{low[1]},<{high[0]}.{high[1]}"
        )
    try:
        from streaming.base.dataset import StreamingDataset, _ShardState
        from streaming.base.world import World
    except ImportError as err:
        return [*problems, f"import: {err}"]
    prop = inspect.getattr_static(StreamingDataset, "next_epoch", None)
    if not (isinstance(prop, property) and prop.fset is not None):
        problems.append("StreamingDataset.next_epoch is no longer a settable property")
    for name, expected in METHODS.items():
        fn = getattr(StreamingDataset, name, None)
        if fn is None:
            problems.append(f"StreamingDataset.{name} is gone")
        elif _params(fn)[: len(expected)] != expected:
            problems.append(f"StreamingDataset.{name}{_params(fn)}: expected {expected}")
    if not hasattr(_ShardState, "LOCAL"):
        problems.append("_ShardState.LOCAL is gone")
    if not callable(getattr(World, "detect", None)):
        problems.append("streaming.base.world.World.detect is gone")
    elif not isinstance(World.detect().num_ranks, int):
        problems.append("World.detect().num_ranks is not an int")
    try:
        from streaming.base.compression import decompress as _decompress
        from streaming.base.format import reader_from_json as _reader
    except ImportError as err:
        problems.append(f"import: {err}")
    else:
        if _params(_reader) != ("dirname", "split", "obj"):
            problems.append(f"reader_from_json{_params(_reader)}: expected (dirname, split, obj)")
        if _params(_decompress) != ("algo", "data"):
            problems.append(f"decompress{_params(_decompress)}: expected (algo, data)")
    if dataset is not None:
        for name in INSTANCE_ATTRIBUTES:
            if not hasattr(dataset, name):
                problems.append(f"StreamingDataset instances lack {name!r}")
        for name in SHM_HOLDERS:
            holder = getattr(dataset, name, None)
            arr = getattr(holder, "arr", None) or getattr(holder, "_arr", None) or holder
            if holder is not None and getattr(arr, "shm", None) is None:
                problems.append(f"StreamingDataset.{name} holds no shared memory ('shm')")
        if getattr(dataset, "shards", None):
            shard = dataset.shards[0]
            for name in ("file_pairs", "raw_data", "column_names", "samples", "zip_data"):
                if not hasattr(shard, name):
                    problems.append(f"shard readers lack {name!r}")
    return problems


with contextlib.suppress(importlib.metadata.PackageNotFoundError):
    if not supported_version():
        log.warning(
            "mosaicml-streaming %s is outside the range xfm-train was tested with "
            "(>=%d.%d,<%d.%d); run xfm-train's test_streaming_compat.py to check it",
            importlib.metadata.version("mosaicml-streaming"),
            *SUPPORTED[0],
            *SUPPORTED[1],
        )

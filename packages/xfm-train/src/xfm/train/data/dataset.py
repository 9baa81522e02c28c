"""``SourceDataset``: a ``streaming.StreamingDataset`` of one source that processes its samples.

Each raw MDS sample is decoded, transformed, tokenized and masked by a *processor* inside the
loader worker that reads it. A sample that cannot be processed (corrupt image, missing field,
empty caption) becomes a :class:`~xfm.train.data.errors.BadSample` that the collate function
drops and counts, so it still counts as consumed and resumption stays exact.

What this needs of streaming beyond its public API goes through
:mod:`xfm.train.data.streaming_compat` (explained and version-checked there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streaming import StreamingDataset

from xfm.train.data import streaming_compat as compat
from xfm.train.data.errors import BadSample, DataSourceError
from xfm.train.data.schemas import get_schema
from xfm.train.data.writers import _cloud_reason

__all__ = [
    "SourceDataset",
    "default_cache_dir",
    "is_remote",
    "local_cache_path",
    "release_shared_memory",
]

Processor = Callable[[dict[str, Any], int, int], Any]
"""``processor(raw_sample, sample_id, epoch) -> processed sample`` (raises on a bad sample)."""

_REMOTE = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_remote(url: str) -> bool:
    """Whether ``url`` names an object store (``s3://``, ``gs://``...) rather than a local path."""
    return bool(_REMOTE.match(url)) and not url.startswith("file://")


def default_cache_dir() -> Path:
    """``$XFM_DATA_CACHE`` or ``~/.cache/xfm/data``: where remote shards are cached."""
    env = os.environ.get("XFM_DATA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "xfm" / "data"


def local_cache_path(url: str, cache_dir: str | Path | None = None) -> str:
    """The cache folder of remote ``url``: ``<cache_dir>/<readable name>-<hash>``."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", url.split("://", 1)[-1]).strip("_")[-80:]
    digest = hashlib.sha1(url.encode()).hexdigest()[:10]
    return str(base / f"{name}-{digest}")


#: How often a dataset tries to claim a shared-memory prefix that another process took first.
_SHM_CLAIM_ATTEMPTS = 5


class SourceDataset(StreamingDataset):
    """Samples of one source, read from a local folder or an object store, processed.

    Args:
        source: a registered data source (``"text"``, ``"image_text"``, ``"region"``,
            ``"image"`` or a plug-in's).
        url: local folder, ``s3://...`` or ``gs://...`` holding ``index.json`` and shards.
        processor: called as ``processor(raw, sample_id, epoch)`` inside the workers; raise
            to mark the sample bad. ``None`` yields the raw column dict.
        batch_size: per-rank batch size (streaming uses it to partition the epoch so that
            resumption is exact with any number of workers).
        shuffle: shuffle with ``seed``.
        seed: shuffling seed; masks are also derived from it by the processors.
        cache_dir: where remote shards are cached (see :func:`local_cache_path`).
        cache_limit: size limit of that cache (bytes or ``"10gb"``); ``None`` keeps everything.
        num_canonical_nodes: streaming's canonical node count; fix it to keep the sample order
            independent of the number of machines.
        download_retry: download attempts per file.
        download_timeout: seconds per download.
    """

    def __init__(
        self,
        source: str,
        url: str,
        *,
        processor: Processor | None = None,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        cache_limit: int | str | None = None,
        num_canonical_nodes: int = 1,
        download_retry: int = 1,
        download_timeout: float = 60.0,
    ) -> None:
        get_schema(source)
        self.source = source
        self.url = str(url)
        self.processor = processor
        self.seed = seed
        self._epoch = 0
        if is_remote(self.url):
            remote, local = self.url, local_cache_path(self.url, cache_dir)
        else:
            path = self.url.removeprefix("file://")
            if not Path(path, "index.json").is_file():
                reason = (
                    "no such folder"
                    if not Path(path).exists()
                    else "no index.json in it (expected an MDS dataset written by xfm's writers)"
                )
                raise DataSourceError(self.url, reason)
            remote, local = None, path
        for attempt in range(_SHM_CLAIM_ATTEMPTS):
            try:
                super().__init__(
                    remote=remote,
                    local=local,
                    batch_size=batch_size,
                    shuffle=shuffle,
                    shuffle_seed=seed,
                    num_canonical_nodes=num_canonical_nodes,
                    cache_limit=cache_limit,
                    download_retry=download_retry,
                    download_timeout=download_timeout,
                )
                break
            except DataSourceError:
                raise
            except FileExistsError as exc:
                # two processes that start at the same moment can pick the same free shared-
                # memory prefix; the second one to create it fails: pick again after a pause
                if attempt + 1 == _SHM_CLAIM_ATTEMPTS:
                    raise DataSourceError(self.url, _open_reason(exc)) from exc
                time.sleep(random.uniform(0.1, 0.6))
            except Exception as exc:
                raise DataSourceError(self.url, _open_reason(exc)) from exc
        self._check_shards(remote, local)
        missing = set(get_schema(source).columns) - set(self._stream_columns())
        if missing:
            raise DataSourceError(
                self.url,
                f"its columns {sorted(self._stream_columns())} lack {sorted(missing)} required "
                f"by the {source!r} source",
            )

    def _check_shards(self, remote: str | None, local: str) -> None:
        """Every shard listed in ``index.json`` must exist (raw or compressed), locally or in
        the remote folder (one listing), so that a missing shard is a clear error here rather
        than a hang or a silently short epoch in the loader workers."""
        names = compat.shard_file_pairs(self)
        if remote is None:
            absent = [
                raw
                for raw, zipped in names
                if not Path(local, raw).is_file() and not (zipped and Path(local, zipped).is_file())
            ]
        else:
            present = _remote_names(remote)
            if present is None:  # the store does not allow listing: checked on download
                return
            absent = [
                raw
                for raw, zipped in names
                if raw not in present
                and (zipped is None or zipped not in present)
                and not Path(local, raw).is_file()
            ]
        if absent:
            more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
            raise DataSourceError(
                self.url,
                f"shard {absent[0]!r} is listed in index.json but missing ({len(absent)} of "
                f"{len(names)} shards missing: {', '.join(map(repr, absent[:3]))}{more})",
            )

    # ------------------------------------------------------------ background failures
    # Streaming downloads shards in background threads; when one fails it only sets an event,
    # and the iteration then ends early without an error (a short epoch), or, in a loader
    # worker waiting for a shard another worker failed to prepare, never ends. We keep the
    # failure and raise it, naming the shard, from the iteration.

    def on_exception(self, future: Any) -> None:
        """Record a background thread's exception (streaming only sets an event)."""
        exc = future.exception()
        if exc is not None and getattr(self, "_bg_error", None) is None:
            self._bg_error = exc
        super().on_exception(future)

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """Streaming's download, with a failure turned into :class:`DataSourceError` naming
        the shard (and the shard marked as failed for the other workers)."""
        try:
            super().prepare_shard(shard_id, blocking)
        except Exception as exc:
            # Streaming leaves the shard PREPARING in shared memory, and the other workers (or
            # the main thread, when a background download failed) wait for it forever. Marking
            # it LOCAL sends them to read it: they find the file absent and try to prepare it
            # themselves (a retry), failing with this same error. Done for every failure,
            # DataSourceError included (it left waiters hanging now and then).
            with contextlib.suppress(Exception):
                compat.mark_shard_local(self, shard_id)
            if isinstance(exc, DataSourceError):
                raise
            raise self._shard_error(shard_id, exc) from exc

    def _shard_error(self, shard_id: int, exc: BaseException) -> DataSourceError:
        local, remote, name = compat.shard_stream(self, shard_id)
        if remote is None and not Path(local, name).is_file():
            why = "the file is missing"
        else:
            text = str(exc).strip()
            why = f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
        return DataSourceError(self.url, f"cannot read shard {name!r} ({why})")

    def __iter__(self) -> Any:
        self._bg_error = None
        yield from super().__iter__()
        self._raise_background_error()

    def _raise_background_error(self) -> None:
        err = getattr(self, "_bg_error", None)
        if err is None and not compat.background_failed(self):
            return
        if isinstance(err, DataSourceError):
            raise err
        raise DataSourceError(
            self.url,
            "a shard could not be read: "
            + (f"{type(err).__name__}: {err}" if err is not None else "a loader thread failed"),
        ) from err

    def _stream_columns(self) -> list[str]:
        return compat.column_names(self)

    @property
    def epoch(self) -> int:
        """The epoch being read (the processors derive per-sample randomness from it)."""
        return self._epoch

    def start_epoch(self, epoch: int, sample_in_epoch: int, state: dict[str, Any]) -> None:
        """Make the next iteration read epoch ``epoch`` from sample ``sample_in_epoch`` on
        (over all ranks). Call before creating the iterator (and so the loader workers).

        Args:
            epoch: the epoch to read.
            sample_in_epoch: samples of it already consumed over all ranks.
            state: the rest of streaming's resume state (``num_canonical_nodes``,
                ``shuffle_seed``, ``initial_physical_nodes``).
        """
        # Streaming ignores a resume state below its shared epoch counter (see
        # streaming_compat): point the counter at our epoch so that the state is honoured.
        compat.set_next_epoch(self, epoch)
        self.load_state_dict({**state, "epoch": epoch, "sample_in_epoch": sample_in_epoch})
        self._epoch = epoch

    def locate(self, sample_id: int) -> tuple[str, int]:
        """``(shard file name, index in shard)`` of global sample ``sample_id``."""
        _, name, index = compat.sample_location(self, sample_id)
        return name, index

    def get_item(self, sample_id: int, retry: int = 7) -> Any:
        """The processed sample ``sample_id``, or a :class:`BadSample` saying why not."""
        try:
            raw = super().get_item(sample_id, retry)
        except DataSourceError:
            raise
        except RuntimeError as exc:  # streaming's download failure: not a bad sample, a bad source
            self._raise_background_error()
            shard_id, _, _ = compat.sample_location(self, sample_id)
            raise self._shard_error(shard_id, exc) from exc
        except Exception as exc:  # undecodable column
            return self._bad(sample_id, f"unreadable sample: {type(exc).__name__}: {exc}")
        if self.processor is None:
            return raw
        try:
            out = self.processor(raw, sample_id, self._epoch)
        except Exception as exc:
            return self._bad(sample_id, f"{type(exc).__name__}: {exc}")
        return out

    def _bad(self, sample_id: int, reason: str) -> BadSample:
        shard, index = self.locate(sample_id)
        return BadSample(self.source, int(sample_id), shard, index, reason)


def _remote_names(remote: str) -> set[str] | None:
    """Names of the files in remote folder ``remote``, or None when it cannot be listed."""
    try:
        from xfm.core.checkpoint.storage import resolve

        fs, path = resolve(remote)
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    except Exception:
        return None


def _open_reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, json.JSONDecodeError | KeyError | TypeError | UnicodeDecodeError):
        return (
            f"index.json is malformed ({type(exc).__name__}: {text.strip()[:300]}); expected "
            f"the index of an MDS dataset written by xfm's writers"
        )
    if isinstance(exc, FileNotFoundError) or "index.json" in text:
        return f"index.json not found or not readable ({type(exc).__name__}: {text.strip()[:300]})"
    return _cloud_reason(exc)


def release_shared_memory(dataset: StreamingDataset) -> None:
    """Close (and unlink, where this process created them) ``dataset``'s shared memory; the
    dataset cannot be iterated afterwards (see
    :func:`xfm.train.data.streaming_compat.release_shared_memory`)."""
    compat.release_shared_memory(dataset)

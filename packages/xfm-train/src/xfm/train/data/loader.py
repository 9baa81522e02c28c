"""Loaders: one per source (:class:`SourceLoader`) and the per-step multi-source loader.

:class:`MultiSourceLoader` yields, per optimizer step, a ``dict`` with one batch from each
enabled source (built-in sources in SPEC order ``text, image_text, region, image``, then
plug-in sources: see :func:`~xfm.train.data.sources.order_sources`), each with its own batch
size. Each source runs through its epochs independently. ``state_dict()`` records, per source,
the epoch and the number of samples consumed in it (over all ranks); ``load_state_dict()``
makes a freshly built loader continue exactly where the saved one stopped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader

from xfm.train.data.batches import Batch, collate
from xfm.train.data.dataset import SourceDataset, release_shared_memory
from xfm.train.data.errors import BadSample, DataError, DataSourceError, TooManyBadSamplesError
from xfm.train.data.schemas import get_schema

__all__ = [
    "LoaderConfig",
    "MultiSourceLoader",
    "SourceConfig",
    "SourceLoader",
    "build_loader",
    "die_with_parent",
]

log = logging.getLogger("xfm.train.data")

STATE_VERSION = 1


@dataclass
class SourceConfig:
    """One data source of a loader.

    Attributes:
        url: local folder, ``s3://...`` or ``gs://...`` of the MDS shards.
        batch_size: per-rank batch size of this source.
        enabled: skip this source when ``False``.
        shuffle: shuffle the samples (deterministically from the loader seed).
    """

    url: str
    batch_size: int
    enabled: bool = True
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"SourceConfig.batch_size must be >= 1, got {self.batch_size}.")


@dataclass
class LoaderConfig:
    """Settings shared by the sources of a loader.

    Attributes:
        seed: shuffling seed (masks are derived from it too).
        num_workers: ``DataLoader`` worker processes per source.
        cache_dir: local cache of remote shards (default ``$XFM_DATA_CACHE`` or
            ``~/.cache/xfm/data``).
        cache_limit: size limit of that cache (``"5gb"``, bytes, or ``None``).
        max_bad_fraction: raise :class:`TooManyBadSamplesError` when more than this fraction
            of the samples read from a source were bad ...
        min_samples_for_bad_check: ... once at least this many samples were read.
        log_bad_every_s: log at most one bad-sample line per source per this many seconds
            (the count of suppressed lines is reported).
        prefetch_factor: batches prefetched per worker.
        pin_memory: pin batches in page-locked memory (for CUDA).
        num_canonical_nodes: streaming's canonical node count (see :class:`SourceDataset`):
            the epoch's sample order depends on it and not on the number of ranks, which is
            what lets a run resume on another number of ranks. It is saved with the loader
            state and a resume that changes it is refused. Keep the default ``1`` unless the
            run spans many machines (it must divide, or be a multiple of, the node count).
        download_retry: download attempts per remote file.
        timeout_s: with worker processes, the longest wait for one batch before the loader
            fails with a :class:`DataSourceError` (a stuck download or worker); ``0`` waits
            forever. Workers also exit when their parent process dies.
    """

    seed: int = 0
    num_workers: int = 0
    cache_dir: str | None = None
    cache_limit: int | str | None = None
    max_bad_fraction: float = 0.01
    min_samples_for_bad_check: int = 64
    log_bad_every_s: float = 10.0
    prefetch_factor: int = 2
    pin_memory: bool = False
    num_canonical_nodes: int = 1
    download_retry: int = 1
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(
                f"LoaderConfig.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}."
            )
        if self.num_workers < 0:
            raise ValueError(f"LoaderConfig.num_workers must be >= 0, got {self.num_workers}.")
        if self.timeout_s < 0:
            raise ValueError(f"LoaderConfig.timeout_s must be >= 0, got {self.timeout_s}.")


def _world_size() -> int:
    from xfm.train.data.streaming_compat import world_size

    return world_size()


@dataclass
class _BadStats:
    raw: int = 0
    bad: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    last_log: float = float("-inf")
    suppressed: int = 0


class SourceLoader:
    """Batches of one source across epochs, with exact resumption.

    Args:
        source: a registered data source (``"text"``, ``"image_text"``, ``"region"``,
            ``"image"`` or a plug-in's, see :mod:`xfm.train.data.sources`).
        config: where and how many.
        loader: settings shared by the sources.
        processor: per-sample processor (see :class:`SourceDataset`); ``None`` yields raw
            column dicts (a list per batch instead of a typed batch).
        pad_id: padding id used by the collate function.
    """

    def __init__(
        self,
        source: str,
        config: SourceConfig,
        loader: LoaderConfig | None = None,
        processor: Callable[[dict[str, Any], int, int], Any] | None = None,
        pad_id: int = 0,
    ) -> None:
        get_schema(source)
        self.source = source
        self.config = config
        self.loader_config = lc = loader or LoaderConfig()
        self.dataset = SourceDataset(
            source,
            config.url,
            processor=processor,
            batch_size=config.batch_size,
            shuffle=config.shuffle,
            seed=lc.seed,
            cache_dir=lc.cache_dir,
            cache_limit=lc.cache_limit,
            num_canonical_nodes=lc.num_canonical_nodes,
            download_retry=lc.download_retry,
        )
        collate_fn: Callable[[list[Any]], Any] = (
            functools.partial(collate, source, pad_id=pad_id)
            if processor is not None
            else _raw_collate
        )
        kwargs: dict[str, Any] = {}
        if lc.num_workers > 0:
            kwargs["prefetch_factor"] = lc.prefetch_factor
            kwargs["timeout"] = float(lc.timeout_s)
            kwargs["worker_init_fn"] = functools.partial(die_with_parent, os.getpid())
        self.dataloader = DataLoader(
            self.dataset,
            batch_size=config.batch_size,
            num_workers=lc.num_workers,
            collate_fn=collate_fn,
            pin_memory=lc.pin_memory,
            drop_last=False,
            **kwargs,
        )
        self.world_size = _world_size()
        self.epoch = 0
        self.sample_in_epoch = 0
        self._iter: Iterator[Any] | None = None
        self._stats = _BadStats()

    # ------------------------------------------------------------------ iteration

    @property
    def samples_per_epoch(self) -> int:
        """Samples in one epoch over all ranks."""
        return int(self.dataset.epoch_size)

    def _start_epoch(self) -> None:
        # (streaming's epoch counter is reset to ours there: an abandoned iteration, e.g. the
        # distributed probe step or a resume after any batch, has moved it on)
        self.dataset.start_epoch(self.epoch, self.sample_in_epoch, self._streaming_state())
        if self.loader_config.num_workers > 0:
            # PR_SET_PDEATHSIG fires when the *thread* that started the workers ends: only
            # use it for workers started by the main thread (the watchdog covers the rest).
            self.dataloader.worker_init_fn = functools.partial(
                die_with_parent,
                os.getpid(),
                use_pdeathsig=threading.current_thread() is threading.main_thread(),
            )
        self._iter = iter(self.dataloader)

    def _streaming_state(self) -> dict[str, Any]:
        return {
            "num_canonical_nodes": self.loader_config.num_canonical_nodes,
            "shuffle_seed": self.loader_config.seed,
            "initial_physical_nodes": None,
        }

    def next_batch(self) -> Any:
        """The next non-empty batch, starting the next epoch when one ends."""
        empty_epochs = 0
        while True:
            if self._iter is None:
                self._start_epoch()
            assert self._iter is not None
            try:
                batch = next(self._iter)
            except (DataError, RuntimeError) as exc:  # also a worker's error, or the timeout
                self.close()
                clean = self._worker_error(exc)
                if clean is exc:
                    raise
                raise clean from None
            except StopIteration:
                self._iter = None
                if self.sample_in_epoch == 0:
                    empty_epochs += 1
                    if empty_epochs > 1:
                        raise DataError(
                            f"{self.source} data at {self.config.url!r} yields no samples."
                        ) from None
                self.epoch += 1
                self.sample_in_epoch = 0
                continue
            num_raw = batch.num_raw if isinstance(batch, Batch) else len(batch)
            self.sample_in_epoch += num_raw * self.world_size
            if isinstance(batch, Batch):
                self._account(batch)
                if len(batch) == 0:
                    continue
            return batch

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.next_batch()

    def _worker_error(self, exc: BaseException) -> BaseException:
        """The clean error behind a DataLoader ``RuntimeError``: a worker's data error (torch
        wraps it with the worker's traceback) or the batch timeout."""
        text = str(exc)
        if "DataLoader timed out" in text:
            return DataSourceError(
                self.config.url,
                f"no {self.source} batch from the loader workers within "
                f"{self.loader_config.timeout_s:g}s (LoaderConfig.timeout_s): a shard download "
                f"or a worker is stuck",
            )
        if "in DataLoader worker process" in text:
            for line in reversed(text.strip().splitlines()):
                name, sep, message = line.partition(": ")
                cls = _DATA_ERRORS.get(name.rsplit(".", 1)[-1])
                if sep and cls is not None:
                    return cls(message)
        return exc

    def close(self) -> None:
        """Stop the worker processes of the current epoch."""
        it, self._iter = self._iter, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def release(self) -> None:
        """Stop the workers and free the dataset's shared memory for good (the loader cannot
        be used afterwards): see :func:`~xfm.train.data.dataset.release_shared_memory`."""
        self.close()
        release_shared_memory(self.dataset)

    # ------------------------------------------------------------------ bad samples

    def _account(self, batch: Batch) -> None:
        st = self._stats
        st.raw += batch.num_raw
        st.bad += len(batch.skipped)
        for bad in batch.skipped:
            key = bad.reason.split(":")[0]
            st.reasons[key] = st.reasons.get(key, 0) + 1
            self._log_bad(bad)
        lc = self.loader_config
        if st.raw >= lc.min_samples_for_bad_check and st.bad > lc.max_bad_fraction * st.raw:
            reasons = ", ".join(f"{n} x {r}" for r, n in sorted(st.reasons.items()))
            raise TooManyBadSamplesError(
                f"{self.source} data at {self.config.url!r}: {st.bad} of {st.raw} samples read "
                f"were bad ({st.bad / st.raw:.1%} > max_bad_fraction {lc.max_bad_fraction:.1%}). "
                f"Reasons: {reasons}. Fix the data or raise LoaderConfig.max_bad_fraction."
            )

    def _log_bad(self, bad: BadSample) -> None:
        st = self._stats
        now = time.monotonic()
        if now - st.last_log < self.loader_config.log_bad_every_s:
            st.suppressed += 1
            return
        more = f" ({st.suppressed} more bad samples not logged)" if st.suppressed else ""
        log.warning(
            "skipped bad %s sample %d (shard %s, index %d): %s%s",
            bad.source,
            bad.sample_id,
            bad.shard,
            bad.index,
            bad.reason,
            more,
        )
        st.last_log, st.suppressed = now, 0

    @property
    def bad_samples(self) -> tuple[int, int]:
        """``(bad, read)`` sample counts of this process over the run (continued from the
        loader state given to :meth:`load_state_dict`)."""
        return self._stats.bad, self._stats.raw

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "sample_in_epoch", "url", "seed", "batch_size", "world_size",
        "num_canonical_nodes", "bad_samples": {"bad", "read", "reasons"}}`` (the bad-sample
        counts of this process). ``sample_in_epoch`` counts samples over all ranks: the state
        resumes on any number of ranks with the same ``num_canonical_nodes``."""
        st = self._stats
        return {
            "bad_samples": {"bad": st.bad, "read": st.raw, "reasons": dict(st.reasons)},
            "epoch": self.epoch,
            "sample_in_epoch": self.sample_in_epoch,
            "url": self.config.url,
            "seed": self.loader_config.seed,
            "batch_size": self.config.batch_size,
            "world_size": self.world_size,
            "num_canonical_nodes": self.loader_config.num_canonical_nodes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`) at the next batch."""
        for key in ("epoch", "sample_in_epoch"):
            if key not in state:
                raise KeyError(
                    f"{self.source} loader state lacks {key!r}; got keys {sorted(state)}."
                )
        if state.get("seed", self.loader_config.seed) != self.loader_config.seed:
            raise ValueError(
                f"{self.source} loader state was saved with seed {state['seed']}, this loader "
                f"uses seed {self.loader_config.seed}: the sample order would differ."
            )
        saved_nodes = state.get("num_canonical_nodes")  # (absent from states of older versions)
        if saved_nodes is not None and int(saved_nodes) != self.loader_config.num_canonical_nodes:
            raise ValueError(
                f"{self.source} loader state was saved with num_canonical_nodes {saved_nodes}, "
                f"this loader uses {self.loader_config.num_canonical_nodes}: the sample order "
                f"of the epoch would differ, so samples would be repeated or skipped. Set "
                f"data.loader.num_canonical_nodes={saved_nodes} to resume (it may differ from "
                f"the number of nodes or ranks)."
            )
        self.close()
        self.epoch = int(state["epoch"])
        self.sample_in_epoch = int(state["sample_in_epoch"])
        counts = state.get("bad_samples") or {}  # (absent from states of older versions)
        self._stats.bad = int(counts.get("bad", 0))
        self._stats.raw = int(counts.get("read", 0))
        self._stats.reasons = {str(k): int(v) for k, v in (counts.get("reasons") or {}).items()}


def _raw_collate(samples: list[Any]) -> list[Any]:
    return samples


_DATA_ERRORS: dict[str, type[DataError]] = {
    "DataSourceError": DataSourceError,
    "TooManyBadSamplesError": TooManyBadSamplesError,
    "DataError": DataError,
}


def die_with_parent(parent_pid: int, worker_id: int, *, use_pdeathsig: bool = True) -> None:
    """``worker_init_fn``: end this loader worker as soon as its parent process dies.

    Use as ``DataLoader(..., worker_init_fn=functools.partial(die_with_parent, os.getpid()))``.

    torch's workers check their parent only between batches, so a worker stuck inside a
    download would outlive a killed trainer. On Linux the kernel sends SIGKILL at the parent's
    death (``PR_SET_PDEATHSIG``, with ``use_pdeathsig``: only when the workers are started
    from the parent's main thread, since it fires when that thread ends); elsewhere, and as a
    backstop, a daemon thread polls the parent's pid every second.
    """
    del worker_id
    if use_pdeathsig and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="xfm-die-with-parent", daemon=True).start()


class MultiSourceLoader:
    """Per step, one batch from every enabled source.

    Args:
        sources: :class:`SourceConfig` by registered source name.
        loader: shared settings.
        processors: per-source processors (see :mod:`xfm.train.data.transforms`); a source
            without one yields raw column lists.
        pad_id: padding id for the collate functions.

    Iterating yields ``dict[source, batch]`` forever (sources cycle through their epochs);
    use ``itertools.islice`` or :meth:`next_step` for a number of steps.
    """

    def __init__(
        self,
        sources: dict[str, SourceConfig],
        loader: LoaderConfig | None = None,
        processors: dict[str, Callable[[dict[str, Any], int, int], Any]] | None = None,
        pad_id: int = 0,
    ) -> None:
        from xfm.train.data.sources import order_sources, source_names

        unknown = set(sources) - set(source_names())
        if unknown:
            raise KeyError(
                f"Unknown data source(s) {sorted(unknown)}; expected some of {source_names()}."
            )
        processors = processors or {}
        self.loaders: dict[str, SourceLoader] = {}
        for name in order_sources(sources):
            cfg = sources[name]
            if not cfg.enabled:
                continue
            self.loaders[name] = SourceLoader(name, cfg, loader, processors.get(name), pad_id)
        if not self.loaders:
            raise ValueError("MultiSourceLoader: no enabled source; enable at least one.")
        self.step = 0

    @property
    def sources(self) -> list[str]:
        """The enabled sources, in step order."""
        return list(self.loaders)

    def next_step(self) -> dict[str, Any]:
        """One batch of every enabled source."""
        out = {name: ld.next_batch() for name, ld in self.loaders.items()}
        self.step += 1
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_step()

    def bad_samples(self) -> dict[str, int]:
        """Bad (skipped) samples so far by source (this process; they survive a resume)."""
        return {name: ld.bad_samples[0] for name, ld in self.loaders.items()}

    def state_dict(self) -> dict[str, Any]:
        """``{"version", "step", "sources": {name: SourceLoader.state_dict()}}``."""
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "sources": {name: ld.state_dict() for name, ld in self.loaders.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; every enabled source must be in it."""
        saved = state.get("sources", {})
        missing = [n for n in self.loaders if n not in saved]
        if missing:
            raise KeyError(
                f"Loader state has no entry for enabled source(s) {missing}; it has {sorted(saved)}."
            )
        for name, ld in self.loaders.items():
            ld.load_state_dict(saved[name])
        self.step = int(state.get("step", 0))

    def close(self) -> None:
        """Stop all worker processes."""
        for ld in self.loaders.values():
            ld.close()

    def release(self) -> None:
        """Stop the workers and free every source's shared memory (the loader is done)."""
        for ld in self.loaders.values():
            ld.release()


def build_loader(
    sources: dict[str, SourceConfig],
    loader: LoaderConfig | None = None,
    process: Any | None = None,
) -> MultiSourceLoader:
    """A :class:`MultiSourceLoader` whose sources are processed with ``process``.

    Args:
        sources: :class:`SourceConfig` by source name.
        loader: shared loader settings.
        process: a :class:`~xfm.train.data.transforms.ProcessConfig`; its tokenizer is loaded
            once here for the padding id (and again lazily in each worker). ``None`` yields
            raw samples.
    """
    from xfm.train.data.sources import get_source
    from xfm.train.data.transforms import build_processors, load_tokenizer

    if process is None:
        return MultiSourceLoader(sources, loader)
    pad_id = 0
    needs_text = any(get_source(s).uses_tokenizer for s in sources)
    if needs_text and process.tokenizer is not None:
        pad_id = int(load_tokenizer(process.tokenizer).pad_id)
    processors = build_processors(process, list(sources))
    return MultiSourceLoader(sources, loader, processors, pad_id=pad_id)

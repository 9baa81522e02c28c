"""``SourceDataset``: a ``streaming.StreamingDataset`` of one source that processes its samples.

Each raw MDS sample is decoded, transformed, tokenized and masked by a *processor* inside the
loader worker that reads it. A sample that cannot be processed (corrupt image, missing field,
empty caption) becomes a :class:`~xfm.train.data.errors.BadSample` that the collate function
drops and counts, so it still counts as consumed and resumption stays exact.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streaming import StreamingDataset

from xfm.train.data.errors import BadSample, DataSourceError
from xfm.train.data.schemas import get_schema
from xfm.train.data.writers import _cloud_reason

__all__ = ["SourceDataset", "default_cache_dir", "is_remote", "local_cache_path"]

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


class SourceDataset(StreamingDataset):
    """Samples of one source, read from a local folder or an object store, processed.

    Args:
        source: ``"text"``, ``"image_text"``, ``"region"`` or ``"image"``.
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
        except DataSourceError:
            raise
        except Exception as exc:
            raise DataSourceError(self.url, _open_reason(exc)) from exc
        missing = set(get_schema(source).columns) - set(self._stream_columns())
        if missing:
            raise DataSourceError(
                self.url,
                f"its columns {sorted(self._stream_columns())} lack {sorted(missing)} required "
                f"by the {source!r} source",
            )

    def _stream_columns(self) -> list[str]:
        return list(getattr(self.shards[0], "column_names", [])) if self.shards else []

    def _resume_incr_epoch(self) -> tuple[int, int]:
        epoch, sample_in_epoch = super()._resume_incr_epoch()
        self._epoch = epoch  # the processors derive per-sample randomness from it
        return epoch, sample_in_epoch

    def locate(self, sample_id: int) -> tuple[str, int]:
        """``(shard file name, index in shard)`` of global sample ``sample_id``."""
        shard_id, index = self.spanner[sample_id]
        shard = self.shards[shard_id]
        name = shard.raw_data.basename if hasattr(shard, "raw_data") else f"shard {shard_id}"
        return name, int(index)

    def get_item(self, sample_id: int, retry: int = 7) -> Any:
        """The processed sample ``sample_id``, or a :class:`BadSample` saying why not."""
        try:
            raw = super().get_item(sample_id, retry)
        except RuntimeError:  # streaming's download failure: not a bad sample, a bad source
            raise
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


def _open_reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or "index.json" in text:
        return f"index.json not found or not readable ({type(exc).__name__}: {text.strip()[:300]})"
    return _cloud_reason(exc)

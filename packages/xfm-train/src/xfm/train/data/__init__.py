"""Streaming data for X-FM pretraining: MDS schemas and writers, loaders, synthetic data.

* :mod:`~xfm.train.data.schemas` / :mod:`~xfm.train.data.writers`: the four sources (text,
  image-text, region, image) as MDS shards in a folder, ``s3://`` or ``gs://``.
* :mod:`~xfm.train.data.transforms`: decode, transform, tokenize, mask (in loader workers).
* :mod:`~xfm.train.data.loader`: :class:`SourceLoader` and the per-step
  :class:`MultiSourceLoader` with exact resumption and rank-disjoint samples.
* :mod:`~xfm.train.data.synth`: the embedded "shapes world" dataset.
* :mod:`~xfm.train.data.prepare`: converters from the official dataset formats.

Names are imported on first use (PEP 562): importing mosaicml-streaming costs ~260 MB of resident
memory and seconds of start-up (it imports transformers, scikit-learn, torchvision), which code
that only needs the typed batches or the schemas does not pay.
"""

from __future__ import annotations

from xfm.core.lazy import lazy_exports

_LAZY = {
    "BadSample": "xfm.train.data.errors",
    "BadSampleError": "xfm.train.data.errors",
    "Batch": "xfm.train.data.batches",
    "DataError": "xfm.train.data.errors",
    "DataSourceError": "xfm.train.data.errors",
    "ImageBatch": "xfm.train.data.batches",
    "ImageProcessor": "xfm.train.data.transforms",
    "ImageTextBatch": "xfm.train.data.batches",
    "ImageTextProcessor": "xfm.train.data.transforms",
    "ImageTextWriter": "xfm.train.data.writers",
    "ImageWriter": "xfm.train.data.writers",
    "LoaderConfig": "xfm.train.data.loader",
    "MultiSourceLoader": "xfm.train.data.loader",
    "NO_LABEL": "xfm.train.data.schemas",
    "ProcessConfig": "xfm.train.data.transforms",
    "RegionBatch": "xfm.train.data.batches",
    "RegionProcessor": "xfm.train.data.transforms",
    "RegionWriter": "xfm.train.data.writers",
    "SCHEMAS": "xfm.train.data.schemas",
    "SOURCES": "xfm.train.data.schemas",
    "Schema": "xfm.train.data.schemas",
    "SchemaError": "xfm.train.data.errors",
    "ShardWriter": "xfm.train.data.writers",
    "SourceConfig": "xfm.train.data.loader",
    "SourceDataset": "xfm.train.data.dataset",
    "SourceLoader": "xfm.train.data.loader",
    "TextBatch": "xfm.train.data.batches",
    "TextProcessor": "xfm.train.data.transforms",
    "TextWriter": "xfm.train.data.writers",
    "TooManyBadSamplesError": "xfm.train.data.errors",
    "WriteSummary": "xfm.train.data.writers",
    "build_loader": "xfm.train.data.loader",
    "build_processors": "xfm.train.data.transforms",
    "collate": "xfm.train.data.batches",
    "default_cache_dir": "xfm.train.data.dataset",
    "get_schema": "xfm.train.data.schemas",
    "is_remote": "xfm.train.data.dataset",
    "local_cache_path": "xfm.train.data.dataset",
    "open_writer": "xfm.train.data.writers",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

__all__ = [
    "NO_LABEL",
    "SCHEMAS",
    "SOURCES",
    "BadSample",
    "BadSampleError",
    "Batch",
    "DataError",
    "DataSourceError",
    "ImageBatch",
    "ImageProcessor",
    "ImageTextBatch",
    "ImageTextProcessor",
    "ImageTextWriter",
    "ImageWriter",
    "LoaderConfig",
    "MultiSourceLoader",
    "ProcessConfig",
    "RegionBatch",
    "RegionProcessor",
    "RegionWriter",
    "Schema",
    "SchemaError",
    "ShardWriter",
    "SourceConfig",
    "SourceDataset",
    "SourceLoader",
    "TextBatch",
    "TextProcessor",
    "TextWriter",
    "TooManyBadSamplesError",
    "WriteSummary",
    "build_loader",
    "build_processors",
    "collate",
    "default_cache_dir",
    "get_schema",
    "is_remote",
    "local_cache_path",
    "open_writer",
]

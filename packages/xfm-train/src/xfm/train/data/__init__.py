"""Streaming data for X-FM pretraining: MDS schemas and writers, loaders, synthetic data.

* :mod:`~xfm.train.data.sources`: the ``data_source`` registry: each source's schema,
  processor, batch type and default objectives, by name (the four built-in sources, text,
  image-text, region, image, and any plug-in's).
* :mod:`~xfm.train.data.schemas` / :mod:`~xfm.train.data.writers`: sources as MDS shards in a
  folder, ``s3://`` or ``gs://``.
* :mod:`~xfm.train.data.transforms`: decode, transform, tokenize, mask (in loader workers).
* :mod:`~xfm.train.data.loader`: :class:`SourceLoader` and the per-step
  :class:`MultiSourceLoader` with exact resumption and rank-disjoint samples.
* :mod:`~xfm.train.data.synth`: the embedded "shapes world" dataset.
* :mod:`~xfm.train.data.prepare`: converters from the official dataset formats.
* :mod:`~xfm.train.data.streaming_compat`: the one place that uses mosaicml-streaming beyond
  its public API (pinned, explained and tested).

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
    "DataSource": "xfm.train.data.sources",
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
    "SampleProcessor": "xfm.train.data.transforms",
    "SCHEMAS": "xfm.train.data.schemas",
    "SOURCES": "xfm.train.data.schemas",
    "Schema": "xfm.train.data.schemas",
    "SchemaError": "xfm.train.data.errors",
    "ShardWriter": "xfm.train.data.writers",
    "SourceConfig": "xfm.train.data.loader",
    "SourceDataset": "xfm.train.data.dataset",
    "SourceLoader": "xfm.train.data.loader",
    "TOKEN_PADDING": "xfm.train.data.batches",
    "TextBatch": "xfm.train.data.batches",
    "TextProcessor": "xfm.train.data.transforms",
    "TextWriter": "xfm.train.data.writers",
    "TooManyBadSamplesError": "xfm.train.data.errors",
    "WriteSummary": "xfm.train.data.writers",
    "build_loader": "xfm.train.data.loader",
    "build_processors": "xfm.train.data.transforms",
    "collate": "xfm.train.data.batches",
    "collate_as": "xfm.train.data.batches",
    "default_cache_dir": "xfm.train.data.dataset",
    "get_schema": "xfm.train.data.schemas",
    "get_source": "xfm.train.data.sources",
    "is_remote": "xfm.train.data.dataset",
    "local_cache_path": "xfm.train.data.dataset",
    "open_writer": "xfm.train.data.writers",
    "source_names": "xfm.train.data.sources",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

__all__ = [
    "NO_LABEL",
    "SCHEMAS",
    "SOURCES",
    "TOKEN_PADDING",
    "BadSample",
    "BadSampleError",
    "Batch",
    "DataError",
    "DataSource",
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
    "SampleProcessor",
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
    "collate_as",
    "default_cache_dir",
    "get_schema",
    "get_source",
    "is_remote",
    "local_cache_path",
    "open_writer",
    "source_names",
]

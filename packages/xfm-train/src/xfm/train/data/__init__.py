"""Streaming data for X-FM pretraining: MDS schemas and writers, loaders, synthetic data.

* :mod:`~xfm.train.data.schemas` / :mod:`~xfm.train.data.writers`: the four sources (text,
  image-text, region, image) as MDS shards in a folder, ``s3://`` or ``gs://``.
* :mod:`~xfm.train.data.transforms`: decode, transform, tokenize, mask (in loader workers).
* :mod:`~xfm.train.data.loader`: :class:`SourceLoader` and the per-step
  :class:`MultiSourceLoader` with exact resumption and rank-disjoint samples.
* :mod:`~xfm.train.data.synth`: the embedded "shapes world" dataset.
* :mod:`~xfm.train.data.prepare`: converters from the official dataset formats.
"""

from xfm.train.data.batches import (
    Batch,
    ImageBatch,
    ImageTextBatch,
    RegionBatch,
    TextBatch,
    collate,
)
from xfm.train.data.dataset import SourceDataset, default_cache_dir, is_remote, local_cache_path
from xfm.train.data.errors import (
    BadSample,
    BadSampleError,
    DataError,
    DataSourceError,
    SchemaError,
    TooManyBadSamplesError,
)
from xfm.train.data.loader import (
    LoaderConfig,
    MultiSourceLoader,
    SourceConfig,
    SourceLoader,
    build_loader,
)
from xfm.train.data.schemas import NO_LABEL, SCHEMAS, SOURCES, Schema, get_schema
from xfm.train.data.transforms import (
    ImageProcessor,
    ImageTextProcessor,
    ProcessConfig,
    RegionProcessor,
    TextProcessor,
    build_processors,
)
from xfm.train.data.writers import (
    ImageTextWriter,
    ImageWriter,
    RegionWriter,
    ShardWriter,
    TextWriter,
    WriteSummary,
    open_writer,
)

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

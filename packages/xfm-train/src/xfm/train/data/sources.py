"""Data sources by name: the ``data_source`` registry kind (entry-point group ``xfm.data_source``).

A :class:`DataSource` is everything the trainer needs to read one kind of sample: the MDS
columns (:class:`~xfm.train.data.schemas.Schema`, used by the writers and checked when a
dataset is opened), the per-sample processor (decode, transform, tokenize, mask: see
:mod:`xfm.train.data.transforms`), the typed :class:`~xfm.train.data.batches.Batch` it collates
into, and the objectives it feeds by default. ``data.sources`` of a pretraining config names
sources of this registry, so a plug-in distribution adds one (a video-text or interleaved-text
source, say) that ``xfm pretrain`` trains on by configuration alone::

    [project.entry-points."xfm.data_source"]
    video_text = "my_plugin.data:VIDEO_TEXT"      # a DataSource instance

or, in-process, ``xfm.core.registry.register("data_source", "video_text", VIDEO_TEXT)``.

The four built-in sources (SPEC section 2) are registered by xfm-train itself:

============  ======================================================  ====================
source        objectives (default)                                    batch
============  ======================================================  ====================
text          text_mlm                                                :class:`TextBatch`
image_text    itc, itm, fusion_mlm, mim                               :class:`ImageTextBatch`
region        itc, itm, fusion_mlm, bbox                              :class:`RegionBatch`
image         mim                                                     :class:`ImageBatch`
============  ======================================================  ====================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xfm.train.data.batches import (
    TOKEN_PADDING,
    Batch,
    ImageBatch,
    ImageTextBatch,
    RegionBatch,
    TextBatch,
    collate_as,
)
from xfm.train.data.schemas import SCHEMAS, SOURCES, Schema
from xfm.train.data.transforms import (
    ImageProcessor,
    ImageTextProcessor,
    ProcessConfig,
    RegionProcessor,
    TextProcessor,
)

__all__ = [
    "IMAGE",
    "IMAGE_TEXT",
    "KIND",
    "REGION",
    "TEXT",
    "DataSource",
    "Processor",
    "ProcessorFactory",
    "get_source",
    "order_sources",
    "source_names",
]

KIND = "data_source"
"""The registry kind of data sources (entry-point group ``xfm.data_source``)."""

Processor = Callable[[dict[str, Any], int, int], Any]
"""``processor(raw_sample, sample_id, epoch) -> processed sample dict`` (raises on a bad one)."""

ProcessorFactory = Callable[[ProcessConfig, Any], Processor]
"""``factory(process_config, tokenizer_or_None) -> Processor`` (e.g. a processor class)."""


@dataclass(frozen=True)
class DataSource:
    """One registered kind of pretraining sample.

    Attributes:
        name: the source name (``data.sources`` key, metric prefix ``<name>/<loss>``).
        schema: its MDS columns; ``schema.source`` must equal ``name``.
        processor: builds the per-sample processor from the run's
            :class:`~xfm.train.data.transforms.ProcessConfig` and the tokenizer (``None``: the
            processor loads ``config.tokenizer`` itself, lazily, in each loader worker).
        batch_type: the :class:`~xfm.train.data.batches.Batch` subclass of its batches; the
            processor returns one value per field of it (plus ``index`` and ``key``).
        objectives: objective name -> weight used when the config lists none for the source.
            Each objective must declare this source in its ``sources``.
        uses_tokenizer: whether the processor needs the tokenizer (the loader then loads it
            once for the padding id).
        padding: per-sample 1-D fields padded by :meth:`collate`, with their padding value
            (``"pad_id"``: the tokenizer's).
        order: sources of one step are read in increasing ``order`` (the built-in ones 0-3,
            in SPEC order; plug-ins default to 100), then in config order.
        description: one line for humans.
    """

    name: str
    schema: Schema
    processor: ProcessorFactory
    batch_type: type[Batch]
    objectives: Mapping[str, float] = field(default_factory=dict)
    uses_tokenizer: bool = True
    padding: Mapping[str, int | str] = field(default_factory=lambda: dict(TOKEN_PADDING))
    order: int = 100
    description: str = ""

    def __post_init__(self) -> None:
        if self.schema.source != self.name:
            raise ValueError(
                f"DataSource {self.name!r}: its schema is that of source {self.schema.source!r}"
            )
        if not (isinstance(self.batch_type, type) and issubclass(self.batch_type, Batch)):
            raise TypeError(
                f"DataSource {self.name!r}: batch_type must be a subclass of "
                f"xfm.train.data.batches.Batch, got {self.batch_type!r}"
            )
        if not callable(self.processor):
            raise TypeError(f"DataSource {self.name!r}: processor must be callable")

    def collate(self, samples: Sequence[Any], pad_id: int = 0) -> Batch:
        """A :attr:`batch_type` from processed samples and bad-sample records
        (:func:`~xfm.train.data.batches.collate_as` with :attr:`padding`)."""
        return collate_as(self.batch_type, samples, pad_id, self.padding)

    def build_processor(self, config: ProcessConfig, tokenizer: Any | None = None) -> Processor:
        """The per-sample processor of this source for ``config``."""
        return self.processor(config, tokenizer)


TEXT = DataSource(
    "text",
    SCHEMAS["text"],
    TextProcessor,
    TextBatch,
    {"text_mlm": 1.0},
    order=0,
    description="plain documents for text MLM",
)
IMAGE_TEXT = DataSource(
    "image_text",
    SCHEMAS["image_text"],
    ImageTextProcessor,
    ImageTextBatch,
    {"itc": 1.0, "itm": 1.0, "fusion_mlm": 1.0, "mim": 1.0},
    order=1,
    description="(image, caption) pairs",
)
REGION = DataSource(
    "region",
    SCHEMAS["region"],
    RegionProcessor,
    RegionBatch,
    {"itc": 1.0, "itm": 1.0, "fusion_mlm": 1.0, "bbox": 1.0},
    order=2,
    description="(image, box, region caption)",
)
IMAGE = DataSource(
    "image",
    SCHEMAS["image"],
    ImageProcessor,
    ImageBatch,
    {"mim": 1.0},
    uses_tokenizer=False,
    order=3,
    description="images (optionally labelled) for MIM",
)

assert tuple(s.name for s in (TEXT, IMAGE_TEXT, REGION, IMAGE)) == SOURCES


def get_source(name: str) -> DataSource:
    """The :class:`DataSource` registered as ``name`` (built-in or plug-in).

    Raises:
        xfm.core.registry.UnknownComponentError: (a ``KeyError``) no such source; the message
            lists the registered ones and the closest matches.
        TypeError: the registered object is not a :class:`DataSource`.
    """
    from xfm.core.registry import get

    source = get(KIND, name)
    if not isinstance(source, DataSource):
        raise TypeError(
            f"data_source {name!r} is a {type(source).__name__}, not an "
            f"xfm.train.data.sources.DataSource: register a DataSource instance"
        )
    if source.name != name:
        raise ValueError(f"data_source {name!r} is registered as a source named {source.name!r}")
    return source


def source_names() -> list[str]:
    """Sorted names of the registered data sources (imports no plug-in)."""
    from xfm.core.registry import available

    return available(KIND)


def order_sources(names: Iterable[str]) -> list[str]:
    """``names`` in step order: by :attr:`DataSource.order`, then in the given order."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda n: (get_source(n).order, names.index(n)))

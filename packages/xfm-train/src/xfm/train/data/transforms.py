"""Per-sample processors: decode, transform, tokenize and mask one stored sample.

A processor is called inside the loader worker as ``processor(raw, sample_id, epoch)`` and
returns a dict of per-sample tensors that :func:`xfm.train.data.batches.collate` batches. All
randomness (augmentation, MIM masks, MLM masks) comes from generators seeded by
``(seed, epoch, sample_id)``, so a sample is processed identically whatever worker or rank
reads it, and a resumed run sees the same masks as an uninterrupted one.

Text masking comes from :mod:`xfm.text` (whole-word MLM for plain text, span masking for
captions), image transforms from :mod:`xfm.vision.transforms` (random resized crop, resize,
normalisation; seeded per sample) and image masking from :mod:`xfm.vision` (BEiT block-wise
masks). :class:`SampleProcessor` is the base a plug-in source's processor can build on (see
:mod:`xfm.train.data.sources`).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xfm.train.data.errors import BadSampleError
from xfm.train.data.images import decode_image
from xfm.train.data.schemas import get_schema

__all__ = [
    "ImageProcessor",
    "ImageTextProcessor",
    "ProcessConfig",
    "RegionProcessor",
    "SampleProcessor",
    "TextProcessor",
    "build_processors",
    "image_index_of",
    "sample_seed",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ProcessConfig:
    """How samples are turned into tensors.

    Attributes:
        tokenizer: path of a tokenizer folder or file understood by :mod:`xfm.text`.
        image_size: square input side in pixels.
        patch_size: vision patch size (the MIM mask is ``(image_size / patch_size)^2``).
        augment: random resized crop (scale 0.5-1) for image-text and image samples; region
            samples are only resized so that the box stays exact.
        mean, std: normalisation.
        mim: produce MIM block masks.
        mim_ratio: masked fraction of the patches (official 75/196).
        mim_min_block: smallest masked block in patches (official 16 at 14x14; scaled down
            for small grids).
        max_text_len: text source token limit (official 128).
        text_mask_prob, max_text_masks: text MLM (official 0.15, 20).
        max_caption_len: caption token limit (official 30).
        caption_mask_prob, max_caption_masks: caption masking (official 0.5, 15).
        seed: seed of all per-sample randomness.
    """

    tokenizer: str | None = None
    image_size: int = 224
    patch_size: int = 16
    augment: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mim: bool = True
    mim_ratio: float = 75 / 196
    mim_min_block: int = 16
    max_text_len: int = 128
    text_mask_prob: float = 0.15
    max_text_masks: int = 20
    max_caption_len: int = 30
    caption_mask_prob: float = 0.5
    max_caption_masks: int = 15
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ProcessConfig.image_size {self.image_size} is not a multiple of patch_size "
                f"{self.patch_size}."
            )

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size


def sample_seed(seed: int, epoch: int, sample_id: int, salt: str = "") -> int:
    """A 63-bit seed from ``(seed, epoch, sample_id, salt)`` (stable across processes)."""
    h = hashlib.blake2b(f"{seed}/{epoch}/{sample_id}/{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def image_index_of(image_id: str) -> int:
    """A stable int64 id of an ``image_id`` string (CRC32; equal ids give equal ints)."""
    return zlib.crc32(image_id.encode())


class SampleProcessor:
    """Base of the per-sample processors: ``processor(raw, sample_id, epoch) -> dict``.

    Subclasses set :attr:`source` and implement ``__call__``, which returns ``index`` (the
    ``sample_id``), ``key`` (the stored ``id``) and one value per field of the source's batch
    type; they raise (e.g. :class:`~xfm.train.data.errors.BadSampleError`) to mark a sample
    bad. The helpers give the seeded per-sample randomness, the tokenizer and the image
    tensors that the built-in sources use.

    Args:
        config: the shared processing settings (``data.process`` of a run).
        tokenizer: an already loaded tokenizer (else loaded lazily from ``config.tokenizer``).
    """

    source = ""

    def __init__(self, config: ProcessConfig, tokenizer: Any | None = None) -> None:
        self.config = config
        self._tokenizer = tokenizer
        self._masker: Any | None = None
        self._transforms: dict[bool, Any] = {}

    def check_columns(self, raw: dict[str, Any]) -> None:
        """Raise :class:`BadSampleError` when a column of the source's schema is missing."""
        missing = [c for c in get_schema(self.source).columns if c not in raw or raw[c] is None]
        if missing:
            raise BadSampleError(f"missing field(s) {missing}")

    # -- text ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The :mod:`xfm.text` tokenizer (loaded lazily, once per worker)."""
        if self._tokenizer is None:
            if self.config.tokenizer is None:
                raise ValueError(
                    f"ProcessConfig.tokenizer is not set; the {self.source} source needs one."
                )
            self._tokenizer = load_tokenizer(self.config.tokenizer)
        return self._tokenizer

    def encode(self, text: str, max_len: int) -> torch.Tensor:
        """``[T]`` int64 token ids of ``text`` with special tokens, at most ``max_len``.

        Raises:
            BadSampleError: ``text`` is empty or not a string.
        """
        if not isinstance(text, str) or not text.strip():
            raise BadSampleError("empty text")
        return _encode_one(self.tokenizer, text, max_len)

    _encode = encode

    # -- images -------------------------------------------------------------------------
    def _transform(self, augment: bool) -> Any:
        """The :mod:`xfm.vision.transforms` pipeline: random resized crop (scale 0.5-1,
        bicubic, no flip) when ``augment``, else a bicubic resize; then normalisation."""
        if augment not in self._transforms:
            from xfm.vision.transforms import eval_transform, pretrain_transform

            norm = (self.config.mean, self.config.std)
            size = self.config.image_size
            self._transforms[augment] = (
                pretrain_transform(size, scale=(0.5, 1.0), hflip=0.0, normalization=norm)
                if augment
                else eval_transform(size, normalization=norm)
            )
        return self._transforms[augment]

    def image_tensor(self, data: bytes, gen: torch.Generator, augment: bool) -> torch.Tensor:
        """Encoded image ``data`` -> normalised float32 ``[3, S, S]`` (``S`` = image_size).

        Args:
            data: encoded image bytes (JPEG, PNG...).
            gen: seeds the random crop (one draw; unused without ``augment``).
            augment: random resized crop instead of a plain resize.
        """
        from xfm.vision.transforms import apply_seeded

        img = decode_image(data)
        if augment:
            return apply_seeded(self._transform(True), img, gen)
        return self._transform(False)(img)

    def mim_mask(self, seed: int) -> torch.Tensor:
        """``[N]`` bool BEiT block mask of the patch grid (all False when ``config.mim`` is off)."""
        return self._mim_mask(seed)

    def _mim_mask(self, seed: int) -> torch.Tensor:
        g = self.config.grid
        if not self.config.mim:
            return torch.zeros(g * g, dtype=torch.bool)
        if self._masker is None:
            from xfm.vision.masking import BlockMaskingGenerator

            n = max(1, round(self.config.mim_ratio * g * g))
            min_block = min(self.config.mim_min_block, max(1, n // 4))
            self._masker = BlockMaskingGenerator(g, n, min_num_patches=min_block)
        return self._masker(np.random.default_rng(seed)).reshape(-1)

    def generator(self, epoch: int, sample_id: int, salt: str) -> torch.Generator:
        """A CPU generator seeded by ``(config.seed, epoch, sample_id, salt)``."""
        return torch.Generator().manual_seed(sample_seed(self.config.seed, epoch, sample_id, salt))

    _gen = generator


class TextProcessor(SampleProcessor):
    """``text`` samples -> ``input_ids``, ``attention_mask``, ``mlm_input_ids``, ``mlm_labels``."""

    source = "text"

    def __call__(self, raw: dict[str, Any], sample_id: int, epoch: int) -> dict[str, Any]:
        """Process one raw ``text`` sample (see the module docstring)."""
        self.check_columns(raw)
        ids = self._encode(raw["text"], self.config.max_text_len)
        masked, labels = _text_mlm(
            self.tokenizer,
            ids,
            self.config.text_mask_prob,
            self.config.max_text_masks,
            self._gen(epoch, sample_id, "mlm"),
        )
        return {
            "index": sample_id,
            "key": raw["id"],
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mlm_input_ids": masked,
            "mlm_labels": labels,
        }


class _CaptionMixin(SampleProcessor):
    def _caption(self, caption: str, epoch: int, sample_id: int) -> dict[str, torch.Tensor]:
        ids = self._encode(caption, self.config.max_caption_len)
        masked, pos, labels = _caption_mask(
            self.tokenizer,
            ids,
            self.config.caption_mask_prob,
            self.config.max_caption_masks,
            self._gen(epoch, sample_id, "caption"),
        )
        return {
            "text_ids": ids,
            "text_mask": torch.ones_like(ids),
            "masked_ids": masked,
            "masked_pos": pos,
            "masked_labels": labels,
        }


class ImageTextProcessor(_CaptionMixin):
    """``image_text`` samples -> image, MIM mask, caption ids and its masked form."""

    source = "image_text"

    def __call__(self, raw: dict[str, Any], sample_id: int, epoch: int) -> dict[str, Any]:
        """Process one raw ``image_text`` sample."""
        self.check_columns(raw)
        out: dict[str, Any] = {"index": sample_id, "key": raw["id"]}
        out.update(self._caption(raw["caption"], epoch, sample_id))
        out["image"] = self.image_tensor(
            raw["image"], self._gen(epoch, sample_id, "aug"), self.config.augment
        )
        out["image_mask"] = self._mim_mask(sample_seed(self.config.seed, epoch, sample_id, "mim"))
        out["image_index"] = image_index_of(raw["image_id"])
        return out


class RegionProcessor(_CaptionMixin):
    """``region`` samples -> image, box ``(cx, cy, w, h)`` in [0, 1], patch mask of the box."""

    source = "region"

    def __call__(self, raw: dict[str, Any], sample_id: int, epoch: int) -> dict[str, Any]:
        """Process one raw ``region`` sample."""
        self.check_columns(raw)
        box = raw["box"]
        width, height = int(raw["width"]), int(raw["height"])
        if not (isinstance(box, list | tuple) and len(box) == 4) or width <= 0 or height <= 0:
            raise BadSampleError(f"bad box {box!r} or image size {(width, height)}")
        x, y, w, h = (float(v) for v in box)
        x0, y0 = max(0.0, x / width), max(0.0, y / height)
        x1, y1 = min(1.0, (x + w) / width), min(1.0, (y + h) / height)
        if x1 <= x0 or y1 <= y0:
            raise BadSampleError(f"box {box!r} lies outside the {width}x{height} image")
        out: dict[str, Any] = {"index": sample_id, "key": raw["id"]}
        out.update(self._caption(raw["caption"], epoch, sample_id))
        image = self.image_tensor(raw["image"], self._gen(epoch, sample_id, "aug"), False)
        out["image"] = image
        out["image_mask"] = self._mim_mask(sample_seed(self.config.seed, epoch, sample_id, "mim"))
        out["box"] = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
        g = self.config.grid
        cells = torch.arange(g, dtype=torch.float32) / g
        rows = (cells < y1) & (cells + 1 / g > y0)
        cols = (cells < x1) & (cells + 1 / g > x0)
        out["region_patch_mask"] = (rows[:, None] & cols[None, :]).reshape(-1)
        out["image_index"] = image_index_of(raw["image_id"])
        return out


class ImageProcessor(SampleProcessor):
    """``image`` samples -> image, MIM mask, label."""

    source = "image"

    def __call__(self, raw: dict[str, Any], sample_id: int, epoch: int) -> dict[str, Any]:
        """Process one raw ``image`` sample."""
        self.check_columns(raw)
        return {
            "index": sample_id,
            "key": raw["id"],
            "image": self.image_tensor(
                raw["image"], self._gen(epoch, sample_id, "aug"), self.config.augment
            ),
            "image_mask": self._mim_mask(sample_seed(self.config.seed, epoch, sample_id, "mim")),
            "label": int(raw["label"]),
        }


def build_processors(
    config: ProcessConfig, sources: list[str] | tuple[str, ...], tokenizer: Any | None = None
) -> dict[str, Any]:
    """One processor per registered source name (built-in or plug-in, see
    :mod:`xfm.train.data.sources`), sharing ``config`` (and ``tokenizer`` if given)."""
    from xfm.core.registry import get  # the registry, not xfm.train.data.sources: no cycle

    return {s: get("data_source", s).processor(config, tokenizer) for s in sources}


# ---------------------------------------------------------------------------------------
# xfm.text bridge
# ---------------------------------------------------------------------------------------


def load_tokenizer(path: str | Path) -> Any:
    """The :class:`xfm.text.tokenizer.TextTokenizer` at ``path`` (folder, tokenizer.json...)."""
    from xfm.text.tokenizer import load_tokenizer as _load

    return _load(path)


def _encode_one(tokenizer: Any, text: str, max_len: int) -> torch.Tensor:
    """``[T]`` int64 ids with special tokens, truncated to ``max_len``."""
    return torch.tensor(tokenizer.encode(text, max_tokens=max_len), dtype=torch.long)


def _text_mlm(
    tokenizer: Any, ids: torch.Tensor, prob: float, max_masks: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word MLM of one sequence ``[T]`` -> masked ids ``[T]``, labels ``[T]`` (-100)."""
    from xfm.text.masking import text_mlm_mask

    out = text_mlm_mask(
        ids[None],
        generator=gen,
        mask_token_id=tokenizer.mask_id,
        vocab_size=tokenizer.vocab_size,
        word_starts=tokenizer.word_starts(ids[None]),
        special_ids=tokenizer.special_ids,
        mask_prob=prob,
        max_masks=max_masks,
    )
    return out.input_ids[0], out.labels[0]


def _caption_mask(
    tokenizer: Any, ids: torch.Tensor, prob: float, max_masks: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Span masking of one caption ``[T]`` -> masked ids ``[T]``, positions ``[M]``, labels ``[M]``."""
    from xfm.text.masking import caption_mask

    out = caption_mask(
        ids[None],
        generator=gen,
        mask_token_id=tokenizer.mask_id,
        vocab_size=tokenizer.vocab_size,
        mask_prob=prob,
        max_masks=max_masks,
    )
    keep = out.masked_ids[0] != -100
    return out.input_ids[0], out.masked_pos[0][keep], out.masked_ids[0][keep]

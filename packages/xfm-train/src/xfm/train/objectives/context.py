"""One typed batch plus its lazily computed encoder outputs: every model pass runs at most once.

One image-text batch needs the unmasked vision output for ITC, ITM, fusion MLM and as the
MIM target, the caption states for ITC and ITM, and the per-layer cross-attention keys/values
of its images for every fusion pass (positives, hard negatives, MLM). :class:`BatchContext`
holds the typed batch of :mod:`xfm.train.data.batches` as it is (no second schema), computes
each of these on first use and hands the same tensor to every objective. It is the only caller
of the model's encoder passes and heads; objectives read its outputs and the batch's targets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from xfm.train.data.batches import Batch
from xfm.train.objectives.base import gather_masked

if TYPE_CHECKING:
    from collections.abc import Callable

    from xfm.fusion.model import XFM

__all__ = ["BatchContext"]

ImageKV = list[tuple[torch.Tensor, torch.Tensor]]


class BatchContext:
    """The typed batch of one source plus cached encoder outputs.

    Args:
        model: the (unwrapped) :class:`~xfm.fusion.XFM`.
        source: ``"text"``, ``"image_text"``, ``"region"``, ``"image"`` or a plug-in source
            (:mod:`xfm.train.data.sources`).
        batch: the batch of that source (:class:`~xfm.train.data.batches.TextBatch`,
            ``ImageTextBatch``, ``RegionBatch``, ``ImageBatch`` or the plug-in source's
            ``batch_type``), already on the device.
        generator: random generator of the ITM hard-negative sampling.
        negatives: fixed ``(neg_image_idx, neg_text_idx)`` ``[B]`` instead of sampling.
    """

    def __init__(
        self,
        model: XFM,
        source: str,
        batch: Batch,
        *,
        generator: torch.Generator | None = None,
        negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        from xfm.train.data.sources import get_source

        try:
            expected = get_source(source).batch_type
        except KeyError as e:
            raise ValueError(f"unknown source {source!r}: {e}") from None
        if not isinstance(batch, expected):
            raise TypeError(
                f"a {source!r} context needs a {expected.__name__}; got {type(batch).__name__}"
            )
        self.model = model
        self.source = source
        self.batch = batch
        self.generator = generator
        self.negatives = negatives
        self._cache: dict[str, Any] = {}

    # ----------------------------------------------------------------------- helpers
    def _field(self, name: str) -> Any:
        value = getattr(self.batch, name, None)
        if value is None:
            raise ValueError(f"this {self.source!r} batch has no {name!r}, which is needed here")
        return value

    def _cached(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def text_detached(self) -> bool:
        """True when the fusion encoder consumes detached language states (stop gradient)."""
        return bool(self.model.config.stop_gradient)

    @property
    def temp(self) -> torch.Tensor:
        """The model's ITC temperature (scalar parameter)."""
        return self.model.temp

    @property
    def sample_ids(self) -> torch.Tensor | None:
        """``[B]`` sample ids for id-aware ITC / ITM negatives (equal id = positive pair).

        The image ids of image-text batches (captions of one image are positives); ``None``
        for region batches (regions of one image are distinct pairs).
        """
        if self.source == "image_text":
            return self.batch.image_index
        return None

    @property
    def text_mask(self) -> torch.Tensor:
        """``[B, T]`` attention mask of the captions (or of the text of text batches)."""
        if self.source == "text":
            return self.batch.attention_mask
        return self._field("text_mask")

    # ----------------------------------------------------------------------- vision
    def _num_patches(self, image: torch.Tensor) -> int:
        cfg = getattr(self.model.vision_encoder, "config", None)
        patch = int(getattr(cfg, "patch_size", 16))
        return (image.shape[-2] // patch) * (image.shape[-1] // patch)

    def has_vision(self) -> bool:
        """Whether the unmasked vision output was already computed (with gradient)."""
        return "vision" in self._cache

    def vision(self) -> torch.Tensor:
        """Unmasked vision states ``[Bi, 1+N, Dv]`` (with gradient)."""
        return self._cached("vision", lambda: self.model.encode_image(self._field("image")))

    def group(self) -> torch.Tensor | None:
        """``[B]`` row of ``image`` for each text (region batches whose regions share images)."""
        return getattr(self.batch, "image_row", None)

    def group_index(self) -> torch.Tensor:
        """``[B]`` image row of each text."""
        group = self.group()
        if group is not None:
            return group.long()
        n = self._field("text_ids").shape[0]
        return torch.arange(n, device=self._field("image").device)

    def pair_vision_mask(self) -> torch.Tensor | None:
        """Cross-attention mask ``[B, 1+N]`` of :meth:`pair_vision` (None: all visible).

        Region batches: the patches inside each region, with the CLS column prepended when the
        batch gives ``[B, N]``.
        """
        if self.source != "region":
            return None

        def compute() -> torch.Tensor:
            mask = self._field("region_patch_mask")
            texts = self._field("text_ids").shape[0]
            if mask.shape[0] != texts:
                raise ValueError(
                    f"region_mask has {mask.shape[0]} rows but there are {texts} texts"
                )
            if mask.shape[1] == self._num_patches(self._field("image")):
                mask = torch.cat([mask.new_ones((mask.shape[0], 1)), mask], dim=1)
            return mask

        return self._cached("region_mask", compute)

    def pair_vision(self) -> torch.Tensor:
        """Image states of each pair ``[B, 1+N, Dv]``: the image, or its region (region data).

        For region data position 0 is the mean of the patches inside the region (official
        ``region_vision_embeds``).
        """

        def compute() -> torch.Tensor:
            vision = self.vision()
            region_mask = self.pair_vision_mask()
            if region_mask is None:
                if self.group() is None:
                    return vision
                return vision[self.group_index()]
            return self.model.region_vision_states(vision, self.group_index(), region_mask)

        return self._cached("pair_vision", compute)

    def pair_kv(self) -> ImageKV:
        """Per-layer fusion cross-attention K/V of :meth:`pair_vision` (computed once)."""
        return self._cached("pair_kv", lambda: self.model.fusion_image_kv(self.pair_vision()))

    def full_kv(self) -> ImageKV:
        """Per-layer K/V of the full images ``vision()[group]`` (bbox; region data)."""

        def compute() -> ImageKV:
            if self.pair_vision_mask() is None and self.group() is None:
                return self.pair_kv()
            kv = self.model.fusion_image_kv(self.vision())
            if self.group() is None:
                return kv
            idx = self.group_index()
            return [(k[idx], v[idx]) for k, v in kv]

        return self._cached("full_kv", compute)

    def masked_vision(self) -> torch.Tensor:
        """Vision states of the MIM-masked images ``[Bi, 1+N, Dv]``."""
        return self._cached(
            "masked_vision",
            lambda: self.model.encode_masked_image(self._field("image"), self._field("image_mask")),
        )

    def mim_target(self) -> torch.Tensor:
        """MIM target ``[Bi, 1+N, Dv]`` without gradient (see :meth:`XFM.mim_target`).

        Reuses the unmasked vision output when another objective computed it; otherwise
        runs the encoder under ``no_grad`` (image-only batches).
        """

        def compute() -> torch.Tensor:
            image = self._field("image")
            if not self.model.config.vision_guidance:
                return self.model.mim_target(image, image)
            if self.has_vision():
                states = self.vision()
            else:
                with torch.no_grad():
                    states = self.model.encode_image(image)
            return self.model.mim_target(image, states)

        return self._cached("mim_target", compute)

    # ------------------------------------------------------------------------- text
    def text(self) -> torch.Tensor:
        """Caption states ``[B, T, Dt]`` (with gradient)."""
        return self._cached(
            "text",
            lambda: self.model.encode_text(self._field("text_ids"), self.text_mask),
        )

    def masked_text(self) -> torch.Tensor:
        """States of the masked caption ``[B, T, Dt]``.

        Under stop gradient only the fusion encoder consumes them (detached), so they are
        computed without building a graph.
        """

        def compute() -> torch.Tensor:
            ids, mask = self._field("masked_ids"), self.text_mask
            if self.text_detached:
                with torch.no_grad():
                    return self.model.encode_text(ids, mask)
            return self.model.encode_text(ids, mask)

        return self._cached("masked_text", compute)

    # ------------------------------------------------------------------------ heads
    def itc_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``[B, E]`` image (pair) and text features."""
        return self._cached("itc", lambda: self.model.itc_features(self.pair_vision(), self.text()))

    def itm_logits(self, neg_image: torch.Tensor, neg_text: torch.Tensor) -> torch.Tensor:
        """Match logits ``[3B, 2]`` of B positives, B (text, ``neg_image``) and B
        (``neg_text``, image) pairs; ``neg_image`` / ``neg_text`` ``[B]`` are row indices.

        Three fusion passes over the pair keys/values computed once (no 3B copy of every
        layer's K/V).
        """
        text, mask = self.text(), self.text_mask
        kv = self.pair_kv()
        img_mask = self.pair_vision_mask()
        # index_select: its backward is index_add, much cheaper than advanced indexing's
        neg_kv = [(k.index_select(0, neg_image), v.index_select(0, neg_image)) for k, v in kv]
        neg_mask = None if img_mask is None else img_mask[neg_image]
        fuse = self.model.fuse
        cls = torch.zeros(text.shape[0], 1, dtype=torch.long, device=text.device)  # pair vector
        fused = torch.cat(
            [
                fuse(text, mask, image_mask=img_mask, image_kv=kv, positions=cls),
                fuse(text, mask, image_mask=neg_mask, image_kv=neg_kv, positions=cls),
                fuse(
                    text[neg_text], mask[neg_text], image_mask=img_mask, image_kv=kv, positions=cls
                ),
            ]
        )
        return self.model.itm_logits(fused)

    def fusion_mlm_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion states ``[K, D]`` at the ``K`` valid masked caption slots (the fusion MLM
        head's input) and their labels ``[K]`` (masked caption -> language encoder -> fusion
        with the pair image)."""

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            labels = self._field("masked_labels")
            valid = labels != -100
            positions = self._field("masked_pos").long().masked_fill(~valid, 0)
            fused = self.model.fuse(  # [B, M, D]: the last layer runs on the masked slots only
                self.masked_text(),
                self.text_mask,
                image_mask=self.pair_vision_mask(),
                image_kv=self.pair_kv(),
                positions=positions,
            )
            return fused[valid], labels[valid]

        return self._cached("fusion_mlm", compute)

    def fusion_mlm_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fusion MLM logits ``[K, V]`` at the ``K`` valid masked caption slots and their
        labels ``[K]``."""
        rows, labels = self.fusion_mlm_rows()
        return self.model.fusion_mlm_head(rows), labels

    def text_mlm_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Language-encoder states ``[K, D]`` at the ``K`` masked tokens of a text batch (the
        text MLM head's input) and their labels ``[K]`` (dense ``mlm_labels``, or the sparse
        ``masked_pos`` / ``masked_labels`` when the batch has them)."""

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            batch = self.batch
            states = self.model.encode_text(self._field("mlm_input_ids"), self.text_mask)
            if getattr(batch, "masked_pos", None) is not None:
                return gather_masked(states, batch.masked_pos, self._field("masked_labels"))
            valid = batch.mlm_labels != -100
            return states[valid], batch.mlm_labels[valid]

        return self._cached("text_mlm", compute)

    def text_mlm_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Text MLM logits ``[K, V]`` of the language encoder alone at the ``K`` masked tokens
        and their labels ``[K]``."""
        rows, labels = self.text_mlm_rows()
        return self.model.text_mlm_head(rows), labels

    def bbox_pred(self) -> torch.Tensor:
        """Predicted region boxes ``[B, 4]`` ``(cx, cy, w, h)`` from the fusion CLS of (full
        image, region caption); the caption states are detached under stop gradient."""
        return self._cached(
            "bbox",
            lambda: self.model.predict_bbox(
                self.model.fuse(
                    self.text(),
                    self.text_mask,
                    image_kv=self.full_kv(),
                    positions=torch.zeros(
                        self.text_mask.shape[0], 1, dtype=torch.long, device=self.text_mask.device
                    ),
                )
            ),
        )

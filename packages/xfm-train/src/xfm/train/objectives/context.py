"""Lazily computed, shared states of one batch: every encoder pass runs at most once.

One image-text batch needs the unmasked vision output for ITC, ITM, fusion MLM and as the
MIM target, the caption states for ITC and ITM, and the per-layer cross-attention keys/values
of its images for every fusion pass (positives, hard negatives, MLM). :class:`BatchContext`
computes each of them on first use and hands the same tensor to every objective.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from xfm.fusion.model import XFM

__all__ = ["BatchContext"]

ImageKV = list[tuple[torch.Tensor, torch.Tensor]]


class BatchContext:
    """Inputs of one batch plus cached encoder outputs.

    Args:
        model: the (unwrapped) :class:`~xfm.fusion.XFM`.
        source: ``"text"``, ``"image_text"``, ``"region"`` or ``"image"``.
        image: ``[Bi, 3, H, W]`` images.
        image_mask: ``[Bi, N]`` bool MIM mask (True = masked patch).
        text_ids, text_mask: ``[B, T]`` caption ids and attention mask.
        masked_ids: ``[B, T]`` caption ids after MLM masking.
        masked_pos, masked_labels: ``[B, M]`` masked positions and their labels (-100 pad).
        mlm_labels: ``[B, T]`` dense MLM labels (text source; -100 where not masked).
        ids: ``[B]`` sample ids for id-aware ITC / ITM negatives (same id = positive).
        group: ``[B]`` index of each text's image in ``image`` (region data; default
            ``arange(B)``).
        region_mask: ``[B, N]`` or ``[B, 1+N]`` patches inside each text's region.
        box: ``[B, 4]`` target boxes ``(cx, cy, w, h)`` in [0, 1].
        is_image: ``[B]`` 1 where the text describes the whole image (no box loss).
        generator: random generator of the hard-negative sampling.
        negatives: fixed ``(neg_image_idx, neg_text_idx)`` ``[B]`` instead of sampling.
    """

    def __init__(
        self,
        model: XFM,
        source: str,
        *,
        image: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        text_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        masked_ids: torch.Tensor | None = None,
        masked_pos: torch.Tensor | None = None,
        masked_labels: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        ids: torch.Tensor | None = None,
        group: torch.Tensor | None = None,
        region_mask: torch.Tensor | None = None,
        box: torch.Tensor | None = None,
        is_image: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.source = source
        self.image = image
        self.image_mask = image_mask
        self.text_ids = text_ids
        self.text_mask = text_mask
        self.masked_ids = masked_ids
        self.masked_pos = masked_pos
        self.masked_labels = masked_labels
        self.mlm_labels = mlm_labels
        self.ids = ids
        self.group = group
        if region_mask is not None and image is not None:
            n = region_mask.shape[1]
            if text_ids is not None and region_mask.shape[0] != text_ids.shape[0]:
                raise ValueError(
                    f"region_mask has {region_mask.shape[0]} rows but there are "
                    f"{text_ids.shape[0]} texts"
                )
            if n == self._num_patches(image):
                ones = region_mask.new_ones((region_mask.shape[0], 1))
                region_mask = torch.cat([ones, region_mask], dim=1)
        self.region_mask = region_mask
        self.box = box
        self.is_image = is_image
        self.generator = generator
        self.negatives = negatives
        self._cache: dict[str, Any] = {}

    def _num_patches(self, image: torch.Tensor) -> int:
        cfg = getattr(self.model.vision_encoder, "config", None)
        patch = int(getattr(cfg, "patch_size", 16))
        return (image.shape[-2] // patch) * (image.shape[-1] // patch)

    @classmethod
    def from_batch(
        cls,
        model: XFM,
        source: str,
        batch: Any,
        generator: torch.Generator | None = None,
        id_aware: bool = True,
    ) -> BatchContext:
        """Build the context of a typed batch of :mod:`xfm.train.data` (already on device)."""
        if source == "text":
            return cls(
                model,
                source,
                text_ids=batch.mlm_input_ids,
                text_mask=batch.attention_mask,
                masked_ids=batch.mlm_input_ids,
                mlm_labels=batch.mlm_labels,
            )
        if source == "image":
            return cls(model, source, image=batch.image, image_mask=batch.image_mask)
        common: dict[str, Any] = {
            "image": batch.image,
            "image_mask": batch.image_mask,
            "text_ids": batch.text_ids,
            "text_mask": batch.text_mask,
            "masked_ids": batch.masked_ids,
            "masked_pos": batch.masked_pos,
            "masked_labels": batch.masked_labels,
            "generator": generator,
        }
        if source == "image_text":
            ids = batch.image_index if id_aware else None
            return cls(model, source, ids=ids, **common)
        if source == "region":
            return cls(model, source, region_mask=batch.region_patch_mask, box=batch.box, **common)
        raise ValueError(f"unknown source {source!r}; expected text, image_text, region or image")

    # ----------------------------------------------------------------------- helpers
    def _need(self, name: str) -> Any:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this {self.source!r} batch has no {name!r}, which is needed here")
        return value

    def _cached(self, key: str, fn: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def text_detached(self) -> bool:
        """True when the fusion encoder consumes detached language states (stop gradient)."""
        return bool(self.model.config.stop_gradient)

    # ----------------------------------------------------------------------- vision
    def has_vision(self) -> bool:
        """Whether the unmasked vision output was already computed (with gradient)."""
        return "vision" in self._cache

    def vision(self) -> torch.Tensor:
        """Unmasked vision states ``[Bi, 1+N, Dv]`` (with gradient)."""
        return self._cached("vision", lambda: self.model.encode_image(self._need("image")))

    def group_index(self) -> torch.Tensor:
        """``[B]`` image row of each text."""
        if self.group is not None:
            return self.group.long()
        n = self._need("text_ids").shape[0]
        return torch.arange(n, device=self._need("image").device)

    def pair_vision(self) -> torch.Tensor:
        """Image states of each pair ``[B, 1+N, Dv]``: the image, or its region (region data).

        For region data position 0 is the mean of the patches inside the region (official
        ``region_vision_embeds``).
        """

        def compute() -> torch.Tensor:
            vision = self.vision()
            if self.region_mask is None:
                if self.group is None:
                    return vision
                return vision[self.group_index()]
            return self.model.region_vision_states(vision, self.group_index(), self.region_mask)

        return self._cached("pair_vision", compute)

    def pair_vision_mask(self) -> torch.Tensor | None:
        """Cross-attention mask ``[B, 1+N]`` of :meth:`pair_vision` (None: all visible)."""
        return self.region_mask

    def pair_kv(self) -> ImageKV:
        """Per-layer fusion cross-attention K/V of :meth:`pair_vision` (computed once)."""
        return self._cached("pair_kv", lambda: self.model.fusion_image_kv(self.pair_vision()))

    def full_kv(self) -> ImageKV:
        """Per-layer K/V of the full images ``vision()[group]`` (bbox; region data)."""

        def compute() -> ImageKV:
            if self.region_mask is None and self.group is None:
                return self.pair_kv()
            kv = self.model.fusion_image_kv(self.vision())
            idx = self.group_index()
            if self.group is None:
                return kv
            return [(k[idx], v[idx]) for k, v in kv]

        return self._cached("full_kv", compute)

    def masked_vision(self) -> torch.Tensor:
        """Vision states of the MIM-masked images ``[Bi, 1+N, Dv]``."""
        return self._cached(
            "masked_vision",
            lambda: self.model.encode_masked_image(self._need("image"), self._need("image_mask")),
        )

    def mim_target(self) -> torch.Tensor:
        """MIM target ``[Bi, 1+N, Dv]`` without gradient (see :meth:`XFM.mim_target`).

        Reuses the unmasked vision output when another objective computed it; otherwise
        runs the encoder under ``no_grad`` (image-only batches).
        """

        def compute() -> torch.Tensor:
            image = self._need("image")
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
            lambda: self.model.encode_text(self._need("text_ids"), self._need("text_mask")),
        )

    def masked_text(self) -> torch.Tensor:
        """States of the masked caption ``[B, T, Dt]``.

        Under stop gradient only the fusion encoder consumes them (detached), so they are
        computed without building a graph.
        """

        def compute() -> torch.Tensor:
            ids, mask = self._need("masked_ids"), self._need("text_mask")
            if self.text_detached:
                with torch.no_grad():
                    return self.model.encode_text(ids, mask)
            return self.model.encode_text(ids, mask)

        return self._cached("masked_text", compute)

    # -------------------------------------------------------------------------- ITC
    def itc_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``[B, E]`` image (pair) and text features."""
        return self._cached("itc", lambda: self.model.itc_features(self.pair_vision(), self.text()))

"""Image-text matching (ITM) with in-batch hard negatives sampled from the ITC softmax."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from xfm.train.nonfinite import NonFiniteLossError, first_non_finite
from xfm.train.objectives.base import Objective, Stage

if TYPE_CHECKING:
    from xfm.train.objectives.context import BatchContext

__all__ = ["ITM", "hard_negative_weights", "sample_hard_negatives"]


def hard_negative_weights(
    sim: torch.Tensor, ids: torch.Tensor | None = None, uniform_mix: float = 0.0
) -> torch.Tensor:
    """Sampling weights ``[B, B]``: ``softmax(sim, 1) + 1e-5`` with the positives zeroed.

    The positives are the diagonal, or every pair with equal ``ids`` ``[B]``. A row with no
    admissible negative left (all pairs share its id) falls back to uniform weights over the
    other columns.

    ``uniform_mix`` (0 = the official recipe) mixes each row's distribution with the uniform
    one over its admissible negatives: ``(1 - m) * w / sum(w) + m * u / sum(u)``. A small model
    early in training cannot yet tell the hardest negatives from positives, so ITM with only
    them can stay at its prior for hundreds of steps; a uniform share gives it easier negatives
    to learn from first.
    """
    if not 0.0 <= uniform_mix <= 1.0:
        raise ValueError(f"uniform_mix must be in [0, 1]; got {uniform_mix}")
    weights = torch.softmax(sim.float(), dim=1) + 1e-5
    b = sim.shape[0]
    if ids is None:
        positive = torch.eye(b, dtype=torch.bool, device=sim.device)
    else:
        ids = ids.view(-1)
        positive = ids[:, None] == ids[None, :]
    weights = weights.masked_fill(positive, 0.0)
    empty = weights.sum(dim=1) == 0
    if b > 1 and bool(empty.any()):
        uniform = (~torch.eye(b, dtype=torch.bool, device=sim.device)).float()
        weights = torch.where(empty[:, None], uniform, weights)
    if uniform_mix > 0:
        admissible = (weights > 0).float()
        weights = (1 - uniform_mix) * weights / weights.sum(1, keepdim=True)
        weights = weights + uniform_mix * admissible / admissible.sum(1, keepdim=True)
    return weights


@torch.no_grad()
def sample_hard_negatives(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    temp: torch.Tensor,
    ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    uniform_mix: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hard negative image per text and one hard negative text per image.

    Draws ``neg_image_idx[b] ~ w_t2i[b]`` and ``neg_text_idx[b] ~ w_i2t[b]`` with
    :func:`hard_negative_weights` of the local ITC similarities (one vectorised
    ``torch.multinomial`` each; deterministic given ``generator``).

    Raises:
        NonFiniteLossError: a similarity is NaN or infinite (checked before sampling).

    Returns:
        ``(neg_image_idx, neg_text_idx)``, each ``[B]`` int64.
    """
    sim_i2t = image_feat.float() @ text_feat.float().t() / temp.float()
    bad = first_non_finite(sim_i2t)
    if bad is not None:  # torch.multinomial would fail with "probability tensor contains ..."
        raise NonFiniteLossError("itm (ITC similarities it samples from)", bad, what="value")
    w_t2i = hard_negative_weights(sim_i2t.t(), ids, uniform_mix)
    w_i2t = hard_negative_weights(sim_i2t, ids, uniform_mix)
    if generator is not None and generator.device != w_t2i.device:
        w_t2i, w_i2t = w_t2i.to(generator.device), w_i2t.to(generator.device)
    neg_image = torch.multinomial(w_t2i, 1, generator=generator).view(-1)
    neg_text = torch.multinomial(w_i2t, 1, generator=generator).view(-1)
    return neg_image.to(image_feat.device), neg_text.to(image_feat.device)


class ITM(Objective):
    """ITM: B positives + B (text, hard negative image) + B (hard negative text, image).

    The fusion encoder runs three batched passes (positives, negative images, negative texts)
    over the per-image cross-attention keys/values computed once. Returns ``{"itm": loss}``.

    Args:
        id_aware: never draw a negative with the same sample id as the positive.
        uniform_mix: share of the uniform distribution mixed into the hard-negative one
            (:func:`hard_negative_weights`; 0 = the official recipe).
    """

    name: ClassVar[str] = "itm"
    sources: ClassVar[tuple[str, ...]] = ("image_text", "region")
    losses: ClassVar[tuple[str, ...]] = ("itm",)
    stage: ClassVar[Stage] = Stage.MAIN

    def __init__(self, id_aware: bool = True, uniform_mix: float = 0.0) -> None:
        if not 0.0 <= uniform_mix <= 1.0:
            raise ValueError(f"itm uniform_mix must be in [0, 1]; got {uniform_mix}")
        self.id_aware = id_aware
        self.uniform_mix = float(uniform_mix)

    def negatives(self, ctx: BatchContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed negatives of the context, or sampled ones (``[B]`` row indices each)."""
        if ctx.negatives is not None:
            return ctx.negatives[0].long(), ctx.negatives[1].long()
        image_feat, text_feat = ctx.itc_features()
        ids = ctx.sample_ids if self.id_aware else None
        return sample_hard_negatives(
            image_feat, text_feat, ctx.temp, ids, ctx.generator, self.uniform_mix
        )

    def __call__(self, ctx: BatchContext) -> dict[str, torch.Tensor]:
        b = ctx.text().shape[0]
        if b < 2:
            raise ValueError(f"ITM needs at least 2 pairs per batch to draw negatives; got {b}")
        neg_image, neg_text = self.negatives(ctx)
        logits = ctx.itm_logits(neg_image, neg_text)
        labels = torch.zeros(3 * b, dtype=torch.long, device=logits.device)
        labels[:b] = 1
        return {"itm": F.cross_entropy(logits.float(), labels)}

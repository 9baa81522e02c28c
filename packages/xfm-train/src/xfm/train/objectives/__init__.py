"""Pretraining objectives (entry-point group ``xfm.objective``).

Each objective is a small parameter-free object ``objective(ctx) -> {name: loss}`` that
reads the typed batch and its shared, lazily computed encoder outputs from a
:class:`BatchContext` (the only caller of the model). It declares as class attributes the
sources it applies to, the loss names it returns (``losses``) and its :class:`Stage`:

============== ============================ ============================================ ======
name           sources                      losses                                       stage
============== ============================ ============================================ ======
``itc``        image_text, region           ``itc`` (all-gathered, id-aware)             MAIN
``itm``        image_text, region           ``itm`` (hard negatives from the ITC softmax) MAIN
``fusion_mlm`` image_text, region           ``fusion_mlm``                               MAIN
``text_mlm``   text                         ``text_mlm``                                 MAIN
``mim``        image_text, image            ``mim`` (vision-language guided)             REUSE
``bbox``       region                       ``bbox`` (L1), ``giou``                      MAIN
============== ============================ ============================================ ======

On region data ``itc``/``itm``/``fusion_mlm`` are the official region variants: the image is
the region's states (position 0 = mean of the patches in the box) with the region as the
cross-attention mask.
"""

from xfm.train.objectives.base import (
    Objective,
    Stage,
    gather_masked,
    masked_cross_entropy,
    mlm_loss,
)
from xfm.train.objectives.bbox import BBox, bbox_losses
from xfm.train.objectives.context import BatchContext
from xfm.train.objectives.itc import ITC, itc_loss
from xfm.train.objectives.itm import ITM, hard_negative_weights, sample_hard_negatives
from xfm.train.objectives.mim import MIM, mim_loss
from xfm.train.objectives.mlm import FusionMLM, TextMLM
from xfm.train.objectives.official import GOLDEN_LOSS_KEYS, golden_batches, golden_losses

__all__ = [
    "GOLDEN_LOSS_KEYS",
    "ITC",
    "ITM",
    "MIM",
    "BBox",
    "BatchContext",
    "FusionMLM",
    "Objective",
    "Stage",
    "TextMLM",
    "bbox_losses",
    "gather_masked",
    "golden_batches",
    "golden_losses",
    "hard_negative_weights",
    "itc_loss",
    "masked_cross_entropy",
    "mim_loss",
    "mlm_loss",
    "sample_hard_negatives",
]

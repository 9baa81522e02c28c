"""The dimensions of the "other-dimension" golden sets (``packages/xfm-tasks/tests/data/golden_other``).

Chosen to differ from ``../shared/golden*`` everywhere a re-implementation could mix sizes up:
vision width 36 != text width 24 in every set (so the official ``fusion_proj`` exists and the
cross-attention key/value project 36 -> 24), vision 4 heads of 9 vs text 2 heads of 12, a 5x5
patch grid (image 40, patch 8), vision MLP ratio 2, text FFN 56 (not 4x width), vocabulary 200,
embed_dim 20, fusion and decoder depths different from the text depth. Small widths keep every
set well under 1 MB (the ImageNet head alone is a 5-Linear MLP on 2 x vision width).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dims:
    """Model dimensions shared by every set (fusion / decoder depths are per set)."""

    image_res: int = 40
    patch: int = 8
    vision_width: int = 36
    vision_layers: int = 3
    vision_heads: int = 4
    mlp_ratio: int = 2
    vocab: int = 200
    text_width: int = 24
    text_layers: int = 3
    text_heads: int = 2
    text_ffn: int = 56
    max_positions: int = 40
    embed_dim: int = 20

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_res // self.patch

    @property
    def num_patches(self) -> int:
        """Patches per image (N)."""
        return self.grid * self.grid

    def vision_json(self) -> dict:
        """The vision json the (patched) official ``build_vision_encoder`` reads."""
        return {
            "vision_width": self.vision_width,
            "patch_size": self.patch,
            "depth": self.vision_layers,
            "num_heads": self.vision_heads,
            "mlp_ratio": self.mlp_ratio,
        }


DIMS = Dims()

#: Base seeds: the model is built after ``manual_seed(seed)``, re-randomised with ``seed + 1``,
#: inputs drawn with ``seed + 2``.
PRETRAIN_SEED = 2468
TASK_SEED = 8642

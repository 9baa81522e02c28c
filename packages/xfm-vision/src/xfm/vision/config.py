"""Configuration of the vision towers (one dataclass; each tower sets its own defaults)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = ["OUTPUT_MODES", "QKV_BIAS_MODES", "REL_POS_MODES", "VisionTowerConfig"]

OUTPUT_MODES = ("xfm", "cls")
REL_POS_MODES = ("per_block", "shared", "none")
QKV_BIAS_MODES = ("qkv", "qv", "none")

C = TypeVar("C", bound="VisionTowerConfig")


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a pair (height, width) of ints; got {value!r}")


@dataclass
class VisionTowerConfig:
    """Every dimension and flag of a ViT-style vision tower.

    Attributes:
        image_size: input side (or ``(height, width)``) the tower is built for; another size
            needs :meth:`~xfm.vision.tower.VisionTransformer.set_image_size` first.
        patch_size: side of the square patches.
        in_chans: image channels.
        width: token width ``D``.
        layers: number of blocks.
        heads: attention heads (``width`` must divide by it).
        mlp_ratio: MLP hidden width / ``width``.
        layer_scale_init: LayerScale init (``gamma_1``/``gamma_2``); ``None`` = no layer scale.
        drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks).
        dropout: dropout after the attention projection and in the MLP.
        attn_dropout: dropout on the attention probabilities.
        layer_norm_eps: LayerNorm epsilon.
        qkv_bias: ``"qv"`` (BEiT: q and v biases, no k bias), ``"qkv"`` (ViT) or ``"none"``.
        rel_pos: relative position bias ``"per_block"`` (a table in every block, BEiT-v2 /
            X-FM), ``"shared"`` (one table for all blocks) or ``"none"``.
        abs_pos: learned absolute position embedding (ViT).
        use_fc_norm: BEiT mean-pooling layout: ``norm`` is Identity and ``fc_norm`` normalises
            the patch tokens in ``xfm`` output; otherwise ``norm`` is a LayerNorm on all tokens.
        output: ``"xfm"`` (CLS output dropped, ``fc_norm``-ed patches, position 0 = their mean)
            or ``"cls"`` (all tokens after ``norm``, position 0 = CLS; timm's
            ``forward_features``).
        mask_token: learn a mask token that replaces masked patches (``forward(.., mask=)``).
        gradient_checkpointing: recompute every block in backward (training only).
        backend: attention backend (``eager | sdpa | xformers | auto``), ``None`` = default.
    """

    image_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    layer_scale_init: float | None = 0.1
    drop_path_rate: float = 0.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    qkv_bias: Literal["qkv", "qv", "none"] = "qv"
    rel_pos: Literal["per_block", "shared", "none"] = "per_block"
    abs_pos: bool = False
    use_fc_norm: bool = True
    output: Literal["xfm", "cls"] = "xfm"
    mask_token: bool = True
    gradient_checkpointing: bool = False
    backend: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the input images."""
        return _pair(self.image_size, "image_size")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(height / patch, width / patch)``."""
        h, w = self.image_hw
        return (h // self.patch_size, w // self.patch_size)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field, the expected and the received value."""
        name = type(self).__name__
        h, w = _pair(self.image_size, f"{name}.image_size")
        if self.patch_size < 1:
            raise ValueError(f"{name}.patch_size must be >= 1; got {self.patch_size}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"{name}.image_size {(h, w)} must be divisible by patch_size {self.patch_size}"
            )
        for field in ("in_chans", "width", "layers", "heads"):
            if getattr(self, field) < 1:
                raise ValueError(f"{name}.{field} must be >= 1; got {getattr(self, field)}")
        if self.width % self.heads:
            raise ValueError(f"{name}.width {self.width} must be divisible by heads {self.heads}")
        if self.qkv_bias not in QKV_BIAS_MODES:
            raise ValueError(
                f"{name}.qkv_bias must be one of {QKV_BIAS_MODES}; got {self.qkv_bias!r}"
            )
        if self.rel_pos not in REL_POS_MODES:
            raise ValueError(f"{name}.rel_pos must be one of {REL_POS_MODES}; got {self.rel_pos!r}")
        if self.output not in OUTPUT_MODES:
            raise ValueError(f"{name}.output must be one of {OUTPUT_MODES}; got {self.output!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"{name}.drop_path_rate must be in [0, 1); got {self.drop_path_rate}")

    @classmethod
    def field_names(cls) -> list[str]:
        """Names accepted as overrides."""
        return [f.name for f in dataclasses.fields(cls)]

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied; unknown names raise ``TypeError`` listing valid ones."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no field(s) {unknown}; valid fields: "
                f"{self.field_names()}"
            )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (for YAML / checkpoints)."""
        return dataclasses.asdict(self)

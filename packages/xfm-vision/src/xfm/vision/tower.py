"""The ViT-style vision tower shared by :class:`~xfm.vision.beit.BEiTv2` and :class:`~xfm.vision.vit.ViT`.

``patch_embed -> [mask token] -> [CLS] + patches -> [+ pos_embed] -> blocks -> output``. Blocks
are :class:`xfm.core.layers.PreLNBlock` (attention through :func:`xfm.core.attention.attention`),
each optionally owning a relative position bias table (``blocks.N.rel_pos.table``); a single
shared table is ``rel_pos.table``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.init import trunc_normal_
from torch.utils.checkpoint import checkpoint

from xfm.core.layers import Dropout, PreLNBlock
from xfm.vision.config import VisionTowerConfig, _pair
from xfm.vision.patch_embed import PatchEmbed, resample_abs_pos_embed
from xfm.vision.rel_pos import RelativePositionBias

__all__ = ["VisionBlock", "VisionTransformer"]


class VisionBlock(PreLNBlock):
    """A :class:`~xfm.core.layers.PreLNBlock` that may own a relative position bias table.

    Submodules as ``PreLNBlock`` plus ``rel_pos`` (:class:`RelativePositionBias` or ``None``);
    ``attn`` is the block's :class:`~xfm.core.layers.FusedQKVAttention`, so the biased attention
    runs through :func:`xfm.core.attention.attention` like every other attention call.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: str = "qkv",
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
        backend: str | None = None,
        rel_pos_grid: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            attn_dropout=attn_dropout,
            dropout=dropout,
            backend=backend,
            **kwargs,
        )
        self.rel_pos: RelativePositionBias | None = None
        if rel_pos_grid is not None:
            self.rel_pos = RelativePositionBias(rel_pos_grid, num_heads)

    def forward(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, N+1, D]`` -> ``[B, N+1, D]``.

        ``attn_bias`` (e.g. a shared relative position bias ``[H, N+1, N+1]``) is added to this
        block's own relative position bias.
        """
        if self.rel_pos is not None:
            own = self.rel_pos()
            attn_bias = own if attn_bias is None else own + attn_bias
        return super().forward(x, attn_bias=attn_bias, key_mask=key_mask)


class VisionTransformer(nn.Module):
    """A ViT/BEiT vision tower configured by a :class:`VisionTowerConfig`.

    Args:
        config: the configuration (a dataclass, or a mapping of its fields); ``None`` uses the
            class's default config.
        **overrides: config fields to change, e.g. ``image_size=384, layers=6``.

    Attributes:
        width: token width ``D``.
        grid: patch grid ``(h, w)``.
        num_patches: ``N = h * w``.
    """

    config_class: ClassVar[type[VisionTowerConfig]] = VisionTowerConfig
    #: Divide ``attn.proj`` and ``mlp.fc2`` weights of block ``i`` by ``sqrt(2 (i + 1))`` at init.
    rescale_residual_init: ClassVar[bool] = False

    def __init__(
        self, config: VisionTowerConfig | Mapping[str, Any] | None = None, **overrides: Any
    ) -> None:
        super().__init__()
        self.config = self._make_config(config, overrides)
        c = self.config
        self.width = c.width
        self.patch_size = c.patch_size
        self.patch_embed = PatchEmbed(
            img_size=c.image_hw,
            patch_size=c.patch_size,
            in_chans=c.in_chans,
            embed_dim=c.width,
        )
        grid = c.grid
        num_patches = grid[0] * grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.width)) if c.mask_token else None
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, num_patches + 1, c.width)) if c.abs_pos else None
        )
        self.pos_drop = Dropout(c.dropout)
        self.rel_pos = RelativePositionBias(grid, c.heads) if c.rel_pos == "shared" else None
        rates = torch.linspace(0, c.drop_path_rate, c.layers, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            VisionBlock(
                c.width,
                c.heads,
                mlp_ratio=c.mlp_ratio,
                qkv_bias=c.qkv_bias,
                layer_scale_init=c.layer_scale_init,
                drop_path=rates[i],
                eps=c.layer_norm_eps,
                attn_dropout=c.attn_dropout,
                dropout=c.dropout,
                backend=c.backend,
                rel_pos_grid=grid if c.rel_pos == "per_block" else None,
            )
            for i in range(c.layers)
        )
        self.norm = nn.Identity() if c.use_fc_norm else nn.LayerNorm(c.width, eps=c.layer_norm_eps)
        self.fc_norm = (
            nn.LayerNorm(c.width, eps=c.layer_norm_eps) if c.use_fc_norm else nn.Identity()
        )
        self.gradient_checkpointing = c.gradient_checkpointing
        self.init_weights()

    # ------------------------------------------------------------------ construction

    @classmethod
    def _make_config(
        cls, config: VisionTowerConfig | Mapping[str, Any] | None, overrides: dict[str, Any]
    ) -> VisionTowerConfig:
        if config is None:
            return cls.config_class().replace(**overrides)
        if isinstance(config, Mapping):
            return cls.config_class().replace(**{**dict(config), **overrides})
        if not isinstance(config, VisionTowerConfig):
            raise TypeError(
                f"{cls.__name__} expects a {cls.config_class.__name__}, a mapping of its fields "
                f"or None; got {type(config).__name__}"
            )
        return config.replace(**overrides)

    @torch.no_grad()
    def init_weights(self) -> None:
        """BEiT/timm init: truncated normal (std 0.02) for Linear weights and the tokens."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.cls_token, self.mask_token, self.pos_embed):
            if p is not None:
                trunc_normal_(p, std=0.02)
        if self.rescale_residual_init:
            for i, blk in enumerate(self.blocks):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))

    # ------------------------------------------------------------------ geometry

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of the current image size."""
        return self.config.grid

    @property
    def num_patches(self) -> int:
        """Number of patch tokens ``N``."""
        h, w = self.grid
        return h * w

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the images the tower runs on."""
        return self.config.image_hw

    def set_image_size(self, image_size: int | tuple[int, int]) -> None:
        """Run at another image size: resizes the relative position tables (BEiT method) and
        the absolute position embedding (bicubic), in place. Fine-tuning at 384/480 from a 224
        checkpoint: load the checkpoint, then call this (or load into a tower built at the new
        size: the importers resize the tables the same way)."""
        hw = _pair(image_size, "image_size")
        new = self.config.replace(image_size=hw)  # validates divisibility
        old_grid, grid = self.grid, new.grid
        self.config = new
        self.patch_embed.set_input_size(hw)
        if grid == old_grid:
            return
        if self.rel_pos is not None:
            self.rel_pos.set_grid(grid)
        for blk in self.blocks:
            if blk.rel_pos is not None:
                blk.rel_pos.set_grid(grid)
        if self.pos_embed is not None:
            with torch.no_grad():
                resized = resample_abs_pos_embed(
                    self.pos_embed.detach(), new_size=list(grid), old_size=list(old_grid)
                )
            self.pos_embed = nn.Parameter(resized, requires_grad=self.pos_embed.requires_grad)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (saves activation memory when training)."""
        self.gradient_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Parameter names usually excluded from weight decay (tokens, position tables)."""
        names = {"cls_token", "mask_token", "pos_embed"}
        names |= {n for n, _ in self.named_parameters() if n.endswith("rel_pos.table")}
        return {n for n in names if n in dict(self.named_parameters())}

    # ------------------------------------------------------------------ forward

    def _check_inputs(self, images: torch.Tensor, mask: torch.Tensor | None) -> None:
        name = type(self).__name__
        c = self.config
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = (
                tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            )
            raise ValueError(f"{name} expects images [B, {c.in_chans}, H, W]; got {shape}")
        b, ch, h, w = images.shape
        if ch != c.in_chans:
            raise ValueError(
                f"{name} expects images with {c.in_chans} channels [B, {c.in_chans}, H, W]; "
                f"got {ch} channels (shape {tuple(images.shape)})"
            )
        if h % c.patch_size or w % c.patch_size:
            raise ValueError(
                f"{name}: image size {(h, w)} is not divisible by the patch size {c.patch_size}"
            )
        if (h, w) != c.image_hw:
            raise ValueError(
                f"{name} is set up for images of {c.image_hw}, got {(h, w)}: call "
                f"set_image_size({(h, w)}) first (it resizes the position tables)"
            )
        if mask is not None:
            if self.mask_token is None:
                raise ValueError(f"{name} was built with mask_token=False; it cannot take a mask")
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"{name}: mask must be a bool tensor [B, N]; got {got}")
            if tuple(mask.shape) != (b, self.num_patches):
                raise ValueError(
                    f"{name}: mask must be [B, N] = [{b}, {self.num_patches}] (grid {self.grid}); "
                    f"got {tuple(mask.shape)}"
                )

    def embed(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding with masked patches replaced, CLS prepended, position added.

        Args:
            images: ``[B, C, H, W]``.
            mask: ``[B, N]`` bool, ``True`` = replace the patch by ``mask_token``.

        Returns:
            ``[B, 1+N, D]``.
        """
        self._check_inputs(images, mask)
        x = self.patch_embed(images)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks on ``[B, 1+N, D]`` tokens (gradient checkpointing when enabled)."""
        shared = self.rel_pos() if self.rel_pos is not None else None
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            if recompute:
                x = checkpoint(blk, x, shared, use_reentrant=False)
            else:
                x = blk(x, shared)
        return x

    def forward_output(self, x: torch.Tensor) -> torch.Tensor:
        """Final norms and the output layout of ``config.output`` on ``[B, 1+N, D]``."""
        if self.config.output == "cls":
            return self.norm(x)
        patches = self.fc_norm(self.norm(x[:, 1:]))
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode images.

        Args:
            images: ``[B, C, H, W]`` normalised images at ``image_size``.
            mask: optional ``[B, N]`` bool (row-major patches), ``True`` = patch replaced by the
                mask token (masked image modelling).

        Returns:
            ``[B, 1+N, D]``. ``output="xfm"``: position 0 is the mean of the ``fc_norm``-ed patch
            tokens that follow it (the CLS output is dropped); ``output="cls"``: position 0 is
            the CLS token, all tokens after ``norm``.
        """
        return self.forward_output(self.forward_blocks(self.embed(images, mask)))

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"image_size={c.image_hw}, patch_size={c.patch_size}, width={c.width}, "
            f"layers={c.layers}, heads={c.heads}, rel_pos={c.rel_pos!r}, output={c.output!r}"
        )

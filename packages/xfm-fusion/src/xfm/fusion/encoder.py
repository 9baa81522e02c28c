"""The X-FM fusion encoder: text self-attention, cross-attention to the image, FFN, per layer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from xfm.core.layers import PostLNLayer, take_positions
from xfm.fusion.packed import pair_vectors, text_self_attention

ImageKV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class FusionEncoderConfig:
    """Fusion encoder dimensions (defaults: X-FM base)."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    vision_width: int = 768  # width of the image states that cross-attention reads
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    attn_dropout: float = 0.1
    act: str = "gelu"
    gradient_checkpointing: bool = False
    backend: str | None = None


class CrossAttentionFusionEncoder(nn.Module):
    """Post-LN transformer whose every layer cross-attends from text queries to image states.

    Its input is the language encoder's output (not token ids). Submodules: ``layers``
    (:class:`xfm.core.layers.PostLNLayer` with cross-attention of key/value width
    ``vision_width``).
    """

    def __init__(self, config: FusionEncoderConfig | None = None, **overrides) -> None:
        super().__init__()
        config = dataclasses.replace(config or FusionEncoderConfig(), **overrides)
        self.config = config
        self.width = config.width
        self.vision_width = config.vision_width
        self.layers = nn.ModuleList(
            PostLNLayer(
                config.width,
                config.heads,
                config.ffn_dim,
                cross_attention=True,
                cross_dim=config.vision_width,
                eps=config.layer_norm_eps,
                dropout=config.dropout,
                attn_dropout=config.attn_dropout,
                act=config.act,
                backend=config.backend,
            )
            for _ in range(config.layers)
        )

    def image_kv(self, image_states: torch.Tensor) -> ImageKV:
        """Per-layer cross-attention keys/values ``[B, H, 1+N, Dh]`` of ``image_states``.

        Compute once per image and pass to :meth:`forward` for every text paired with it
        (positives, hard negatives, MLM, re-ranking candidates).
        """
        self._check_image(image_states)
        return [layer.cross_attn.project_kv(image_states) for layer in self.layers]

    def pair_vectors(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        image_kv: ImageKV,
        text_done: bool = False,
    ) -> torch.Tensor:
        """Position-0 outputs ``[n, Dt]`` of ``n`` texts ``[n, T, Dt]`` with ONE image's
        :meth:`image_kv` (``[1, H, 1+N, Dh]`` per layer), computed without padding (eval only;
        see :func:`xfm.fusion.packed.pair_vectors`). Equal to ``forward(...)[:, 0]`` to float
        rounding. ``text_done``: the states are :meth:`text_self_attention`'s output."""
        return pair_vectors(self, text_states, text_mask, image_kv, text_done)

    def text_self_attention(
        self, text_states: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """The first layer's self-attention sublayer (text only; eval): ``[n, T, Dt]``, the
        input of :meth:`pair_vectors` with ``text_done=True`` for every image of the text."""
        return text_self_attention(self, text_states, text_mask)

    def _check_image(self, image_states: torch.Tensor) -> None:
        if image_states.dim() != 3 or image_states.shape[-1] != self.vision_width:
            raise ValueError(
                f"image states must be [B, 1+N, {self.vision_width}]; got {tuple(image_states.shape)}"
            )

    def forward(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        image_states: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        image_kv: ImageKV | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse text with an image.

        Args:
            text_states: ``[B, T, Dt]`` language-encoder output.
            text_mask: ``[B, T]`` 1/True for real tokens (or None).
            image_states: ``[B, 1+N, Dv]`` vision-encoder output (or give ``image_kv``).
            image_mask: ``[B, 1+N]`` 1/True for image positions that may be attended.
            image_kv: output of :meth:`image_kv` for the images of this batch (row-aligned).
            positions: ``[B, M]`` positions whose outputs are wanted (``0``: the pair vector;
                masked tokens for MLM); the last layer then computes only those rows.

        Returns:
            ``[B, T, Dt]``; ``[:, 0]`` is the image-text pair vector. ``[B, M, Dt]`` (the
            outputs at ``positions``) with ``positions``.
        """
        if text_states.dim() != 3 or text_states.shape[-1] != self.width:
            raise ValueError(
                f"text states must be [B, T, {self.width}]; got {tuple(text_states.shape)}"
            )
        if image_kv is None:
            if image_states is None:
                raise ValueError("pass image_states [B, 1+N, Dv] or precomputed image_kv")
            self._check_image(image_states)
        key_mask = None if text_mask is None else text_mask.bool()
        ctx_mask = None if image_mask is None else image_mask.bool()
        x = text_states
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            kv = None if image_kv is None else image_kv[i]
            ctx = None if kv is not None else image_states
            rows = positions if i == last else None
            if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(
                    layer, x, key_mask, ctx, ctx_mask, False, kv, rows, use_reentrant=False
                )
            else:
                x = layer(
                    x,
                    key_mask=key_mask,
                    context=ctx,
                    context_mask=ctx_mask,
                    context_kv=kv,
                    positions=rows,
                )
        if positions is not None and not len(self.layers):
            x = take_positions(x, positions)
        return x

"""Pair vectors of many texts with one image, without padding: the re-ranking fast path.

Retrieval re-ranks each query's top-``k`` candidates with the ITM head, which reads only the
fusion output at position 0 (the pair vector). When the candidates of one image run together,
:func:`pair_vectors` computes exactly what :class:`~xfm.fusion.encoder.CrossAttentionFusionEncoder`
computes at position 0 for each text, with less work:

* **no padding in the token-wise work.** The texts' real tokens are packed into one
  ``[sum(lengths), D]`` matrix, so every projection, LayerNorm and FFN runs on real tokens only
  (a batch padded to its longest text spends ``max/mean`` times the FLOPs). Only the text
  self-attention is laid out padded (``[n, H, Lmax, Dh]``, keys masked), because its scores
  are per text;
* **one cross-attention for the whole batch.** Every packed token attends to the same image
  keys/values, so cross-attention is one unmasked ``[1, H, sum(lengths), Dh]`` call (SDPA's
  fused kernel) on the image's K/V computed once;
* **the text's own work once per text.** The first layer's self-attention depends on the text
  alone: :func:`text_self_attention` computes it once and every image the text is re-ranked
  with starts from it (``text_done=True``);
* **position 0 only in the last layer.** The last layer's self-attention still needs every
  token's keys/values, but its queries, output projection, cross-attention and FFN run on the
  ``n`` pair vectors only.

Same function as the padded forward (padding keys are masked there; padded query rows never
reach position 0), so the scores agree to float rounding (tested against the padded forward).
Eval only: dropout is not applied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from xfm.core.attention import attention

if TYPE_CHECKING:
    from xfm.core.layers import PostLNLayer
    from xfm.fusion.encoder import CrossAttentionFusionEncoder, ImageKV

__all__ = ["pair_vectors", "text_self_attention"]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[..., T, D]`` rows -> ``[B, H, T, Dh]`` (``x`` ``[B, T, D]``)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _self_attention(
    layer: PostLNLayer,
    x: torch.Tensor,
    flat: torch.Tensor,
    valid: torch.Tensor,
    cls_rows: torch.Tensor | None,
) -> torch.Tensor:
    """The self-attention sublayer on packed rows ``x`` ``[P, D]``: ``[P, D]``, or ``[n, D]``
    (the rows ``cls_rows`` only) in the last layer.

    ``flat`` ``[P]``: each packed row's index in the padded ``[n * Lmax]`` layout; ``valid``
    ``[n, Lmax]`` the text mask.
    """
    sa = layer.self_attn
    n, lmax = valid.shape
    d, heads = x.shape[-1], sa.num_heads

    def padded(rows: torch.Tensor) -> torch.Tensor:
        out = rows.new_zeros(n * lmax, rows.shape[-1])
        out[flat] = rows
        return _heads(out.view(n, lmax, -1), heads)

    k, v = padded(sa.key(x)), padded(sa.value(x))
    if cls_rows is None:
        q = padded(sa.query(x))
        h = attention(q, k, v, key_mask=valid, backend=sa.backend)
        h = h.transpose(1, 2).reshape(n * lmax, d)[flat]
        res = x
    else:
        res = x[cls_rows]
        q = _heads(sa.query(res).unsqueeze(1), heads)  # [n, H, 1, Dh]
        h = attention(q, k, v, key_mask=valid, backend=sa.backend).reshape(n, d)
    return layer.self_norm(res + sa.out(h))


def _cross_and_ffn(
    layer: PostLNLayer, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Cross-attention of rows ``x`` ``[R, D]`` to one image's ``kv`` (``[1, H, Tc, Dh]``),
    then the FFN: ``[R, D]``."""
    ca = layer.cross_attn
    d = x.shape[-1]
    q = _heads(ca.query(x).unsqueeze(0), ca.num_heads)  # [1, H, R, Dh]
    h = attention(q, kv[0], kv[1], backend=ca.backend)
    x = layer.cross_norm(x + ca.out(h[0].transpose(0, 1).reshape(-1, d)))
    return layer.ffn_norm(x + layer.ffn(x))


@torch.no_grad()
def text_self_attention(
    encoder: CrossAttentionFusionEncoder, text_states: torch.Tensor, text_mask: torch.Tensor
) -> torch.Tensor:
    """The first fusion layer's self-attention sublayer, which depends on the text alone:
    ``[n, T, Dt]`` -> ``[n, T, Dt]`` (padding rows: arbitrary). Computed once per text, it
    serves every image the text is paired with (:func:`pair_vectors` ``text_done=True``)."""
    if encoder.training:
        raise RuntimeError("text_self_attention is an evaluation path: call encoder.eval() first")
    layer = encoder.layers[0]
    h = layer.self_attn(text_states, key_mask=text_mask.bool())
    return layer.self_norm(text_states + h)


@torch.no_grad()
def pair_vectors(
    encoder: CrossAttentionFusionEncoder,
    text_states: torch.Tensor,
    text_mask: torch.Tensor,
    image_kv: ImageKV,
    text_done: bool = False,
) -> torch.Tensor:
    """Fusion output at position 0 of ``n`` texts, each paired with the same image.

    Args:
        encoder: the fusion encoder (eval mode).
        text_states: ``[n, T, Dt]`` language-encoder states (padding rows are ignored).
        text_mask: ``[n, T]`` 1/True for real tokens; position 0 must be real in every row.
        image_kv: :meth:`~xfm.fusion.encoder.CrossAttentionFusionEncoder.image_kv` of ONE
            image: per layer ``([1, H, 1+N, Dh], [1, H, 1+N, Dh])`` (a batch-size-1 slice).
        text_done: ``text_states`` are :func:`text_self_attention`'s output (the first layer's
            self-attention, shared by all the images of a text), not the language states.

    Returns:
        ``[n, Dt]``: equal, to float rounding, to ``encoder(text_states, text_mask,
        image_kv=...)[:, 0]`` with the image's K/V broadcast to every row.
    """
    if encoder.training:
        raise RuntimeError("pair_vectors is an evaluation path: call encoder.eval() first")
    if text_states.dim() != 3 or text_mask.shape != text_states.shape[:2]:
        raise ValueError(
            f"pair_vectors needs text_states [n, T, D] and text_mask [n, T]; got "
            f"{tuple(text_states.shape)} and {tuple(text_mask.shape)}"
        )
    if len(image_kv) != len(encoder.layers) or any(k.shape[0] != 1 for k, _ in image_kv):
        raise ValueError(
            f"pair_vectors needs the K/V of one image for each of the {len(encoder.layers)} "
            f"layers ([1, H, 1+N, Dh] each)"
        )
    valid = text_mask.bool()
    if not bool(valid[:, 0].all()):
        raise ValueError("pair_vectors: position 0 (the pair vector) must be a real token")
    lmax = int(valid.sum(1).max())
    if lmax < valid.shape[1] and bool(valid[:, lmax:].any()):
        lmax = int(valid.nonzero()[:, 1].max()) + 1  # not a prefix mask: keep every real token
    valid = valid[:, :lmax].contiguous()
    flat = valid.flatten().nonzero().squeeze(1)  # packed row -> padded index
    x = text_states[:, :lmax].reshape(-1, text_states.shape[-1])[flat]
    cls_rows = torch.searchsorted(flat, torch.arange(valid.shape[0], device=flat.device) * lmax)
    if not len(encoder.layers):
        return x[cls_rows]
    last = len(encoder.layers) - 1
    for i, layer in enumerate(encoder.layers):
        rows = cls_rows if i == last else None
        if i == 0 and text_done:
            x = x if rows is None else x[rows]
        else:
            x = _self_attention(layer, x, flat, valid, rows)
        x = _cross_and_ffn(layer, x, image_kv[i])
    return x

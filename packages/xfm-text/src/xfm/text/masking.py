"""Token masking for masked language modelling (pure functions, explicit ``torch.Generator``).

Both X-FM masking schemes are the same procedure with different settings (official
``TextMaskingGenerator``):

1. ``n = min(max_masks, max(1, round(n_real * mask_prob)))`` where ``n_real`` counts the real
   (non-padding) tokens, special tokens included;
2. visit the maskable positions in random order; at each one not yet masked, take a *unit*:
   with probability ``span_prob`` a span of ``L ~ U{span_lengths}`` tokens starting there, else
   the single token; in whole-word mode the unit is widened to whole words; add it (stopping at
   the first unmaskable position), until ``n`` positions are masked;
3. replace each masked token by the mask token (80%), a random id in ``[0, vocab_size)`` (10%),
   or keep it (10%).

Position 0 (CLS / ``<s>``), padding and ``protected_ids`` are never masked.

* :func:`text_mlm_mask`: plain text, whole-word, 15%, at most 20 masks (spans as the official
  configuration: probability 0.2, length 2..3).
* :func:`caption_mask`: captions for fusion MLM, 50%, at most 15 masks, spans with probability
  0.2 and length 2..3, token level.

Differences from the official code (same counts and distribution of replacements, different
random streams): when the last unit overshoots ``n``, token mode cuts that unit to fit (the
official code keeps a random subset of all masked positions), and whole-word mode shrinks a span
that does not fit to the word it starts in, and skips a word that does not fit (so words are
never split), masking a part of one word only if no whole word fits at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
"""Label of positions that are not predicted (ignored by ``cross_entropy``)."""


@dataclass
class MaskedTokens:
    """Result of a masking function.

    Attributes:
        input_ids: ``[B, T]`` ids with the masked positions replaced (mask / random / kept).
        labels: ``[B, T]`` original ids at masked positions, ``-100`` elsewhere.
        masked_pos: ``[B, M]`` masked positions in increasing order, padded with 0 (the
            official ``masked_pos`` input).
        masked_ids: ``[B, M]`` original ids at ``masked_pos``, padded with ``-100`` (the
            official ``masked_ids`` labels).
        mask: ``[B, T]`` bool, True at masked positions.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    masked_pos: torch.Tensor
    masked_ids: torch.Tensor
    mask: torch.Tensor

    @property
    def num_masked(self) -> torch.Tensor:
        """``[B]`` number of masked positions per sample."""
        return self.mask.sum(dim=1)


def num_to_mask(num_real: int, mask_prob: float, max_masks: int) -> int:
    """``min(max_masks, max(1, round(num_real * mask_prob)))`` (Python's round-half-to-even,
    as the official code)."""
    return min(max_masks, max(1, round(num_real * mask_prob)))


def _check_args(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    word_starts: torch.Tensor | None,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float,
    max_masks: int,
    span_prob: float,
    span_lengths: tuple[int, int],
    replace_probs: tuple[float, float, float],
    generator: torch.Generator,
) -> None:
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(
            f"input_ids must be an integer tensor [B, T]; got {input_ids.dtype} "
            f"{tuple(input_ids.shape)}"
        )
    for name, t in (("attention_mask", attention_mask), ("word_starts", word_starts)):
        if t is not None and t.shape != input_ids.shape:
            raise ValueError(
                f"{name} must have the shape of input_ids {tuple(input_ids.shape)}; got "
                f"{tuple(t.shape)}"
            )
    if vocab_size < 1 or not 0 <= mask_token_id < vocab_size:
        raise ValueError(
            f"mask_token_id must be in [0, vocab_size={vocab_size}); got {mask_token_id}"
        )
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1]; got {mask_prob}")
    if max_masks < 1:
        raise ValueError(f"max_masks must be >= 1; got {max_masks}")
    if not 0.0 <= span_prob <= 1.0:
        raise ValueError(f"span_prob must be in [0, 1]; got {span_prob}")
    lo, hi = span_lengths
    if not 1 <= lo <= hi:
        raise ValueError(
            f"span_lengths must be (min, max) with 1 <= min <= max; got {span_lengths}"
        )
    if len(replace_probs) != 3 or min(replace_probs) < 0 or abs(sum(replace_probs) - 1) > 1e-6:
        raise ValueError(
            "replace_probs must be three non-negative probabilities (mask, random, keep) summing "
            f"to 1; got {replace_probs}"
        )
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    if input_ids.numel():
        low, high = (int(v) for v in torch.aminmax(input_ids))
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"input_ids must be in [0, vocab_size={vocab_size}); got values in [{low}, {high}]"
            )


def _select_positions(
    maskable: list[bool],
    word_start: list[bool] | None,
    budget: int,
    order: list[int],
    span_draw: list[float],
    span_len: list[int],
    span_prob: float,
) -> list[int]:
    """Masked positions of one sequence (see the module docstring, step 2)."""
    t = len(maskable)
    candidates = [i for i in range(t) if maskable[i]]
    chosen: set[int] = set()
    fallback: list[int] | None = None

    def unit_at(pos: int, length: int) -> list[int]:
        start, end = pos, pos + length
        if word_start is not None:
            while not word_start[start] and start - 1 >= 0 and maskable[start - 1]:
                start -= 1
            while end < t and maskable[end] and not word_start[end]:
                end += 1
        unit: list[int] = []
        for p in range(start, min(end, t)):
            if not maskable[p]:
                break
            if p not in chosen:
                unit.append(p)
        return unit

    for k in order:
        if len(chosen) >= budget:
            break
        pos = candidates[k]
        if pos in chosen:
            continue
        span = span_draw[k] < span_prob
        unit = unit_at(pos, span_len[k] if span else 1)
        room = budget - len(chosen)
        if len(unit) > room and word_start is not None:
            if span:  # a span of words that does not fit: try the word alone
                unit = unit_at(pos, 1)
            if len(unit) > room:
                if fallback is None:
                    fallback = unit[:room]
                continue
        chosen.update(unit[:room])
    if not chosen and fallback:
        chosen.update(fallback)
    return sorted(chosen)


def span_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float,
    max_masks: int,
    span_prob: float = 0.2,
    span_lengths: tuple[int, int] = (2, 3),
    word_starts: torch.Tensor | None = None,
    protected_ids: Sequence[int] = (),
    replace_probs: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> MaskedTokens:
    """Mask tokens for MLM (the procedure of the module docstring).

    Args:
        input_ids: ``[B, T]`` token ids (a 1-D ``[T]`` sequence is treated as ``B = 1``).
        attention_mask: ``[B, T]``, 1/True for real tokens (default: all real).
        generator: the source of randomness; the same generator state gives the same result.
        mask_token_id: id written at 80% of the masked positions.
        vocab_size: random replacements are drawn uniformly from ``[0, vocab_size)``.
        mask_prob: fraction of the real tokens to mask.
        max_masks: at most this many masks per sequence; also ``M``, the width of
            ``masked_pos`` / ``masked_ids``.
        span_prob: probability that a unit is a span of ``span_lengths`` tokens.
        span_lengths: ``(min, max)`` span length, both included.
        word_starts: ``[B, T]`` bool, True where a token begins a word (e.g.
            :meth:`xfm.text.TextTokenizer.word_starts`): units are widened to whole words.
            ``None``: token level.
        protected_ids: ids never masked (besides position 0 and padding), e.g. SEP.
        replace_probs: probabilities of (mask token, random id, unchanged).

    Returns:
        :class:`MaskedTokens` on the device of ``input_ids``.
    """
    squeeze = input_ids.dim() == 1
    if squeeze:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
        word_starts = None if word_starts is None else word_starts[None]
    _check_args(
        input_ids,
        attention_mask,
        word_starts,
        mask_token_id,
        vocab_size,
        mask_prob,
        max_masks,
        span_prob,
        span_lengths,
        replace_probs,
        generator,
    )
    device = input_ids.device
    ids = input_ids.detach().cpu().long()
    b, t = ids.shape
    real = (
        torch.ones(b, t, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.detach().cpu().bool()
    )
    maskable = real.clone()
    maskable[:, 0] = False
    for pid in protected_ids:
        maskable &= ids.ne(int(pid))
    starts = None if word_starts is None else word_starts.detach().cpu().bool().tolist()

    mask = torch.zeros(b, t, dtype=torch.bool)
    masked_pos = torch.zeros(b, max_masks, dtype=torch.long)
    masked_ids = torch.full((b, max_masks), IGNORE_INDEX, dtype=torch.long)
    lo, hi = span_lengths
    real_counts = real.sum(dim=1).tolist()
    maskable_rows = maskable.tolist()
    for i in range(b):
        n_cand = sum(maskable_rows[i])
        # Draw this row's randomness up front, in a fixed order, so results depend only on
        # the generator state.
        order = torch.randperm(n_cand, generator=generator).tolist()
        span_draw = torch.rand(n_cand, generator=generator).tolist()
        span_len = torch.randint(lo, hi + 1, (n_cand,), generator=generator).tolist()
        if n_cand == 0:
            continue
        budget = num_to_mask(int(real_counts[i]), mask_prob, max_masks)
        positions = _select_positions(
            maskable_rows[i],
            None if starts is None else starts[i],
            budget,
            order,
            span_draw,
            span_len,
            span_prob,
        )
        if positions:
            pos = torch.tensor(positions, dtype=torch.long)
            mask[i, pos] = True
            masked_pos[i, : len(positions)] = pos
            masked_ids[i, : len(positions)] = ids[i, pos]

    draw = torch.rand(b, t, generator=generator)
    random_ids = torch.randint(0, vocab_size, (b, t), generator=generator)
    p_mask, p_random, _ = replace_probs
    to_mask = mask & (draw < p_mask)
    to_random = mask & (draw >= p_mask) & (draw < p_mask + p_random)
    out = ids.clone()
    out[to_mask] = mask_token_id
    out[to_random] = random_ids[to_random]
    labels = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))

    result = MaskedTokens(
        input_ids=out.to(device=device, dtype=input_ids.dtype),
        labels=labels.to(device),
        masked_pos=masked_pos.to(device),
        masked_ids=masked_ids.to(device),
        mask=mask.to(device),
    )
    if squeeze:
        result = MaskedTokens(
            *(
                x[0]
                for x in (
                    result.input_ids,
                    result.labels,
                    result.masked_pos,
                    result.masked_ids,
                    result.mask,
                )
            )
        )
    return result


def text_mlm_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator,
    mask_token_id: int,
    vocab_size: int,
    word_starts: torch.Tensor | None,
    special_ids: Sequence[int] = (),
    mask_prob: float = 0.15,
    max_masks: int = 20,
    span_prob: float = 0.2,
    span_lengths: tuple[int, int] = (2, 3),
    replace_probs: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> MaskedTokens:
    """Whole-word MLM masking of plain text (X-FM text source: 15%, at most 20 masks).

    Inputs are at most 128 tokens in the official recipe (``TextTokenizer(max_tokens=128)``).
    ``special_ids`` (e.g. ``tokenizer.special_ids``) are never masked; ``word_starts=None``
    masks at token level. See :func:`span_mask` for the arguments.
    """
    return span_mask(
        input_ids,
        attention_mask,
        generator=generator,
        mask_token_id=mask_token_id,
        vocab_size=vocab_size,
        mask_prob=mask_prob,
        max_masks=max_masks,
        span_prob=span_prob,
        span_lengths=span_lengths,
        word_starts=word_starts,
        protected_ids=special_ids,
        replace_probs=replace_probs,
    )


def caption_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    generator: torch.Generator,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.5,
    max_masks: int = 15,
    span_prob: float = 0.2,
    span_lengths: tuple[int, int] = (2, 3),
    protected_ids: Sequence[int] = (),
    replace_probs: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> MaskedTokens:
    """Caption masking for fusion MLM (X-FM, SPEC section 2): 50%, at most 15 masks, spans of
    2..3 tokens with probability 0.2, token level; captions are at most 30 tokens.

    Position 0 and padding are never masked. As in the official code the final separator may
    be masked; pass ``protected_ids=[sep_id]`` to prevent it. See :func:`span_mask`.
    """
    return span_mask(
        input_ids,
        attention_mask,
        generator=generator,
        mask_token_id=mask_token_id,
        vocab_size=vocab_size,
        mask_prob=mask_prob,
        max_masks=max_masks,
        span_prob=span_prob,
        span_lengths=span_lengths,
        word_starts=None,
        protected_ids=protected_ids,
        replace_probs=replace_probs,
    )


__all__ = [
    "IGNORE_INDEX",
    "MaskedTokens",
    "caption_mask",
    "num_to_mask",
    "span_mask",
    "text_mlm_mask",
]

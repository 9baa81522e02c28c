"""Masking functions: invariants (hypothesis), determinism and replacement statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from xfm.text import MLMHead, RobertaEncoder, caption_mask, span_mask, text_mlm_mask
from xfm.text.masking import IGNORE_INDEX, num_to_mask

MASK_ID = 4
SEP_ID = 2


@st.composite
def batches(draw):
    """A padded batch: ids [B, T] (0 = CLS at position 0, SEP at the end, 1 = padding),
    attention mask, random word starts, masking settings."""
    b = draw(st.integers(1, 4))
    t = draw(st.integers(2, 40))
    vocab = draw(st.integers(8, 60))
    lengths = draw(st.lists(st.integers(1, t), min_size=b, max_size=b))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    ids[:, 0] = 0
    for i, n in enumerate(lengths):
        if n >= 2:
            ids[i, n - 1] = SEP_ID
    ids[~mask] = 1
    starts = torch.rand(b, t, generator=g) < draw(st.floats(0.2, 1.0))
    return {
        "ids": ids,
        "mask": mask.long(),
        "starts": starts,
        "vocab": vocab,
        "mask_prob": draw(st.sampled_from([0.15, 0.5, 0.3, 1.0])),
        "max_masks": draw(st.integers(1, 20)),
        "span_prob": draw(st.sampled_from([0.0, 0.2, 1.0])),
        "span_lengths": draw(st.sampled_from([(2, 3), (1, 1), (2, 5)])),
        "whole_word": draw(st.booleans()),
        "protect_sep": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _run(case, seed=None):
    return span_mask(
        case["ids"],
        case["mask"],
        generator=torch.Generator().manual_seed(case["seed"] if seed is None else seed),
        mask_token_id=MASK_ID,
        vocab_size=case["vocab"],
        mask_prob=case["mask_prob"],
        max_masks=case["max_masks"],
        span_prob=case["span_prob"],
        span_lengths=case["span_lengths"],
        word_starts=case["starts"] if case["whole_word"] else None,
        protected_ids=[SEP_ID] if case["protect_sep"] else [],
    )


def _words(maskable_row, starts_row):
    """Maximal runs of maskable positions glued by non-start tokens, as sets."""
    words, current = [], []
    for p, ok in enumerate(maskable_row):
        if ok and current and not starts_row[p]:
            current.append(p)
            continue
        if current:
            words.append(current)
        current = [p] if ok else []
    if current:
        words.append(current)
    return words


@settings(max_examples=150, deadline=None)
@given(batches())
def test_invariants(case):
    out = _run(case)
    ids, real = case["ids"], case["mask"].bool()
    maskable = real.clone()
    maskable[:, 0] = False
    if case["protect_sep"]:
        maskable &= ids != SEP_ID

    # never position 0, padding or protected ids
    assert not (out.mask & ~maskable).any()
    # labels: the original ids at masked positions, -100 elsewhere
    assert torch.equal(out.labels[out.mask], ids[out.mask])
    assert (out.labels[~out.mask] == IGNORE_INDEX).all()
    # unmasked tokens are untouched; masked ones are in the vocabulary
    assert torch.equal(out.input_ids[~out.mask], ids[~out.mask])
    assert ((out.input_ids >= 0) & (out.input_ids < case["vocab"])).all()
    # padded official form
    assert out.masked_pos.shape == out.masked_ids.shape == (ids.shape[0], case["max_masks"])
    for i in range(ids.shape[0]):
        positions = out.mask[i].nonzero().flatten()
        n = len(positions)
        assert torch.equal(out.masked_pos[i, :n], positions)
        assert torch.equal(out.masked_ids[i, :n], ids[i, positions])
        assert (out.masked_pos[i, n:] == 0).all() and (out.masked_ids[i, n:] == -100).all()
        # counts
        budget = num_to_mask(int(real[i].sum()), case["mask_prob"], case["max_masks"])
        n_maskable = int(maskable[i].sum())
        if not case["whole_word"]:
            assert n == min(budget, n_maskable)
            continue
        assert n <= budget and (n >= 1 or n_maskable == 0)
        # whole words: each word is masked completely or not at all, except the fallback of
        # one partial word when no whole word fits the budget
        chosen = set(positions.tolist())
        words = _words(maskable[i].tolist(), case["starts"][i].tolist())
        partial = [w for w in words if 0 < len(chosen & set(w)) < len(w)]
        if partial:
            assert len(partial) == 1 and n == budget
            assert chosen <= set(partial[0])
            assert min(len(w) for w in words) > budget


@settings(max_examples=40, deadline=None)
@given(batches())
def test_same_generator_state_gives_the_same_result(case):
    a, b = _run(case), _run(case)
    for x, y in zip(vars(a).values(), vars(b).values()):
        assert torch.equal(x, y)


def test_different_seeds_give_different_masks():
    ids = torch.randint(5, 100, (8, 30))
    ids[:, 0] = 0
    results = [
        caption_mask(
            ids, generator=torch.Generator().manual_seed(s), mask_token_id=MASK_ID, vocab_size=100
        ).mask
        for s in range(3)
    ]
    assert not torch.equal(results[0], results[1]) and not torch.equal(results[1], results[2])


def test_official_mask_count_formula():
    # min(max_masks, max(1, round(n * prob))) with Python's round-half-to-even
    assert num_to_mask(30, 0.5, 15) == 15
    assert num_to_mask(5, 0.5, 15) == 2  # round(2.5) == 2
    assert num_to_mask(7, 0.5, 15) == 4  # round(3.5) == 4
    assert num_to_mask(3, 0.15, 20) == 1
    assert num_to_mask(128, 0.15, 20) == 19
    assert num_to_mask(200, 0.15, 20) == 20


def test_text_mlm_defaults_are_15_percent_at_most_20():
    """Token level (no word starts) the counts are exact: round(0.15 * n_real), capped at 20."""
    ids = torch.randint(5, 100, (4, 128))
    ids[:, 0] = 0
    lengths = torch.tensor([128, 100, 40, 3])
    att = (torch.arange(128)[None] < lengths[:, None]).long()
    ids[att == 0] = 1
    out = text_mlm_mask(
        ids,
        att,
        generator=torch.Generator().manual_seed(0),
        mask_token_id=MASK_ID,
        vocab_size=100,
        word_starts=None,
    )
    assert out.masked_pos.shape == (4, 20)
    assert out.num_masked.tolist() == [19, 15, 6, 1]  # 19.2, 15.0, 6.0, max(1, 0.45)


def test_replacements_are_80_10_10_and_random_ids_are_uniform():
    vocab = 1000
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3000, 30), generator=g)
    ids[:, 0] = 0
    out = caption_mask(ids, generator=g, mask_token_id=MASK_ID, vocab_size=vocab)
    masked = out.mask
    n = int(masked.sum())
    assert n == 3000 * 15
    became_mask = (out.input_ids == MASK_ID) & masked
    unchanged = (out.input_ids == ids) & masked
    random = masked & ~became_mask & ~unchanged
    # binomial standard deviations are ~0.002: allow 0.01
    assert abs(int(became_mask.sum()) / n - 0.8) < 0.01
    assert abs(int(unchanged.sum()) / n - 0.1) < 0.01
    assert abs(int(random.sum()) / n - 0.1) < 0.01
    # random replacements are uniform over [0, vocab): compare decile counts
    picked = out.input_ids[random]
    counts = torch.bincount(picked * 10 // vocab, minlength=10).float()
    expected = len(picked) / 10
    assert ((counts - expected).abs() < 5 * expected**0.5).all()


def test_spans_make_adjacent_masks():
    """With span probability 1 and spans of 2, the two masks of a 20-token row are adjacent
    (unless the span starts on the last token); with span probability 0 they rarely are."""
    ids = torch.randint(5, 100, (2000, 20))
    ids[:, 0] = 0

    def adjacent_fraction(span_prob):
        out = span_mask(
            ids,
            generator=torch.Generator().manual_seed(1),
            mask_token_id=MASK_ID,
            vocab_size=100,
            mask_prob=0.1,  # round(20 * 0.1) = 2 masks per row
            max_masks=2,
            span_prob=span_prob,
            span_lengths=(2, 2),
        )
        assert (out.num_masked == 2).all()
        return (out.masked_pos[:, 1] - out.masked_pos[:, 0] == 1).float().mean().item()

    assert adjacent_fraction(1.0) > 0.9  # 18/19 expected
    assert adjacent_fraction(0.0) < 0.2  # 18/171 expected


def test_text_mlm_keeps_special_tokens_and_whole_words():
    # [CLS] w1 w1' w2 w3 w3' w3'' [SEP] [PAD]
    ids = torch.tensor([[0, 10, 11, 12, 13, 14, 15, 2, 1]] * 500)
    att = (ids != 1).long()
    starts = torch.tensor([[True, True, False, True, True, False, False, True, True]] * 500)
    out = text_mlm_mask(
        ids,
        att,
        generator=torch.Generator().manual_seed(0),
        mask_token_id=MASK_ID,
        vocab_size=20,
        word_starts=starts,
        special_ids=[0, 1, 2],
        mask_prob=0.5,  # budget round(8 * 0.5) = 4
    )
    assert not out.mask[:, [0, 7, 8]].any()
    words = [[1, 2], [3], [4, 5, 6]]
    for row in out.mask:
        for w in words:
            assert row[w].all() or not row[w].any()
    assert (out.num_masked <= 4).all() and (out.num_masked >= 1).all()


def test_caption_mask_defaults_and_official_padded_outputs():
    ids = torch.tensor([[0, 5, 6, 7, 8, 9, 2, 1, 1], [0, 5, 2, 1, 1, 1, 1, 1, 1]])
    att = (ids != 1).long()
    out = caption_mask(
        ids, att, generator=torch.Generator().manual_seed(0), mask_token_id=MASK_ID, vocab_size=12
    )
    assert out.masked_pos.shape == (2, 15)
    assert out.num_masked.tolist() == [4, 2]  # round(7 / 2) = 4, round(3 / 2) = 2 (incl. SEP)
    one = caption_mask(
        ids[1], att[1], generator=torch.Generator().manual_seed(0), mask_token_id=4, vocab_size=12
    )
    assert one.input_ids.shape == (9,) and one.masked_pos.shape == (15,)


def test_nothing_to_mask_gives_empty_outputs():
    ids = torch.tensor([[0, 1, 1]])
    out = caption_mask(
        ids, ids != 1, generator=torch.Generator().manual_seed(0), mask_token_id=4, vocab_size=6
    )
    assert not out.mask.any() and (out.masked_ids == -100).all()
    assert torch.equal(out.input_ids, ids)


def test_padded_targets_give_the_same_loss_as_full_labels():
    """``head(h, masked_pos)`` + ``masked_ids`` (official form) == full-length ``labels``."""
    torch.manual_seed(0)
    enc = RobertaEncoder(vocab_size=30, width=16, layers=1, heads=2, ffn_dim=32, max_positions=20)
    head = MLMHead.for_encoder(enc)
    ids = torch.randint(5, 30, (3, 10))
    ids[:, 0] = 0
    out = caption_mask(
        ids, generator=torch.Generator().manual_seed(3), mask_token_id=4, vocab_size=30
    )
    with torch.no_grad():
        hidden = enc.eval()(out.input_ids)
        padded = F.cross_entropy(
            head(hidden, out.masked_pos).flatten(0, 1), out.masked_ids.flatten()
        )
        full = F.cross_entropy(head(hidden).flatten(0, 1), out.labels.flatten())
    torch.testing.assert_close(padded, full)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask_prob": 0.0}, "mask_prob"),
        ({"max_masks": 0}, "max_masks"),
        ({"span_lengths": (3, 2)}, "span_lengths"),
        ({"replace_probs": (0.5, 0.1, 0.1)}, "replace_probs"),
        ({"mask_token_id": 12}, "mask_token_id"),
        ({"vocab_size": 5}, r"input_ids must be in \[0, vocab_size=5\)"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    ids = torch.tensor([[0, 5, 6, 7]])
    args = {"mask_token_id": 4, "vocab_size": 12, "mask_prob": 0.5, "max_masks": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        span_mask(ids, generator=torch.Generator(), **args)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        span_mask(
            ids,
            torch.ones(1, 3),
            generator=torch.Generator(),
            mask_token_id=4,
            vocab_size=12,
            mask_prob=0.5,
            max_masks=3,
        )

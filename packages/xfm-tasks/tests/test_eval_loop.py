"""The one evaluation loop (:func:`xfm.tasks.base.run_batches` / :func:`collect_outputs`) and the
tasks that run their phases through it (retrieval re-ranking, VQA ranking)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from xfm.tasks.base import TaskData, collect_outputs, concat_outputs, run_batches
from xfm.tasks.retrieval import itm_scores

CPU = torch.device("cpu")


def test_collect_outputs_joins_tensors_and_lists_in_order() -> None:
    data = TaskData(list(range(7)), lambda items: {"x": torch.tensor(items), "name": items})

    def step(batch):
        assert not torch.is_grad_enabled()
        return {"double": batch["x"] * 2, "name": [f"n{i}" for i in batch["name"]]}

    out = collect_outputs(data, step, batch_size=3, device=CPU, shard=True)
    assert out["double"].tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert out["name"] == [f"n{i}" for i in range(7)]


def test_run_batches_autocast_default_is_off_and_caller_autocast_applies() -> None:
    seen = []

    def step(batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return {"x": batch}

    batches = [torch.ones(2), torch.ones(1)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = run_batches(batches, step, device=CPU)
    run_batches(batches, step, device=CPU, autocast=lambda: torch.autocast("cpu"))
    assert seen == [False, False, True, True]
    assert [p.shape[0] for p in parts["x"]] == [2, 1]
    assert concat_outputs(parts)["x"].shape == (3,)


def test_run_batches_progress_counts_items(capsys: pytest.CaptureFixture[str]) -> None:
    batches = [torch.zeros(4), torch.zeros(3)]
    run_batches(
        batches,
        lambda b: {},
        device=CPU,
        progress=True,
        desc="pairs",
        unit="pair",
        total=7,
        size=len,
    )
    err = capsys.readouterr().err
    assert "7/7" in err and "pair" in err


class _FakeITM(torch.nn.Module):
    """Fusion that sums text and image states; ITM logit 1 = the first feature (by hand)."""

    def fusion_image_kv(self, image_states):
        kv = image_states.unsqueeze(1)  # [B, heads=1, 1+N, D]
        return [(kv, kv)]

    def fuse(self, text, mask, image_kv):
        image = image_kv[0][0][:, 0]
        return (text * mask.unsqueeze(-1)).sum(1, keepdim=True) + image[:, :1]

    def itm_logits(self, fused):
        return torch.stack([-fused[:, 0, 0], fused[:, 0, 0]], dim=1)


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize(("batch_size", "kv_chunk"), [(1, 1), (3, 2), (50, 64)])
def test_itm_scores_through_the_loop_equal_the_pairwise_formula(
    per_image: bool, batch_size: int, kv_chunk: int
) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 2, generator=gen)
    texts = torch.randn(6, 5, 2, generator=gen)
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[1, 2:] = 0
    mask[4, 3:] = 0
    pairs = torch.tensor([[0, 1], [0, 4], [1, 0], [1, 1], [1, 5], [3, 2], [3, 3], [3, 4]])
    got = itm_scores(
        _FakeITM(),
        images,
        texts,
        mask,
        pairs,
        batch_size,
        contextlib.nullcontext,
        kv_chunk=kv_chunk,
        per_image=per_image,
    )
    want = torch.stack(
        [(texts[t] * mask[t, :, None]).sum(0)[0] + images[i, 0, 0] for i, t in pairs]
    )
    torch.testing.assert_close(got, want)


def test_vqa_predict_through_the_loop_equals_ranking_all_questions_at_once() -> None:
    from xfm.tasks.vqa import VQATask
    from xfm.tasks.vqa_model import VQAConfig, VQAModel

    torch.manual_seed(0)
    model = VQAModel(
        VQAConfig(
            text={
                "name": "roberta",
                "vocab_size": 50,
                "width": 32,
                "layers": 1,
                "heads": 2,
                "ffn_dim": 64,
                "max_positions": 64,
            },
            vision={
                "name": "beit_v2",
                "image_size": 16,
                "patch_size": 8,
                "width": 32,
                "layers": 1,
                "heads": 2,
                "mlp_ratio": 2.0,
            },
            fusion={"name": "cross_attention", "layers": 1, "heads": 2, "ffn_dim": 64},
            decoder={"layers": 1},
        )
    ).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.5)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(7, 3, 16, 16, generator=gen)
    qids = torch.randint(3, 50, (7, 5), generator=gen)
    qmask = torch.ones(7, 5, dtype=torch.long)
    qmask[2, 3:] = 0
    answer_ids = torch.tensor([[0, 5, 2, 1], [0, 7, 9, 2], [0, 11, 2, 1], [0, 13, 14, 2]])
    answer_mask = answer_ids.ne(1).long()
    names = ["five", "seven nine", "eleven", "thirteen"]

    def collate(rows):
        return {
            "image": images[rows],
            "question_ids": qids[rows],
            "question_mask": qmask[rows],
            "question_id": [f"q{r}" for r in rows],
            "question": [f"question {r}" for r in rows],
            "answers": [[names[r % 4]] for r in rows],
        }

    data = TaskData(list(range(7)), collate)
    data.answer_list = names
    data.answer_tokens = (answer_ids, answer_mask)
    rows = VQATask(k_test=3).predict(model, data, batch_size=3)
    with torch.no_grad():
        states = model.question_states(images, qids, qmask)
        best = model.rank_answers(states, answer_ids, answer_mask, 3).answer_index
    assert rows == [(f"q{r}", f"question {r}", names[best[r]], [names[r % 4]]) for r in range(7)]

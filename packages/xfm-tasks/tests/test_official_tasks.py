"""Official retrieval / NLVR2 / grounding task checkpoints: golden outputs, base-size key lists,
round trips, and the fast retrieval evaluation against a naive official-style loop on a
directory with other dimensions."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from xfm.core.attention import use_backend
from xfm.core.checkpoint import compare_state, save_state_dict
from xfm.fusion.official import (
    TIED_ALIASES,
    UNUSED_OFFICIAL,
    infer_official_config,
    official_key_mapper,
)
from xfm.tasks.base import get_task
from xfm.tasks.official import (
    layout_of_model,
    load_golden_dir,
    load_task_weights,
    read_key_list,
    task_config_from_golden,
)
from xfm.tasks.official.check import golden_outputs


def task_outputs(config: dict, directory: Path) -> tuple[dict, dict]:
    return golden_outputs(directory)


def to_official_task(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return layout_of_model(model).export_state(model)


DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_tasks"
KEYS = DATA / "keys"
TASKS = {"retrieval": "retrieval", "nlvr": "nlvr", "grounding": "grounding_bbox"}


def _mismatches(computed: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    bad = []
    for name, want in expected.items():
        if name not in computed:
            bad.append(f"{name}: not computed")
            continue
        got = computed[name].detach()
        if got.shape != want.shape:
            bad.append(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
        elif not want.is_floating_point():
            if not torch.equal(got.long(), want.long()):
                bad.append(f"{name}: {got.tolist()} != {want.tolist()}")
        else:
            err = (got.double() - want.double()).abs()
            if not bool((err <= 1e-5 + 1e-4 * want.double().abs()).all()):
                bad.append(f"{name}: max |diff| {float(err.max()):.3e}")
    return bad


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("golden", sorted(TASKS))
def test_golden_task_outputs_reproduced(golden: str, backend: str) -> None:
    d = GOLDEN / golden
    config = json.loads((d / "config.json").read_text())
    with use_backend(backend):
        computed, skipped = task_outputs(config, d)
    assert skipped == {}
    expected = load_file(str(d / "outputs.safetensors"))
    assert _mismatches(computed, expected) == []
    if golden == "retrieval":  # the -100 filler is exact, and only outside the candidates
        for name in ("score_matrix_i2t", "score_matrix_t2i"):
            filler = expected[name] == -100.0
            assert torch.equal(computed[name] == -100.0, filler)


def test_wrong_retrieval_semantics_would_fail() -> None:
    """Dividing the ranking sims by the temperature keeps the order but the check must see the
    sims themselves; re-ranking with a softmax probability changes every score."""
    d = GOLDEN / "retrieval"
    config = json.loads((d / "config.json").read_text())
    computed, _ = task_outputs(config, d)
    expected = load_file(str(d / "outputs.safetensors"))
    wrong = dict(computed)
    wrong["score_matrix_i2t"] = torch.where(
        computed["score_matrix_i2t"] == -100.0,
        computed["score_matrix_i2t"],
        computed["score_matrix_i2t"].sigmoid(),
    )
    assert _mismatches(wrong, {"score_matrix_i2t": expected["score_matrix_i2t"]})


@pytest.mark.parametrize("golden", sorted(TASKS))
def test_export_round_trip_is_exact(golden: str) -> None:
    d = GOLDEN / golden
    model = load_golden_dir(d)
    original = load_file(str(d / "model.safetensors"))
    exported = to_official_task(model)
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name


def _meta_state(layout: str) -> dict[str, torch.Tensor]:
    keys = read_key_list(KEYS / f"{layout}.txt")
    return {k: torch.empty(s, dtype=dt, device="meta") for k, (s, dt) in keys.items()}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_base_task_layout_on_meta_device(task: str) -> None:
    """A base-size task model (dims read off the official key list, 384 px) exports exactly the
    official names, shapes and dtypes, and every official key maps onto the model."""
    layout = TASKS[task]
    state = _meta_state(layout)
    probe = dict(state)
    probe.setdefault("vision_proj.weight", torch.empty(256, 768, device="meta"))
    config = infer_official_config(probe)
    with torch.device("meta"):
        model = get_task(task).build_model(config)
    exported = {k: (tuple(v.shape), v.dtype) for k, v in to_official_task(model).items()}
    wanted = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    assert sorted(set(wanted) - set(exported)) == []
    assert sorted(set(exported) - set(wanted)) == []
    assert [k for k in wanted if exported[k] != wanted[k]] == []
    # import side: the mapped official keys cover the model exactly
    aliases = set(TIED_ALIASES) | {"text_encoder.lm_head.decoder.weight"}
    kept = {
        k: v
        for k, v in state.items()
        if k not in aliases and not any(re.search(p, k) for p in UNUSED_OFFICIAL)
    }
    report = compare_state(
        model, kept, mapper=official_key_mapper(model, text_prefix="text_encoder.")
    )
    assert report.ok, report.format("key list", type(model).__name__)


def test_key_list_head_differences() -> None:
    """The three layouts differ from each other only by their heads (the test data is right)."""
    r, n, g = (set(read_key_list(KEYS / f"{x}.txt")) for x in TASKS.values())
    assert {k.split(".")[0] for k in r - g} == {"vision_proj", "text_proj", "temp", "itm_head"}
    assert {k.split(".")[0] for k in n - g} == {"cls_head"}
    assert {k.split(".")[0] for k in g - n} == {"bbox_head"}


# ----------------------------------------------------- other dimensions, naive reference


def _naive_scores(model, image, ids, atts, k):
    """Official loop semantics, written the slow obvious way: one fusion pass per candidate
    from the raw image states (no K/V reuse), each direction on its own."""
    vision = model.encode_image(image)
    text = model.encode_text(ids, atts)
    image_feat, text_feat = model.itc_features(vision, text)
    sims = image_feat @ text_feat.t()
    n_i, n_t = sims.shape
    s_i2t = torch.full((n_i, n_t), -100.0)
    s_t2i = torch.full((n_t, n_i), -100.0)
    for i in range(n_i):
        for t in sims[i].topk(min(k, n_t)).indices.tolist():
            fused = model.fuse(text[t : t + 1], atts[t : t + 1], vision[i : i + 1])
            s_i2t[i, t] = model.itm_logits(fused)[0, 1]
    for t in range(n_t):
        for i in sims[:, t].topk(min(k, n_i)).indices.tolist():
            fused = model.fuse(text[t : t + 1], atts[t : t + 1], vision[i : i + 1])
            s_t2i[t, i] = model.itm_logits(fused)[0, 1]
    return sims, s_i2t, s_t2i


@torch.no_grad()
def test_other_dimensions_directory(tmp_path: Path) -> None:
    """A golden-format retrieval directory with other dimensions (vision width != text width,
    so the official ``fusion_proj`` exists; 3 fusion layers; k_test larger than some rows):
    task_outputs runs on it and its score matrices equal a naive official-style loop."""
    config = json.loads((GOLDEN / "retrieval" / "config.json").read_text())
    cfg = copy.deepcopy(config)
    cfg["vision"].update(image_size=48, patch_size=16, width=48, layers=1, heads=3, mlp_hidden=96)
    cfg["text"].update(width=24, layers=1, heads=2, intermediate_size=40, vocab_size=50)
    cfg["fusion"].update(layers=3, cross_attention_layers=3, heads=2, width=24)
    cfg["embed_dim"] = 8
    cfg["official_config_used"].update(batch_size_test=2, batch_size_test_text=3)
    torch.manual_seed(3)
    model = get_task("retrieval").build_model(task_config_from_golden(cfg)).eval()
    for p in model.parameters():  # spread the scores (default init makes many near-ties)
        p.add_(torch.randn_like(p) * 0.3)
    save_state_dict(to_official_task(model), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    n_i, n_t, length = 5, 9, 7
    ids = torch.randint(3, 50, (n_t, length))
    ids[:, 0] = 0
    atts = torch.ones(n_t, length, dtype=torch.long)
    for t in range(n_t):
        end = 3 + t % 4
        ids[t, end] = 2
        ids[t, end + 1 :] = 1
        atts[t, end + 1 :] = 0
    inputs = {
        "image": torch.randn(n_i, 3, 48, 48),
        "text_ids": ids,
        "text_atts": atts,
        "k_test": torch.tensor(6),
        "txt2img": torch.arange(n_t) % n_i,
        "train_image_idx": torch.tensor([0, 1, 1, 3]),
        "train_text_idx": torch.tensor([0, 1, 6, 3]),
        "train_neg_image_idx": torch.tensor([1, 0, 0, 0]),
        "train_neg_text_idx": torch.tensor([3, 3, 3, 1]),
    }
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    computed, skipped = task_outputs(cfg, tmp_path)
    assert skipped == {}
    loaded = load_golden_dir(tmp_path, "retrieval")
    sims, s_i2t, s_t2i = _naive_scores(loaded, inputs["image"], ids, atts, 6)
    assert torch.allclose(computed["sims_i2t"], sims, atol=1e-6)
    assert torch.equal(computed["score_matrix_i2t"] == -100.0, s_i2t == -100.0)
    assert torch.equal(computed["score_matrix_t2i"] == -100.0, s_t2i == -100.0)
    assert torch.allclose(computed["score_matrix_i2t"], s_i2t, atol=1e-5, rtol=1e-4)
    assert torch.allclose(computed["score_matrix_t2i"], s_t2i, atol=1e-5, rtol=1e-4)
    # both batching modes of the re-ranking (K/V rows gathered / one image's K/V broadcast)
    from xfm.tasks.retrieval import itm_scores

    vision = loaded.encode_image(inputs["image"])
    text = loaded.encode_text(ids, atts)
    pairs = torch.cartesian_prod(torch.arange(n_i), torch.arange(n_t))
    gathered = itm_scores(loaded, vision, text, atts, pairs, 7, kv_chunk=2, per_image=False)
    broadcast = itm_scores(loaded, vision, text, atts, pairs, 4, kv_chunk=3, per_image=True)
    assert torch.allclose(gathered, broadcast, atol=1e-5)
    full = loaded.itm_logits(
        loaded.fuse(text.repeat(n_i, 1, 1), atts.repeat(n_i, 1), vision.repeat_interleave(n_t, 0))
    )[:, 1]
    assert torch.allclose(gathered, full, atol=1e-5)
    assert (s_i2t != -100.0).sum(1).tolist() == [6] * n_i
    assert (s_t2i != -100.0).sum(1).tolist() == [5] * n_t  # k_test > number of images


def test_pretraining_checkpoint_initialises_task_models() -> None:
    """Fine-tuning from an xfm pretraining model: shared weights are copied, task heads stay."""
    from xfm.fusion.model import XFM

    cfg = task_config_from_golden(json.loads((GOLDEN / "nlvr" / "config.json").read_text()))
    torch.manual_seed(0)
    pre = XFM(cfg)
    task_model = get_task("nlvr").build_model(cfg)
    head = task_model.cls_head[0].weight.clone()
    report = load_task_weights(task_model, pre.state_dict())
    assert torch.equal(
        task_model.fusion_encoder.layers[0].cross_attn.key.weight,
        pre.fusion_encoder.layers[0].cross_attn.key.weight,
    )
    assert torch.equal(task_model.cls_head[0].weight, head)
    assert any(k.startswith("cls_head.") for k in report.missing)

"""Official VQA / GLUE / ImageNet task checkpoints: golden outputs and base-size key lists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xfm.core.attention import use_backend
from xfm.core.checkpoint import load_into
from xfm.tasks.classification import ImageClassifier, TextClassifier
from xfm.tasks.official import get_layout, load_golden_dir
from xfm.tasks.official.check import golden_outputs
from xfm.tasks.vqa_model import VQAConfig, VQAModel

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_tasks"
KEYS = DATA / "keys"
OUTPUTS = ("vqa", "classification_glue", "classification_imagenet")


def _compare(computed: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    bad = []
    for name, want in expected.items():
        assert name in computed, f"{name} not computed"
        got = computed[name].detach()
        assert got.shape == want.shape, f"{name}: {tuple(got.shape)} != {tuple(want.shape)}"
        if not want.is_floating_point():
            if not torch.equal(got.long(), want.long()):
                bad.append(f"{name}: {got.tolist()} != {want.tolist()}")
            continue
        err = (got.double() - want.double()).abs()
        if not bool((err <= 1e-5 + 1e-4 * want.double().abs()).all()):
            bad.append(f"{name}: max |diff| {float(err.max()):.3e}")
    return bad


@pytest.mark.parametrize("task", sorted(OUTPUTS))
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_golden_outputs_reproduced(task: str, backend: str) -> None:
    d = GOLDEN / task
    with use_backend(backend):
        computed, skipped = golden_outputs(d)
    assert skipped == {}
    expected = load_file(str(d / "outputs.safetensors"))
    assert set(expected) <= set(computed)
    assert _compare(computed, expected) == []


def test_vqa_ranking_is_sensitive_to_the_first_token_double_count() -> None:
    """Counting the first token once instead of twice changes the golden scores (the test of
    the official score is not vacuous)."""
    d = GOLDEN / "vqa"
    computed, _ = golden_outputs(d)
    expected = load_file(str(d / "outputs.safetensors"))
    once = -computed["candidate_answer_nll"]
    assert not torch.allclose(once, expected["candidate_log_prob_sum"], atol=1e-3)


def _key_list(name: str) -> tuple[str, dict[str, torch.Tensor]]:
    lines = (KEYS / f"{name}.txt").read_text().splitlines()
    state = {}
    for line in lines[1:]:
        key, shape, dtype = line.split("\t")
        dims = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
        state[key] = torch.empty(dims, dtype=getattr(torch, dtype), device="meta")
    return lines[0], state


ROBERTA_BASE = {
    "name": "roberta",
    "vocab_size": 50265,
    "width": 768,
    "layers": 12,
    "heads": 12,
    "ffn_dim": 3072,
    "max_positions": 514,
    "pad_token_id": 1,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "position_style": "roberta",
}


def _beit_base(image_size: int) -> dict:
    return {"name": "beit_v2", "image_size": image_size, "patch_size": 16}


def _load_meta(model: torch.nn.Module, state: dict, mapper) -> list[str]:
    report = load_into(model, state, mapper=mapper, strict=True, assign=True)
    assert not report.missing and not report.unexpected
    return report.dropped


def test_vqa_base_key_list_maps_onto_the_model() -> None:
    header, state = _key_list("vqa")
    size = int(re.search(r"image_res=(\d+)", header).group(1))
    with torch.device("meta"):
        model = VQAModel(
            VQAConfig(
                text=ROBERTA_BASE,
                vision=_beit_base(size),
                fusion={"name": "cross_attention", "layers": 12},
                decoder={"layers": 12},
            )
        )
    dropped = _load_meta(model, state, get_layout("vqa").key_mapper(model))
    pattern = re.compile(
        r"^fusion_encoder\.(roberta\.embeddings|lm_head|lm_cap_head)\.|\.position_ids$|"
        r"\.relative_position_index$|^text_decoder\.lm_head\.decoder\.bias$"
    )
    assert dropped and all(pattern.search(k) for k in dropped), dropped
    assert len(model.state_dict()) + len(dropped) == len(state)


@pytest.mark.parametrize("name", ["classification_glue", "classification_imagenet"])
def test_classification_base_key_lists_map_onto_the_models(name: str) -> None:
    header, state = _key_list(name)
    classes = state[
        max((k for k in state if k.startswith("cls_head.")), key=lambda k: int(k.split(".")[1]))
    ].shape[0]
    size = int(re.search(r"image_res=(\d+)", header).group(1))
    with torch.device("meta"):
        if name == "classification_glue":
            model = TextClassifier(ROBERTA_BASE, classes)
            mapper = get_layout("glue").key_mapper(model)
            kept = r"^(vision|fusion)_encoder\.|\.position_ids$"
        else:
            model = ImageClassifier(_beit_base(size), classes)
            mapper = get_layout("imagenet").key_mapper(model)
            kept = r"^(text|fusion)_encoder\.|\.relative_position_index$"
    dropped = _load_meta(model, state, mapper)
    assert all(re.search(kept, k) for k in dropped), dropped
    assert len(model.state_dict()) + len(dropped) == len(state)


def test_config_dimensions_are_read_from_config_json(tmp_path: Path) -> None:
    """A config whose dims disagree with the weights fails loudly (no silent fallback)."""
    d = GOLDEN / "classification_glue"
    cfg = json.loads((d / "config.json").read_text())
    cfg["text"]["width"] = 48
    state = load_file(str(d / "model.safetensors"))
    with pytest.raises(Exception, match="shape"):
        get_layout("glue").load_golden(cfg, state)


@pytest.mark.parametrize("task", sorted(OUTPUTS))
def test_check_official_cli(task: str, capsys: pytest.CaptureFixture[str]) -> None:
    from xfm.core.cli.main import main

    assert main(["check-official", str(GOLDEN / task)]) == 0
    out = capsys.readouterr().out
    assert " 0 failed, 0 skipped" in out


def test_vqa_fast_ranking_matches_the_golden_ranking() -> None:
    """The evaluation path (LM head only at real targets) gives the official ranking."""
    d = GOLDEN / "vqa"
    model = load_golden_dir(d)
    x, y = load_file(str(d / "inputs.safetensors")), load_file(str(d / "outputs.safetensors"))
    with torch.no_grad():
        states = model.question_states(x["image"], x["question_ids"], x["question_atts"])
        rank = model.rank_answers(states, x["answer_ids"], x["answer_atts"], int(x["k_test"]))
    assert torch.equal(rank.topk_ids, y["topk_ids"])
    assert torch.equal(rank.answer_index, y["answer_index"])
    torch.testing.assert_close(rank.topk_probs, y["topk_probs"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        rank.candidate_answer_nll, y["candidate_answer_nll"], atol=1e-5, rtol=1e-4
    )

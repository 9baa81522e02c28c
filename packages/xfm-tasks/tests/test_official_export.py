"""Export of VQA / GLUE / ImageNet task models back to the official layout (inverse of the
importers): bit-exact round trips of the golden checkpoints, fresh models, base-size key lists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xfm.tasks.classification import ImageClassifier, TextClassifier
from xfm.tasks.official import get_layout, layout_of_model, load_golden_dir, read_key_list
from xfm.tasks.official.commands import export_golden_dir
from xfm.tasks.official.golden import fusion_options, text_options, vision_options
from xfm.tasks.official.vqa import vqa_config_from_golden as config_from_golden
from xfm.tasks.vqa_model import VQAConfig, VQAModel


def to_official_classification(model: torch.nn.Module, spec: dict | None = None) -> dict:
    return layout_of_model(model).export_state(model, spec)


def official_config_of(model: torch.nn.Module, spec: dict | None = None) -> dict:
    return layout_of_model(model).golden_config(model, spec)


def _load(layout: str, state: dict, cfg: dict) -> torch.nn.Module:
    return get_layout(layout).load_golden(cfg, state)


DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_tasks"
KEYS = DATA / "keys"
TASKS = {
    "vqa": ("vqa", {}),
    "classification_glue": ("glue", {"glue_task": "mnli"}),
    "classification_imagenet": ("imagenet", {}),
}


def _assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    bad = [
        k
        for k, w in want.items()
        if got[k].dtype != w.dtype or got[k].shape != w.shape or not torch.equal(got[k], w)
    ]
    assert bad == []


@pytest.mark.parametrize("golden", sorted(TASKS))
def test_import_then_export_is_bit_exact(golden: str, tmp_path: Path) -> None:
    """Every key, shape, dtype and value of the official checkpoint comes back, through the
    in-memory export and through an exported directory that loads back."""
    d = GOLDEN / golden
    model = load_golden_dir(d)
    original = load_file(str(d / "model.safetensors"))
    _assert_identical(to_official_classification(model), original)
    out = export_golden_dir(model, tmp_path / "exported")
    _assert_identical(load_file(str(out / "model.safetensors")), original)
    again = load_golden_dir(out)
    _assert_identical(again.state_dict(), model.state_dict())
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (d / "config.json").read_text()
    )


def _fresh(golden: str, cfg: dict) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    if golden == "vqa":
        return VQAModel(config_from_golden(cfg)), {}
    spec = {"text": text_options(cfg), "vision": vision_options(cfg)}
    spec["fusion"] = fusion_options(cfg)
    num = 3 if golden == "classification_glue" else 10
    if golden == "classification_glue":
        return TextClassifier(spec["text"], num), spec
    return ImageClassifier(spec["vision"], num), spec


@pytest.mark.parametrize("golden", sorted(TASKS))
def test_never_imported_model_exports_a_loadable_official_layout(golden: str) -> None:
    """A model built here (no official tensors kept aside) exports the golden layout exactly
    (dead encoders freshly initialised from ``official_spec``); the importer loads it
    strictly and gets the model's own weights back."""
    d = GOLDEN / golden
    cfg = json.loads((d / "config.json").read_text())
    model, spec = _fresh(golden, cfg)
    assert getattr(model, "official_extras", None) is None
    state = to_official_classification(model, spec)
    original = load_file(str(d / "model.safetensors"))
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    assert shapes == {k: (tuple(v.shape), v.dtype) for k, v in original.items()}
    back = _load(TASKS[golden][0], state, cfg)
    _assert_identical(back.state_dict(), model.state_dict())
    # tied official tensors are one tensor
    for alias, canonical in (
        (
            "fusion_encoder.lm_head.decoder.weight",
            "fusion_encoder.roberta.embeddings.word_embeddings.weight",
        ),
        ("fusion_encoder.lm_head.decoder.bias", "fusion_encoder.lm_head.bias"),
    ):
        assert torch.equal(state[alias], state[canonical])
    # the golden-format config of a fresh model reads back to the same dimensions
    again = official_config_of(model, spec)
    if golden == "vqa":
        assert config_from_golden(again) == config_from_golden(cfg)
    elif golden == "classification_glue":
        assert text_options(again) == text_options(cfg)
    else:
        assert vision_options(again) == vision_options(cfg)


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


@pytest.mark.parametrize("layout", sorted(TASKS))
def test_base_model_exports_the_official_key_list_on_meta_device(layout: str) -> None:
    """A base-size model (meta device) exports exactly the names, shapes and dtypes of the
    official base key list."""
    path = KEYS / f"{layout}.txt"
    header = path.read_text().splitlines()[0]
    size = int(re.search(r"image_res=(\d+)", header).group(1))
    classes = int(re.search(r"num_labels=(\d+)", header).group(1)) if "num_labels" in header else 0
    want = read_key_list(path)
    spec = {
        "text": ROBERTA_BASE,
        "vision": {"name": "beit_v2", "image_size": size, "patch_size": 16},
        "fusion": {"name": "cross_attention", "layers": 12},
    }
    with torch.device("meta"):
        if layout == "vqa":
            model = VQAModel(
                VQAConfig(
                    text=ROBERTA_BASE,
                    vision=spec["vision"],
                    fusion=spec["fusion"],
                    decoder={"layers": 12},
                )
            )
        elif layout == "classification_glue":
            model = TextClassifier(ROBERTA_BASE, classes)
        else:
            model = ImageClassifier(spec["vision"], classes)
    got = {k: (tuple(v.shape), v.dtype) for k, v in to_official_classification(model, spec).items()}
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    assert [k for k in want if got[k] != want[k]] == []


def test_linear_probe_has_no_official_layout() -> None:
    model = ImageClassifier(
        {
            "name": "beit_v2",
            "image_size": 16,
            "patch_size": 8,
            "width": 16,
            "layers": 1,
            "heads": 2,
        },
        3,
        head="linear",
    )
    with pytest.raises(TypeError, match="linear probe"):
        to_official_classification(model)

"""Every official layout at vision width != text width: the unused tensors (``fusion_proj``,
``lm_cap_head``, fusion embeddings, dead encoders) are handled for every task family.

Reference: ``packages/xfm-tasks/tests/data/golden_other/<set>/model.safetensors``, checkpoints written by the official
constructors themselves (``tools/golden``) at vision width 36, text width 24, so their key lists
are what the official classes hold at those dimensions. For each family:

* a model of ours built from the set's ``config.json`` (never imported) exports exactly the
  official names, shapes and dtypes, and imports back bit-exact;
* the official checkpoint imports strictly and exports back bit-exact (every key, dtype,
  value).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xfm.tasks.official import layout_for_golden
from xfm.tasks.official.composed import ComposedLayout
from xfm.tasks.official.golden import fusion_options, text_options, vision_options

OTHER = Path(__file__).resolve().parent / "data" / "golden_other"
SETS = (
    "pretrain",
    "retrieval",
    "nlvr",
    "grounding",
    "vqa",
    "classification_glue",
    "classification_imagenet",
)


def _load(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    d = OTHER / name
    assert (d / "model.safetensors").is_file(), f"other-dimension golden set missing: {d}"
    return json.loads((d / "config.json").read_text()), load_file(str(d / "model.safetensors"))


def _signature(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def _export(layout, model, golden: dict) -> dict[str, torch.Tensor]:
    if isinstance(layout, ComposedLayout):  # the encoders the model lacks: golden dimensions
        spec = {"text": text_options(golden), "vision": vision_options(golden)}
        spec["fusion"] = fusion_options(golden)
        return layout.export_state(model, spec)
    return layout.export_state(model)


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(set(want) - set(got)) == [], "missing"
    assert sorted(set(got) - set(want)) == [], "extra"
    bad = [k for k, w in want.items() if got[k].dtype != w.dtype or not torch.equal(got[k], w)]
    assert bad == []


@pytest.mark.parametrize("name", SETS)
def test_the_set_has_other_widths(name: str) -> None:
    golden, official = _load(name)
    assert golden["vision"]["width"] != golden["text"]["width"]
    assert {"fusion_proj.weight", "fusion_proj.bias"} <= set(official)


@pytest.mark.parametrize("name", SETS)
def test_fresh_model_exports_the_official_key_list_and_imports_back(name: str) -> None:
    golden, official = _load(name)
    layout = layout_for_golden(golden)
    torch.manual_seed(0)
    model = layout.model_from_golden(golden, official).eval()
    assert not getattr(model, "official_extras", None)
    exported = _export(layout, model, golden)
    assert _signature(exported) == _signature(official)
    back = layout.load_golden(golden, {k: v.clone() for k, v in exported.items()})
    _assert_same(back.state_dict(), model.state_dict())


@pytest.mark.parametrize("name", SETS)
def test_official_checkpoint_round_trip_is_bit_exact(name: str) -> None:
    golden, official = _load(name)
    layout = layout_for_golden(golden)
    model = layout.load_golden(golden, official)
    assert model.official_extras["fusion_proj.weight"].shape == (
        golden["vision"]["width"],
        golden["text"]["width"],
    )
    _assert_same(layout.export_state(model), official)

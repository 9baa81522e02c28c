"""Task models are composed: their construction builds only what they keep, and their
state-dict keys are those of the models before they were composed (``data/task_state_keys.json``:
recorded from the ``TaskModel`` that built a whole ``XFM`` and deleted heads, and from the
unchanged VQA / captioning / GLUE / ImageNet models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

from xfm.fusion.model import PRETRAIN_HEADS, XFM, XFMEncoders, build_heads
from xfm.tasks.base import TaskModel, get_task

KEYS = json.loads((Path(__file__).parent / "data" / "task_state_keys.json").read_text())

TEXT = {
    "name": "roberta",
    "width": 32,
    "layers": 1,
    "heads": 2,
    "ffn_dim": 64,
    "max_positions": 64,
    "vocab_size": 100,
}
VISION = {
    "name": "beit_v2",
    "width": 32,
    "layers": 1,
    "heads": 2,
    "mlp_ratio": 2.0,
    "patch_size": 8,
    "image_size": 16,
}
FUSION = {"name": "cross_attention", "layers": 1, "heads": 2, "ffn_dim": 64}
SPEC = {"text": TEXT, "vision": VISION, "fusion": FUSION}
TASKS = ["retrieval", "nlvr", "grounding", "vqa", "captioning", "glue", "imagenet"]
OPTIONS = {"imagenet": {"num_classes": 3}}


def _build(task: str) -> nn.Module:
    return get_task(task, OPTIONS.get(task)).build_model(SPEC)


def _build_recording(build):
    """``(model, dropped parameters, dropped modules)`` of ``build()``: what was assigned to any
    module while it ran (global registration hooks) and is not in the model it returns.

    A parameter replaced in its own slot by a later assignment (weight tying: ``MLMHead`` points
    its decoder at the word embeddings) is a re-tie, not a dropped head, and is not reported.
    """
    params: list[tuple[int, str, nn.Parameter]] = []
    modules: list[nn.Module] = []

    def on_param(module, name, param):
        if param is not None:
            params.append((id(module), name, param))

    def on_module(module, name, submodule):
        if submodule is not None:
            modules.append(submodule)

    handles = [
        register_module_parameter_registration_hook(on_param),
        register_module_module_registration_hook(on_module),
    ]
    try:
        model = build()
    finally:
        for h in handles:
            h.remove()
    assert params and modules
    kept_params = {id(p) for p in model.parameters()}
    kept_modules = {id(m) for m in model.modules(remove_duplicate=False)}
    retied = {
        id(p)
        for i, (owner, name, p) in enumerate(params)
        if any((o, n) == (owner, name) for o, n, _ in params[i + 1 :])
    }
    dropped_params = [
        tuple(p.shape) for _, _, p in params if id(p) not in kept_params and id(p) not in retied
    ]
    dropped_modules = [type(m).__name__ for m in modules if id(m) not in kept_modules]
    return model, dropped_params, dropped_modules


@pytest.mark.parametrize("task", TASKS)
def test_construction_builds_only_what_the_model_keeps(task: str) -> None:
    _, params, modules = _build_recording(lambda: _build(task))
    assert params == [], f"{task}: parameters built then dropped: {params}"
    assert modules == [], f"{task}: modules built then dropped: {modules}"


def test_the_recorder_sees_a_dropped_head() -> None:
    """The check above can fail: a model that builds a head and deletes it is caught."""

    class Deleting(XFMEncoders):
        def __init__(self) -> None:
            super().__init__(**SPEC)
            build_heads(self, ["itm_head"])
            del self.itm_head

    _, params, modules = _build_recording(Deleting)
    assert len(params) == 6  # MLPHead: Linear, LayerNorm, Linear (weight + bias each)
    assert "MLPHead" in modules


@pytest.mark.parametrize("task", TASKS)
def test_state_dict_keys_unchanged(task: str) -> None:
    assert list(_build(task).state_dict()) == KEYS[task]


@pytest.mark.parametrize(
    ("task", "heads"),
    [
        ("retrieval", {"fusion_mlm_head", "vision_proj", "text_proj", "temp", "itm_head"}),
        ("nlvr", {"fusion_mlm_head"}),
        ("grounding", {"fusion_mlm_head", "bbox_head"}),
    ],
)
def test_task_models_hold_only_their_heads(task: str, heads: set[str]) -> None:
    model = get_task(task).build_model(SPEC)
    assert isinstance(model, TaskModel)
    assert {h for h in PRETRAIN_HEADS if hasattr(model, h)} == heads


def test_xfm_builds_every_head() -> None:
    model = XFM(**SPEC)
    assert all(hasattr(model, h) for h in PRETRAIN_HEADS)
    # the text MLM decoder stays tied to the word embeddings
    assert model.text_mlm_head.decoder.weight is model.text_encoder.embeddings.word.weight


def test_unknown_head_is_refused() -> None:
    class Bad(TaskModel):
        keep_heads = ("itm_head", "nope")

    with pytest.raises(ValueError, match="unknown X-FM heads"):
        Bad(SPEC)

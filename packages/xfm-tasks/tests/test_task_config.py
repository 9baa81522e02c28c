"""Fine-tuning configs: ``base:`` inheritance, the task name and options, the model section
(with the task model's own sections) and the loop's bounds are checked at load time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pytest
from pydantic import Field

from xfm.core.cli import main
from xfm.core.config import ConfigError, load_config
from xfm.tasks.base import FinetuneConfig, Task

ROOT = Path(__file__).resolve().parents[3]
TASKS = ROOT / "configs" / "tasks"
RETRIEVAL = TASKS / "retrieval_synth.yaml"
OVERRIDE = "command line override"


def _load(path: Path | str, *overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, str(path), list(overrides))


def _error(path: Path | str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(path, *overrides)
    return str(info.value)


def test_every_shipped_task_config_loads() -> None:
    for path in sorted(TASKS.glob("*.yaml")):
        task = _load(path).task  # (a config with base: may take its task from the base)
        assert task and _load(path, f"task={task}").task == task


def test_base_inheritance_for_a_task_config(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    child = tmp_path / "mine" / "short.yaml"
    child.write_text(
        f"base: {Path('..') / RETRIEVAL.relative_to(ROOT)}\n"  # relative to this file
        "run_dir: runs/short\n"
        "options: {k_test: 4}\n"
        "train: {steps: 10}\n"
    )
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    base = _load(RETRIEVAL)
    cfg = _load(child)
    assert cfg.run_dir == "runs/short" and cfg.train.steps == 10
    expected = {"k_test": 4, "itm_batch_size": 512, "itm_uniform_mix": 0.5}
    assert cfg.options == expected  # merged key by key
    assert cfg.train.batch_size == base.train.batch_size and cfg.model == base.model
    child.write_text(child.read_text() + "train: {steps: 0}\n")
    with pytest.raises(ConfigError, match=r"short\.yaml: invalid value for 'train\.steps'"):
        _load(child)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.steps=0", "'train.steps': expected int >= 1, got 0 (int)"),
        ("train.batch_size=0", "'train.batch_size': expected int >= 1, got 0 (int)"),
        ("train.log_every=0", "'train.log_every': expected int >= 1, got 0 (int)"),
        ("train.eval_every=-1", "'train.eval_every': expected int >= 0, got -1 (int)"),
        ("train.checkpoint_every=-1", "'train.checkpoint_every': expected int >= 0, got -1"),
        ("optim.warmup_steps=-1", "'optim.warmup_steps': expected int >= 0, got -1 (int)"),
        ("data.num_workers=-1", "'data.num_workers': expected int >= 0, got -1 (int)"),
        ("model.stop_gradient=maybe", "'model.stop_gradient': expected bool, got 'maybe'"),
    ],
)
def test_bounds_and_types(override: str, expected: str) -> None:
    msg = _error(RETRIEVAL, override)
    assert msg.startswith(f"{OVERRIDE} {override!r}: invalid value for ") and expected in msg


def test_model_and_synth_sections_name_the_key_and_the_closest_match() -> None:
    msg = _error(RETRIEVAL, "model.stop_gradiant=false")
    assert "unknown key 'model.stop_gradiant'" in msg and "Did you mean 'stop_gradient'?" in msg
    msg = _error(RETRIEVAL, "model.vision.patch_sise=8")
    assert "unknown key 'model.vision.patch_sise'. Valid keys at 'model.vision': " in msg
    assert "Did you mean 'patch_size'?" in msg
    msg = _error(RETRIEVAL, "data.synth.num_trian=3")
    assert "unknown key 'data.synth.num_trian'" in msg and "Did you mean 'num_train'?" in msg
    # a task model's own section (the VQA answer decoder) is checked against its class
    vqa = TASKS / "vqa_synth.yaml"
    assert _load(vqa, "task=vqa").model["decoder"] == {"dropout": 0.0, "attn_dropout": 0.0}
    msg = _error(vqa, "task=vqa", "model.decoder.layres=2")
    assert "unknown key 'model.decoder.layres'" in msg and "Did you mean 'layers'?" in msg


def test_task_name_and_options() -> None:
    msg = _error(RETRIEVAL, "task=retrival")
    assert msg.startswith(f"{OVERRIDE} 'task=retrival': invalid value for 'task': ")
    assert "Did you mean 'retrieval'?" in msg
    msg = _error(RETRIEVAL, "options.k_tset=3")
    assert msg.startswith(f"{OVERRIDE} 'options.k_tset=3': unknown option 'options.k_tset'.")
    assert "Valid options at 'options': itc_weight, itm_batch_size, " in msg
    assert "Did you mean 'k_test'?" in msg
    # a retrieval config run as another task says which task it is for
    msg = _error(RETRIEVAL, "task=vqa")
    assert msg.startswith(
        f"{RETRIEVAL}: invalid value for 'options': this config is for task 'retrieval' "
        f"(its 'task' key), not 'vqa': task 'vqa' has no option 'itm_batch_size'"
    )
    msg = _error(TASKS / "vqa_synth.yaml", "task=nlvr")
    assert "this config is for task 'vqa' (its 'task' key), not 'nlvr'" in msg


def test_finetune_cli_says_which_task_a_config_is_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "vqa", "--config", str(RETRIEVAL)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this config is for task 'retrieval'" in err[0]
    assert main(["finetune", "retrieval", "--config", str(RETRIEVAL), "train.steps=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: command line override 'train.steps=0': invalid value for 'train.steps': "
        "expected int >= 1, got 0 (int)"
    ]


@dataclass
class ToyOptions:
    margin: Annotated[float, Field(ge=0)] = 0.2
    hard_negatives: bool = True


class ToyTask(Task):
    name = "toy_typed_options"
    default_options: ClassVar[dict[str, Any]] = {"margin": 0.2, "hard_negatives": True}
    options_class: ClassVar[type | None] = ToyOptions


def test_a_task_that_declares_an_options_class_gets_typed_options() -> None:
    from xfm.core.registry import get_registry

    registry = get_registry("task")
    registry.register(ToyTask.name, ToyTask)
    try:
        base = {"task": ToyTask.name, "options": {"margin": "5e-1"}}
        assert load_config(FinetuneConfig, base).options == {"margin": 0.5}  # converted
        with pytest.raises(ConfigError) as info:
            load_config(FinetuneConfig, base, ["options.hard_negatives=maybe"])
        assert "'options.hard_negatives': expected bool, got 'maybe' (str)" in str(info.value)
        with pytest.raises(ConfigError, match=r"'options.margin': expected float >= 0"):
            load_config(FinetuneConfig, base, ["options.margin=-1"])
        with pytest.raises(ConfigError, match=r"unknown option 'options.margni'.*'margin'"):
            load_config(FinetuneConfig, base, ["options.margni=1"])
    finally:
        registry.unregister(ToyTask.name)

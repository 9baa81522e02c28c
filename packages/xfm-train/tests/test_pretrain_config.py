"""The pretraining config is checked entirely at load time: the free-form sections against the
classes that consume them, the encoder specs against each encoder's config class, the source
names, and the bounds of counts and intervals (one ``error:`` line, exit 2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from xfm.core.cli import main
from xfm.core.config import ConfigError
from xfm.train.config import load_pretrain_config

ROOT = Path(__file__).resolve().parents[3]
TINY = str(ROOT / "configs" / "pretrain" / "tiny.yaml")
OVERRIDE = "command line override"


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_pretrain_config(TINY, overrides)
    return str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.accumulate=0", "'optim.accumulate': expected int >= 1, got 0 (int)"),
        ("steps=0", "'steps': expected int >= 1, got 0 (int)"),
        ("steps=-5", "'steps': expected int >= 1, got -5 (int)"),
        ("optim.warmup_steps=-2", "'optim.warmup_steps': expected int >= 0, got -2 (int)"),
        ("checkpoint.every=-1", "'checkpoint.every': expected int >= 0, got -1 (int)"),
        ("checkpoint.keep=-1", "'checkpoint.keep': expected int >= 0, got -1 (int)"),
        ("eval.every=-100", "'eval.every': expected int >= 0, got -100 (int)"),
        ("log.every=0", "'log.every': expected int >= 1, got 0 (int)"),
        ("data.sources.text.batch_size=0", "'data.sources.text.batch_size': expected int >= 1"),
    ],
)
def test_invariants(override: str, expected: str) -> None:
    msg = _error(override)
    assert msg.startswith(f"{OVERRIDE} {override!r}: invalid value for ")
    assert expected in msg


def test_unknown_source_names_the_valid_ones_and_the_closest() -> None:
    msg = _error("data.sources.imagetext.url=x")
    assert msg.startswith(
        f"{OVERRIDE} 'data.sources.imagetext.url=x': unknown source 'data.sources.imagetext'. "
        f"Valid sources at 'data.sources': image, image_text, region, text. Did you mean "
        f"'image_text'"
    )
    assert "Valid sources" in _error("data.sources.video.url=x")


def test_source_names_come_from_the_data_source_registry() -> None:
    """A source registered in-process is accepted by name; the built-in four are there."""
    from xfm.core.registry import get_registry
    from xfm.train.data.schemas import SCHEMAS
    from xfm.train.data.sources import IMAGE, DataSource, source_names

    assert {"text", "image_text", "region", "image"} <= set(source_names())
    assert "cfg_probe" not in source_names()
    assert "Valid sources" in _error("data.sources.cfg_probe.url=x")
    schema = dataclasses.replace(SCHEMAS["image"], source="cfg_probe")
    probe = dataclasses.replace(IMAGE, name="cfg_probe", schema=schema, objectives={"mim": 1.0})
    assert isinstance(probe, DataSource)
    reg = get_registry("data_source")
    reg.register("cfg_probe", probe)
    try:
        cfg = load_pretrain_config(TINY, ["data.sources.cfg_probe.url=x"])
        assert cfg.data.sources["cfg_probe"].url == "x"
    finally:
        reg.unregister("cfg_probe")


def test_model_name_is_checked_against_the_model_registry() -> None:
    msg = _error("model.name=xfmm")
    assert msg.startswith(f"{OVERRIDE} 'model.name=xfmm': invalid value for 'model.name': ")
    assert "Unknown model 'xfmm'. Did you mean 'xfm'?" in msg
    assert "Available model components: 'xfm'" in msg
    cfg = load_pretrain_config(TINY, ["model.name=xfm"])
    assert cfg.model["name"] == "xfm" and cfg.model["embed_dim"] == 64


def test_model_section_keys_and_values_are_checked() -> None:
    msg = _error("model.stop_gradiant=false")
    assert msg.startswith(f"{OVERRIDE} 'model.stop_gradiant=false': unknown key ")
    assert "'model.stop_gradiant'. Valid keys at 'model': embed_dim, fusion, " in msg
    assert msg.endswith("Did you mean 'stop_gradient'?")
    assert _error("model.stop_gradient=maybe") == (
        f"{OVERRIDE} 'model.stop_gradient=maybe': invalid value for 'model.stop_gradient': "
        f"expected bool, got 'maybe' (str) (write true or false)"
    )
    assert "'model.embed_dim': expected int, got 1.5 (float)" in _error("model.embed_dim=1.5")


def test_encoder_specs_are_checked_against_each_encoders_config_class() -> None:
    msg = _error("model.text.widht=3")
    assert "unknown key 'model.text.widht'. Valid keys at 'model.text': act, " in msg
    assert "Did you mean 'width'?" in msg
    msg = _error("model.vision.mlp_ratio=big")
    assert "'model.vision.mlp_ratio': expected float, got 'big' (str)" in msg
    msg = _error("model.vision.qkv_bias=kv")
    assert "'model.vision.qkv_bias': expected one of 'qkv', 'qv', 'none', got 'kv'" in msg
    assert "Valid keys at 'model.fusion': " in _error("model.fusion.vision_widht=3")
    msg = _error("model.text.name=robreta")
    assert "invalid value for 'model.text.name': Unknown text_encoder 'robreta'." in msg
    assert "Did you mean 'roberta'?" in msg
    # values are converted; the defaults of absent keys are left to the model builder
    cfg = load_pretrain_config(TINY, ["model.text.layer_norm_eps=1e-6"])
    assert cfg.model["text"]["layer_norm_eps"] == 1e-6
    assert "vocab_size" not in cfg.model["text"]


def test_process_and_loader_sections_are_their_classes() -> None:
    msg = _error("data.process.image_sise=32")
    assert "unknown key 'data.process.image_sise'. Valid keys at 'data.process': " in msg
    assert "Did you mean 'image_size'?" in msg
    assert "tokenizer" not in msg.split("Valid keys")[1]  # set by data.tokenizer
    assert "'data.process.mim_ratio': expected float, got 'x'" in _error("data.process.mim_ratio=x")
    # the class's own checks run at load time too
    assert "is not a multiple of patch_size 7" in _error("data.process.patch_size=7")
    assert "'data.loader.num_workers': expected int, got 'two'" in _error(
        "data.loader.num_workers=two"
    )
    assert "num_workers must be >= 0" in _error("data.loader.num_workers=-1")
    assert "Did you mean 'num_workers'?" in _error("data.loader.num_worker=1")


def test_base_inheritance_of_the_ablation_configs() -> None:
    tiny = load_pretrain_config(TINY)
    ablation = load_pretrain_config(str(ROOT / "configs" / "pretrain" / "ablation_neither.yaml"))
    assert ablation.model["stop_gradient"] is False and ablation.model["vision_guidance"] is False
    assert ablation.model["text"] == tiny.model["text"] and ablation.data == tiny.data


def test_cli_reports_one_error_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for override in ("model.stop_gradiant=false", "optim.accumulate=0", "data.sources.video.url=x"):
        assert main(["pretrain", "--config", TINY, override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {OVERRIDE} {override!r}: "), err


def test_the_trainer_creates_the_model_the_config_names(tmp_path: Path) -> None:
    """``model.name`` picks the ``model`` registry entry; the other keys are its options."""
    from xfm.core.registry import get_registry
    from xfm.fusion.model import XFM
    from xfm.train.trainer import Trainer

    built: list[dict] = []

    class ProbeModel(XFM):
        def __init__(self, **options) -> None:
            built.append(options)
            super().__init__(**options)

    reg = get_registry("model")
    reg.register("probe_model", ProbeModel)
    try:
        cfg = load_pretrain_config(
            TINY, ["model.name=probe_model", "model.embed_dim=8", f"run_dir={tmp_path}"]
        )
        trainer = Trainer(cfg, print_fn=lambda _: None)
        trainer.model_spec = trainer._model_config(None)
        model = trainer._create_model()
    finally:
        reg.unregister("probe_model")
    assert type(model) is ProbeModel and model.config.embed_dim == 8
    assert "name" not in built[0] and built[0]["vision"]["name"] == "beit_v2"
    assert built[0]["vision"]["image_size"] == 48  # filled in from data.process

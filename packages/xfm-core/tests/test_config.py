"""Dataclass configs from YAML, dicts and command-line overrides, with precise errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from xfm.core.config import (
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
    save_config,
    to_dict,
)


class Precision(enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"


@dataclass
class Optim:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 2500


@dataclass
class Source:
    path: str
    weight: float = 1.0


@dataclass
class Train:
    steps: int
    optim: Optim = field(default_factory=Optim)
    model: dict[str, Any] = field(default_factory=lambda: {"text": {"name": "roberta"}})
    objectives: list[Literal["itc", "itm", "mlm", "mim"]] = field(default_factory=lambda: ["itc"])
    sources: dict[str, Source] = field(default_factory=dict)
    precision: Precision = Precision.BF16
    resume: str | None = None
    image_sizes: tuple[int, ...] = (224,)
    ema: Optim | None = None
    seed: int | str = 0


YAML = """\
steps: 100
optim:
  lr: 3e-4          # YAML 1.1 reads this as the STRING "3e-4"
  betas: [0.9, 0.98]
model:
  text: {name: roberta, layers: 2, width: 64}
  vision: {name: beit_v2, layers: 2}
objectives: [itc, itm]
sources:
  coco: {path: s3://bucket/coco, weight: 2}
precision: fp32
image_sizes: [224, 384]
"""


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(YAML)
    return path


def test_nested_dataclass_from_yaml(cfg_file: Path) -> None:
    assert yaml.safe_load(YAML)["optim"]["lr"] == "3e-4"  # the trap this loader handles
    cfg = load_config(Train, cfg_file)
    assert cfg == Train(
        steps=100,
        optim=Optim(lr=3e-4, betas=(0.9, 0.98)),
        model={
            "text": {"name": "roberta", "layers": 2, "width": 64},
            "vision": {"name": "beit_v2", "layers": 2},
        },
        objectives=["itc", "itm"],
        sources={"coco": Source(path="s3://bucket/coco", weight=2.0)},
        precision=Precision.FP32,
        image_sizes=(224, 384),
    )
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.sources["coco"].weight, float)
    assert isinstance(cfg.optim.betas, tuple) and isinstance(cfg.image_sizes, tuple)


def test_defaults_and_dict_sources() -> None:
    cfg = load_config(Train, {"steps": 5})
    assert cfg == Train(steps=5)
    assert config_from_dict(Train, {"steps": 5}) == cfg
    assert load_config(Optim) == Optim()  # None: all defaults


def test_overrides(cfg_file: Path) -> None:
    cfg = load_config(
        Train,
        cfg_file,
        [
            "optim.lr=1e-3",
            "optim.warmup_steps=10",
            "model.text.layers=4",  # update inside a free-form dict
            "model.fusion={name: cross_attention, layers: 1}",  # create a new entry
            "model.vision.extra.depth=3",  # create nested dicts
            "objectives=[mlm]",
            "objectives.0=mim",  # index into a list
            "sources.coco.weight=0.5",
            "sources.cc3m={path: /data/cc3m}",
            "resume=null",
            "ema.lr=2",  # None in the file: start from the dataclass defaults
            "precision=BF16",  # an enum by name
            "seed=abc",
        ],
    )
    assert cfg.optim == Optim(lr=1e-3, betas=(0.9, 0.98), warmup_steps=10)
    assert cfg.model["text"] == {"name": "roberta", "layers": 4, "width": 64}
    assert cfg.model["fusion"] == {"name": "cross_attention", "layers": 1}
    assert cfg.model["vision"] == {"name": "beit_v2", "layers": 2, "extra": {"depth": 3}}
    assert cfg.objectives == ["mim"]
    assert cfg.sources == {"coco": Source("s3://bucket/coco", 0.5), "cc3m": Source("/data/cc3m")}
    assert cfg.resume is None
    assert cfg.ema == Optim(lr=2.0)
    assert cfg.precision is Precision.BF16
    assert cfg.seed == "abc"
    # the defaults of a field that the file does not mention are kept when overriding inside it
    assert load_config(Train, {"steps": 1}, ["model.text.layers=2"]).model == {
        "text": {"name": "roberta", "layers": 2}
    }
    # required keys may come from overrides only
    assert load_config(Train, None, ["steps=7"]).steps == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x=3", 3),
        ("x=1e-4", "1e-4"),
        ("x=[1,2]", [1, 2]),
        ("x=null", None),
        ("x=true", True),
        ("x=", ""),
        ("x=a=b", "a=b"),
    ],
)
def test_parse_override_values(text: str, expected: Any) -> None:
    assert parse_override(text) == ("x", expected)


@pytest.mark.parametrize("text", ["steps", "=3", "a..b=1", "x=[1,"])
def test_malformed_override(text: str) -> None:
    with pytest.raises(ConfigError, match="command line override"):
        load_config(Train, {"steps": 1}, [text])


def test_unknown_key_in_file_names_key_file_valid_keys_and_close_match(cfg_file: Path) -> None:
    cfg_file.write_text(YAML.replace("  betas:", "  betass:"))
    with pytest.raises(ConfigError) as info:
        load_config(Train, cfg_file)
    msg = str(info.value)
    assert str(cfg_file) in msg
    assert "unknown key 'optim.betass'" in msg
    assert "Valid keys at 'optim': betas, lr, warmup_steps, weight_decay." in msg
    assert "Did you mean 'betas'?" in msg
    assert info.value.key == "optim.betass" and info.value.source == str(cfg_file)


def test_unknown_key_at_top_level_and_in_dict_of_dataclasses(cfg_file: Path) -> None:
    cfg_file.write_text(YAML + "stepz: 3\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'stepz'\. Valid keys at the top level: .*steps.*Did you mean 'steps'",
    ):
        load_config(Train, cfg_file)
    cfg_file.write_text(YAML.replace("weight: 2", "wieght: 2"))
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'sources\.coco\.wieght'.*Valid keys at 'sources\.coco': path, weight",
    ):
        load_config(Train, cfg_file)


def test_unknown_key_in_override_names_the_override(cfg_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Train, cfg_file, ["optim.lrr=0.1"])
    msg = str(info.value)
    assert "command line override 'optim.lrr=0.1'" in msg
    assert "unknown key 'optim.lrr'" in msg and "Did you mean 'lr'?" in msg
    assert str(cfg_file) not in msg
    with pytest.raises(ConfigError, match=r"'precision' holds a single value"):
        load_config(Train, cfg_file, ["precision.x=1"])


def test_override_below_a_single_value_or_past_a_list_end_names_what_is_there(
    cfg_file: Path,
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Train, cfg_file, ["objectives.5=itc"])
    assert str(info.value) == (
        "command line override 'objectives.5=itc': 'objectives' is a list of 2 item(s); cannot "
        "set 'objectives.5' (use objectives=[...] to replace the list)"
    )
    assert info.value.key == "objectives.5"
    with pytest.raises(
        ConfigError,
        match=r"^command line override 'optim\.lr\.x=1': cannot set 'optim\.lr\.x': "
        r"'optim\.lr' holds a single value \('3e-4' \(str\)\), not a section with keys$",
    ):
        load_config(Train, cfg_file, ["optim.lr.x=1"])
    # a list field absent from the data starts from its default
    assert load_config(Train, {"steps": 1}, ["objectives.0=mlm"]).objectives == ["mlm"]
    with pytest.raises(
        ConfigError,
        match=r"'optim\.betas': expected tuple\[float, float\], got \[1\] \(list\): expected 2 "
        r"items, got 1$",
    ):
        load_config(Train, {"steps": 1}, ["optim.betas=[1]"])


def test_wrong_type_names_key_expected_received_and_file(cfg_file: Path) -> None:
    cfg_file.write_text(YAML.replace("steps: 100", "steps: many"))
    with pytest.raises(ConfigError) as info:
        load_config(Train, cfg_file)
    msg = str(info.value)
    assert msg == f"{cfg_file}: invalid value for 'steps': expected int, got 'many' (str)"
    cfg_file.write_text(YAML.replace("  betas: [0.9, 0.98]", "  betas: [0.9, high]"))
    with pytest.raises(
        ConfigError,
        match=r"tiny\.yaml: invalid value for 'optim\.betas\.1': expected float, got 'high' \(str\)",
    ):
        load_config(Train, cfg_file)
    with pytest.raises(
        ConfigError,
        match=r"override 'optim\.warmup_steps=true'.*'optim\.warmup_steps': expected int, got True \(bool\)",
    ):
        load_config(Train, {"steps": 1}, ["optim.warmup_steps=true"])
    with pytest.raises(
        ConfigError, match=r"'model': expected dict\[str, Any\], got \[1, 2\] \(list\)"
    ):
        load_config(Train, {"steps": 1, "model": [1, 2]})
    with pytest.raises(ConfigError, match=r"'resume': expected str, got 3 \(int\).*quote"):
        load_config(Train, {"steps": 1, "resume": 3})
    with pytest.raises(
        ConfigError, match=r"'optim.betas': expected tuple\[float, float\].*expected 2 items, got 3"
    ):
        load_config(Train, {"steps": 1}, ["optim.betas=[1, 2, 3]"])


def test_float_and_int_conversions() -> None:
    cfg = load_config(
        Train, {"steps": "1e3", "optim": {"lr": "1e-4", "weight_decay": 0, "warmup_steps": 1e2}}
    )
    assert cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 0.0
    assert isinstance(cfg.optim.weight_decay, float) and cfg.optim.warmup_steps == 100
    with pytest.raises(ConfigError, match=r"expected int, got 1\.5"):
        load_config(Train, {"steps": 1.5})
    with pytest.raises(ConfigError, match=r"'optim.lr': expected float, got True \(bool\)"):
        load_config(Train, {"steps": 1, "optim": {"lr": True}})
    with pytest.raises(ConfigError, match=r"'optim.lr': expected float, got '1e-4x'"):
        load_config(Train, {"steps": 1, "optim": {"lr": "1e-4x"}})


def test_literal_and_enum_violations(cfg_file: Path) -> None:
    cfg_file.write_text(YAML.replace("objectives: [itc, itm]", "objectives: [itc, bbox]"))
    with pytest.raises(ConfigError) as info:
        load_config(Train, cfg_file)
    assert str(info.value) == (
        f"{cfg_file}: invalid value for 'objectives.1': expected one of 'itc', 'itm', 'mlm', "
        f"'mim', got 'bbox' (str)"
    )
    with pytest.raises(
        ConfigError, match=r"'precision': expected Precision \(one of 'fp32', 'bf16'\), got 'fp16'"
    ):
        load_config(Train, {"steps": 1}, ["precision=fp16"])


def test_missing_required_key(cfg_file: Path) -> None:
    cfg_file.write_text(YAML.replace("steps: 100\n", ""))
    with pytest.raises(
        ConfigError, match=r"tiny\.yaml: missing required key 'steps' \(expected int\)"
    ):
        load_config(Train, cfg_file)
    with pytest.raises(
        ConfigError, match=r"<dict>: missing required key 'sources\.x\.path' \(expected str\)"
    ):
        load_config(Train, {"steps": 1, "sources": {"x": {"weight": 1}}})


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(Train, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_config(Train, tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(
        ConfigError, match=r"list\.yaml: expected a mapping of config keys at the top level"
    ):
        load_config(Train, tmp_path / "list.yaml")
    with pytest.raises(TypeError, match="sequence of 'key=value'"):
        load_config(Train, None, "steps=1")  # type: ignore[arg-type]


def test_save_and_load_round_trip(cfg_file: Path, tmp_path: Path) -> None:
    cfg = load_config(Train, cfg_file, ["ema.lr=5e-5", "resume=/ckpt/last.safetensors"])
    out = tmp_path / "run" / "config.yaml"
    save_config(cfg, out)
    assert load_config(Train, out) == cfg
    data = yaml.safe_load(out.read_text())
    assert data == to_dict(cfg)
    assert data["precision"] == "fp32" and data["optim"]["betas"] == [0.9, 0.98]
    assert isinstance(data["optim"]["lr"], float)


def test_memory_url_config() -> None:
    cfg = Train(steps=3, optim=Optim(lr=2e-5))
    save_config(cfg, "memory://xfm-config-test/cfg.yaml")
    assert load_config(Train, "memory://xfm-config-test/cfg.yaml") == cfg


@dataclass
class Positive:
    n: int = 1

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"n must be > 0, got {self.n}")


@dataclass
class Outer:
    inner: Positive = field(default_factory=Positive)


def test_post_init_validation_is_reported_with_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"<dict>: invalid 'inner' \(Positive\): n must be > 0, got -1"
    ):
        config_from_dict(Outer, {"inner": {"n": -1}})


# --------------------------------------------------------------------------- base: inheritance


def test_base_inheritance_merges_resolves_relative_paths_and_names_the_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "root.yaml").write_text(
        "steps: 10\noptim: {lr: 1e-3, warmup_steps: 5}\nmodel: {text: {name: bert, layers: 2}}\n"
    )
    (tmp_path / "shared" / "mid.yaml").write_text(
        "base: root.yaml\noptim: {warmup_steps: 7}\nobjectives: [itm]\n"
    )
    (tmp_path / "child.yaml").write_text(
        "base: shared/mid.yaml\nmodel: {text: {layers: 4}}\nprecision: fp32\n"
    )
    cfg = load_config(Train, tmp_path / "child.yaml", ["steps=3"])
    assert cfg == Train(
        steps=3,
        optim=Optim(lr=1e-3, warmup_steps=7),
        model={"text": {"name": "bert", "layers": 4}},  # mappings merge key by key
        objectives=["itm"],  # other values replace
        precision=Precision.FP32,
    )
    # an error names the file of the chain the value came from
    (tmp_path / "shared" / "root.yaml").write_text("steps: 10\noptim: {lr: fast}\n")
    with pytest.raises(ConfigError) as info:
        load_config(Train, tmp_path / "child.yaml")
    assert str(info.value) == (
        f"{tmp_path / 'shared' / 'root.yaml'}: invalid value for 'optim.lr': expected float, "
        f"got 'fast' (str)"
    )
    (tmp_path / "shared" / "root.yaml").write_text("steps: 10\n")
    (tmp_path / "child.yaml").write_text("base: shared/mid.yaml\nprecision: fp8\n")
    with pytest.raises(ConfigError, match=r"^.*child\.yaml: invalid value for 'precision'"):
        load_config(Train, tmp_path / "child.yaml")


def test_base_cycles_missing_files_and_bad_values_are_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\nsteps: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"'base' files form a cycle: .*a\.yaml -> .*b\.yaml"):
        load_config(Train, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Train, tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: nowhere.yaml\nsteps: 1\n")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml.*the base of .*d\.yaml"):
        load_config(Train, tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("base: [a.yaml]\nsteps: 1\n")
    with pytest.raises(ConfigError, match=r"e\.yaml: invalid value for 'base'"):
        load_config(Train, tmp_path / "e.yaml")


def test_base_relative_to_a_url() -> None:
    save_config(Train(steps=4, optim=Optim(lr=5e-5)), "memory://xfm-base-test/dir/base.yaml")
    from xfm.core.checkpoint.atomic import atomic_write

    with atomic_write("memory://xfm-base-test/dir/child.yaml", "w") as f:
        f.write("base: base.yaml\noptim: {warmup_steps: 3}\n")
    cfg = load_config(Train, "memory://xfm-base-test/dir/child.yaml")
    assert cfg.steps == 4 and cfg.optim == Optim(lr=5e-5, warmup_steps=3)


# --------------------------------------------------------------------------- constraints, sections

from typing import Annotated  # noqa: E402

from pydantic import AfterValidator, Field  # noqa: E402

from xfm.core.config import UnknownKeyError, validate_section  # noqa: E402


@dataclass
class Encoder:
    width: int = 8
    dropout: float = 0.1
    act: Literal["gelu", "relu"] = "gelu"

    def __post_init__(self) -> None:
        if self.width % 2:
            raise ValueError(f"width must be even, got {self.width}")


def _check_model(model: dict[str, Any]) -> dict[str, Any]:
    for key, spec in model.items():
        if key not in ("text", "vision"):
            raise UnknownKeyError(key, ["text", "vision"], what="encoder")
        model[key] = validate_section(Encoder, spec, prefix=key, complete=True)
    return model


@dataclass
class Bounded:
    steps: Annotated[int, Field(ge=1)] = 1
    every: Annotated[int, Field(ge=0)] = 0
    ratio: Annotated[float, Field(ge=0, le=1)] = 0.5
    model: Annotated[dict[str, Any], AfterValidator(_check_model)] = field(default_factory=dict)


def test_field_constraints_say_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("steps: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(Bounded, path)
    assert str(info.value) == f"{path}: invalid value for 'steps': expected int >= 1, got 0 (int)"
    assert info.value.key == "steps"
    with pytest.raises(ConfigError, match=r"'every': expected int >= 0, got -3 \(int\)"):
        load_config(Bounded, None, ["every=-3"])
    with pytest.raises(ConfigError, match=r"'ratio': expected float <= 1\.0, got 1\.5 \(float\)"):
        load_config(Bounded, {"ratio": 1.5})
    with pytest.raises(ConfigError, match=r"'steps': expected int, got True \(bool\)"):
        load_config(Bounded, {"steps": True})  # the type is checked before the bound
    assert load_config(Bounded, {"steps": "1e2", "ratio": "1e-1"}) == Bounded(steps=100, ratio=0.1)


def test_free_dict_checked_by_a_validator_reports_the_full_key_and_source(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("model: {text: {width: 4, dropout: '1e-1'}}\n")
    cfg = load_config(Bounded, path)
    assert cfg.model == {"text": {"width": 4, "dropout": 0.1}}  # converted, defaults not added
    with pytest.raises(ConfigError) as info:
        load_config(Bounded, path, ["model.text.widht=2"])
    msg = str(info.value)
    assert msg.startswith("command line override 'model.text.widht=2': unknown key ")
    assert "'model.text.widht'. Valid keys at 'model.text': act, dropout, width." in msg
    assert "Did you mean 'width'?" in msg and info.value.key == "model.text.widht"
    with pytest.raises(ConfigError) as info:
        load_config(Bounded, path, ["model.text.act=tanh"])
    assert str(info.value) == (
        "command line override 'model.text.act=tanh': invalid value for 'model.text.act': "
        "expected one of 'gelu', 'relu', got 'tanh' (str)"
    )
    with pytest.raises(ConfigError, match=r"^.*m\.yaml: invalid value for 'model': width must be"):
        path.write_text("model: {text: {width: 3}}\n")
        load_config(Bounded, path)
    # a validator's own UnknownKeyError: the full key, the valid names, the closest match;
    # the source is the override that created the key (not the file)
    with pytest.raises(ConfigError) as info:
        load_config(Bounded, {"model": {}}, ["model.vison.width=2"])
    assert str(info.value) == (
        "command line override 'model.vison.width=2': unknown encoder 'model.vison'. Valid "
        "encoders at 'model': text, vision. Did you mean 'vision'?"
    )

"""The ``xfm pretrain`` configuration (YAML -> dataclasses via :func:`xfm.core.config`).

Data URLs may contain ``{synth}``, replaced by ``data.synth.out`` (the synthetic dataset, built
on first use when ``data.synth.create`` is true). A YAML file may start from another one with
``base: other.yaml`` (path relative to the file); its keys are merged over the base's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

__all__ = [
    "CheckpointSection",
    "DataSection",
    "EvalSection",
    "LogSection",
    "OptimSection",
    "PretrainConfig",
    "SourceSection",
    "SynthSection",
    "default_objectives",
    "load_pretrain_config",
]

#: Objectives (name -> weight) of each source in the official recipe (SPEC section 2).
DEFAULT_OBJECTIVES: dict[str, dict[str, float]] = {
    "text": {"text_mlm": 1.0},
    "image_text": {"itc": 1.0, "itm": 1.0, "fusion_mlm": 1.0, "mim": 1.0},
    "region": {"itc": 1.0, "itm": 1.0, "fusion_mlm": 1.0, "bbox": 1.0},
    "image": {"mim": 1.0},
}


def default_objectives(source: str) -> dict[str, float]:
    """A copy of the official objectives of ``source``."""
    return dict(DEFAULT_OBJECTIVES.get(source, {}))


@dataclass
class SourceSection:
    """One data source of the step.

    Attributes:
        url: MDS shards (folder, ``s3://``, ``gs://``; ``{synth}`` expands).
        batch_size: per-rank batch size.
        weight: multiplies every loss of this source.
        enabled: include the source in each step.
        objectives: objective name -> weight (empty: the official set of the source).
        options: objective name -> constructor options (e.g. ``{itc: {id_aware: false}}``).
    """

    url: str = ""
    batch_size: int = 32
    weight: float = 1.0
    enabled: bool = True
    objectives: dict[str, float] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SynthSection:
    """The synthetic shapes-world dataset (see :class:`xfm.train.data.synth.SynthConfig`)."""

    out: str = "data/synth"
    create: bool = True
    seed: int = 0
    image_size: int = 64
    num_train: int = 2000
    num_test: int = 200
    captions_per_image: int = 2
    num_text: int = 4000
    vocab_size: int = 1000


@dataclass
class DataSection:
    """Data: sources, tokenizer, processing and loader settings.

    Attributes:
        synth: build/use the synthetic dataset (``None``: real data only).
        tokenizer: tokenizer folder (default ``{synth}/tokenizer``).
        sources: ``text``, ``image_text``, ``region``, ``image``.
        eval_url: held-out image-text MDS for zero-shot retrieval (``""``: none).
        process: :class:`xfm.train.data.ProcessConfig` fields.
        loader: :class:`xfm.train.data.LoaderConfig` fields (``seed`` defaults to the run's).
    """

    synth: SynthSection | None = None
    tokenizer: str = "{synth}/tokenizer"
    sources: dict[str, SourceSection] = field(default_factory=dict)
    eval_url: str = ""
    process: dict[str, Any] = field(default_factory=dict)
    loader: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimSection:
    """AdamW + linear warm-up / linear decay (SPEC section 5).

    Attributes:
        lr: peak learning rate.
        weight_decay: applied to every parameter except those matching ``no_decay``.
        betas, eps: AdamW.
        new_param_lr_mult: lr multiplier of the newly initialised parameters ...
        new_params: ... whose names match one of these regular expressions.
        no_decay: regular expressions of parameters without weight decay (biases, norms...).
        warmup_steps: linear warm-up from 0 to ``lr``.
        min_lr_ratio: the linear decay ends at ``lr * min_lr_ratio`` at the last step.
        grad_clip: max global gradient norm (0: off).
        accumulate: micro-batches per optimizer step.
        fused: fused AdamW kernel (``None``: when the device supports it, else foreach).
    """

    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    new_param_lr_mult: float = 2.0
    new_params: list[str] = field(
        default_factory=lambda: [
            r"^(vision_proj|text_proj|itm_head|bbox_head|fusion_mlm_head)\.",
            r"^temp$",
        ]
    )
    no_decay: list[str] = field(default_factory=lambda: [r"\.bias$", r"norm", r"^temp$", r"_bias$"])
    warmup_steps: int = 2500
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    accumulate: int = 1
    fused: bool | None = None


@dataclass
class CheckpointSection:
    """Checkpoints: ``url`` (default ``<run_dir>/checkpoints``; local, ``s3://``, ``gs://``).

    Attributes:
        every: save every this many optimizer steps (0: only at the end).
        keep: keep the newest this many step checkpoints (0: all).
        export_safetensors: also write ``model.safetensors`` (weights for inference).
    """

    url: str = ""
    every: int = 500
    keep: int = 2
    export_safetensors: bool = True


@dataclass
class EvalSection:
    """Zero-shot retrieval on ``data.eval_url``: every ``every`` steps (0: never) and at the end.

    Attributes:
        max_pairs: evaluate at most this many held-out pairs (0: all).
        batch_size: encoding batch size.
    """

    every: int = 0
    at_end: bool = True
    max_pairs: int = 0
    batch_size: int = 64


@dataclass
class LogSection:
    """Observability: CSV + TensorBoard per-loss metrics, progress bar, loss-curve PNG."""

    every: int = 1
    tensorboard: bool = True
    progress: bool = True
    plot: bool = True


@dataclass
class PretrainConfig:
    """Everything ``xfm pretrain`` needs.

    Attributes:
        run_dir: local folder for logs, metrics, plots (and checkpoints by default).
        seed: model init, dropout, hard negatives, data order.
        steps: optimizer steps.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``fp32``, ``bf16`` (autocast, CPU and CUDA) or ``fp16`` (CUDA, scaler).
        threads: ``torch.set_num_threads`` (``None``: leave).
        distributed: ``ddp`` or ``fsdp`` under ``torchrun`` (``auto`` = ddp when
            ``WORLD_SIZE`` > 1).
        compile: ``torch.compile`` the loss module.
        deterministic: ``torch.use_deterministic_algorithms(True)``.
        model: :class:`xfm.fusion.XFMConfig` fields (``text``/``vision``/``fusion`` specs; the
            text ``vocab_size``/``pad_token_id`` default to the tokenizer's, the vision
            ``image_size``/``patch_size`` to ``data.process``).
        init_from: optional weights to start from (``xfm.core.checkpoint.load_state_dict``).
    """

    run_dir: str = "runs/pretrain"
    seed: int = 0
    steps: int = 1000
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    threads: int | None = None
    distributed: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    compile: bool = False
    deterministic: bool = False
    model: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _read_yaml(path: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    from xfm.core.checkpoint.storage import read_bytes
    from xfm.core.config import ConfigError

    if path in chain:
        raise ConfigError(f"{path}: 'base' files form a cycle: {' -> '.join((*chain, path))}")
    try:
        data = yaml.safe_load(read_bytes(path).decode("utf-8")) or {}
    except FileNotFoundError as e:
        raise FileNotFoundError(f"config file {path!r} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}", source=path) from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}", source=path)
    if "://" not in base and not os.path.isabs(base):
        base = os.path.join(os.path.dirname(path), base)
    return _merge(_read_yaml(base, (*chain, path)), data)


def load_pretrain_config(path: str, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a pretraining YAML (following ``base:``), apply ``dotted.key=value`` overrides."""
    from xfm.core.config import config_from_dict

    return config_from_dict(
        PretrainConfig, _read_yaml(str(path)), source=str(path), overrides=overrides
    )

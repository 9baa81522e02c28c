"""The ``xfm pretrain`` configuration (YAML -> dataclasses via :func:`xfm.core.config`).

Data URLs may contain ``{synth}``, replaced by ``data.synth.out`` (the synthetic dataset, built
on first use when ``data.synth.create`` is true). A YAML file may start from another one with
``base: other.yaml`` (path relative to the file); its keys are merged over the base's.

Every section is checked when the file is loaded (exit 2 from the command line, naming the key):
the free-form sections against the classes that consume them (``data.process`` against
:class:`xfm.train.data.ProcessConfig`, ``data.loader`` against
:class:`xfm.train.data.LoaderConfig`, ``model`` against :class:`xfm.fusion.XFMConfig` and each
encoder spec against its registered encoder's config class, see :data:`ModelSpec`), the model
name against the ``model`` registry, source names against the ``data_source`` registry, and
counts and intervals against their bounds.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from xfm.core.config import ConfigError, UnknownKeyError, validate_section

#: ``int >= 1`` (steps, batch sizes, accumulation...).
PositiveInt = Annotated[int, Field(ge=1)]
#: ``int >= 0`` (intervals where 0 means "off", counts).
NonNegativeInt = Annotated[int, Field(ge=0)]
#: ``float >= 0``.
NonNegativeFloat = Annotated[float, Field(ge=0)]

__all__ = [
    "DEFAULT_MODEL",
    "CheckpointSection",
    "DataSection",
    "EvalSection",
    "FusionInitSection",
    "InitSection",
    "LogSection",
    "ModelSpec",
    "NonNegativeFloat",
    "NonNegativeInt",
    "OptimSection",
    "PositiveInt",
    "PretrainConfig",
    "SourceSection",
    "SynthSection",
    "TextInitSection",
    "VisionInitSection",
    "check_model_spec",
    "default_objectives",
    "load_pretrain_config",
]


def default_objectives(source: str) -> dict[str, float]:
    """A copy of the default objectives (name -> weight) of registered data source ``source``
    (for the built-in sources the official recipe, SPEC section 2)."""
    from xfm.train.data.sources import get_source

    return dict(get_source(source).objectives)


#: Encoder spec keys of the model section and the registry kind of each.
ENCODER_KINDS: dict[str, str] = {
    "text": "text_encoder",
    "vision": "vision_encoder",
    "fusion": "fusion_encoder",
}


def _encoder_config_class(component: Any) -> type | None:
    """The config dataclass of a registered encoder: its ``config_class``, else the dataclass
    in the annotation of its ``config`` constructor argument (``None``: not declared)."""
    declared = getattr(component, "config_class", None)
    if dataclasses.is_dataclass(declared):
        return declared
    try:
        hints = typing.get_type_hints(component.__init__)
    except Exception:  # a plugin whose annotations do not resolve: its spec is not checked
        return None
    tp = hints.get("config")
    for arg in (*typing.get_args(tp), tp):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def _check_encoder(key: str, spec: dict[str, Any]) -> dict[str, Any]:
    from xfm.core.registry import RegistryError, get

    name = spec.get("name")
    if name is None:
        raise ConfigError(
            f"the encoder spec needs a registry 'name' (e.g. {{name: ..., width: ...}}); got "
            f"keys {sorted(spec)}",
            key=key,
        )
    if not isinstance(name, str):
        raise ConfigError(f"expected str, got {name!r} ({type(name).__name__})", key=f"{key}.name")
    try:
        component = get(ENCODER_KINDS[key], name)
    except RegistryError as e:
        raise ConfigError(str(e), key=f"{key}.name") from None
    config_class = _encoder_config_class(component)
    if config_class is None:
        return spec
    options = {k: v for k, v in spec.items() if k != "name"}
    return {"name": name, **validate_section(config_class, options, prefix=key)}


#: The ``model`` registry name a model section without ``name`` builds.
DEFAULT_MODEL = "xfm"


def _model_config_class(spec: Mapping[str, Any]) -> tuple[str, type | None]:
    """The model name of ``spec`` (default :data:`DEFAULT_MODEL`) and the config dataclass of
    the registered model (``None``: the model declares none, its options are not checked)."""
    from xfm.core.registry import RegistryError, get

    name = spec.get("name", DEFAULT_MODEL)
    if not isinstance(name, str):
        raise ConfigError(f"expected str, got {name!r} ({type(name).__name__})", key="name")
    try:
        component = get("model", name)
    except RegistryError as e:
        raise ConfigError(str(e), key="name") from None
    return name, _encoder_config_class(component)


def check_model_spec(
    spec: dict[str, Any], sections: Mapping[str, type] | None = None
) -> dict[str, Any]:
    """Check a model section: ``name`` (default ``xfm``) against the ``model`` registry, the
    other keys and types against that model's config class (:class:`xfm.fusion.XFMConfig`
    for ``xfm``), and each encoder spec (``text``/``vision``/``fusion``) against its
    registered encoder's config class (found by ``name``). Values are converted; missing keys
    keep their defaults (filled in later).

    Args:
        spec: the model section.
        sections: further keys a task model accepts, each checked against a dataclass (e.g.
            ``{"decoder": DecoderConfig}``).

    Raises:
        ValueError: reported by :func:`xfm.core.config.load_config` under the model's key.
    """
    sections = dict(sections or {})
    _, config_class = _model_config_class(spec)
    options = {k: v for k, v in spec.items() if k not in sections and k != "name"}
    values = validate_section(config_class, options) if config_class is not None else options
    for key in ENCODER_KINDS:
        if key in values and isinstance(values[key], Mapping):
            values[key] = _check_encoder(key, dict(values[key]))
    for key, section_class in sections.items():
        if key in spec:
            if not isinstance(spec[key], Mapping):
                raise ConfigError(
                    f"expected a mapping of {section_class.__name__} fields, got {spec[key]!r}",
                    key=key,
                )
            values[key] = validate_section(section_class, spec[key], prefix=key)
    if "name" in spec:
        values["name"] = spec["name"]
    return {k: values[k] for k in spec}


#: A model section as a dict: ``name`` (a ``model`` registry name, default ``xfm``) and the
#: fields of that model's config class (:class:`xfm.fusion.XFMConfig`), checked at load time
#: by :func:`check_model_spec`.
ModelSpec = Annotated[dict[str, Any], AfterValidator(check_model_spec)]


def _check_sources(sources: dict[str, Any]) -> dict[str, Any]:
    from xfm.train.data.sources import source_names

    names = source_names()
    for name in sources:
        if name not in names:
            raise UnknownKeyError(name, names, what="source")
    return sources


def _check_process(process: dict[str, Any]) -> dict[str, Any]:
    from xfm.train.data.transforms import ProcessConfig

    return validate_section(ProcessConfig, process, exclude=("tokenizer",), complete=True)


def _check_loader(loader: dict[str, Any]) -> dict[str, Any]:
    from xfm.train.data.loader import LoaderConfig

    return validate_section(LoaderConfig, loader, complete=True)


def check_synth(synth: dict[str, Any]) -> dict[str, Any]:
    """Check a free-form ``synth`` mapping against :class:`SynthSection`'s fields."""
    return validate_section(SynthSection, synth)


@dataclass
class SourceSection:
    """One data source of the step.

    Attributes:
        url: MDS shards (folder, ``s3://``, ``gs://``; ``{synth}`` expands).
        batch_size: per-rank batch size.
        weight: multiplies every loss of this source.
        enabled: include the source in each step.
        objectives: objective name -> weight (empty: the source's defaults, the official set
            for the built-in sources).
        options: objective name -> constructor options (e.g. ``{itc: {id_aware: false}}``).
    """

    url: str = ""
    batch_size: PositiveInt = 32
    weight: NonNegativeFloat = 1.0
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
        sources: registered data sources by name (``text``, ``image_text``, ``region``,
            ``image`` or a plug-in's: :mod:`xfm.train.data.sources`).
        eval_url: held-out image-text MDS for zero-shot retrieval (``""``: none).
        process: :class:`xfm.train.data.ProcessConfig` fields.
        loader: :class:`xfm.train.data.LoaderConfig` fields (``seed`` defaults to the run's).
    """

    synth: SynthSection | None = None
    tokenizer: str = "{synth}/tokenizer"
    sources: Annotated[dict[str, SourceSection], AfterValidator(_check_sources)] = field(
        default_factory=dict
    )
    eval_url: str = ""
    process: Annotated[dict[str, Any], AfterValidator(_check_process)] = field(default_factory=dict)
    loader: Annotated[dict[str, Any], AfterValidator(_check_loader)] = field(default_factory=dict)


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
        on_nonfinite: what a NaN / infinite loss does (each loss is checked right after its
            forward, before anything consumes it, e.g. ITM's hard-negative sampling):
            ``stop`` ends the run with one error naming the loss and the step (the newest
            checkpoint is the last good state: resume it, e.g. with a lower ``lr``);
            ``skip_step`` discards that step (gradients zeroed, no optimizer or schedule
            step; the step still counts towards ``steps`` and its batches are consumed),
            logs a warning naming the loss and counts it in ``skipped_steps`` (metrics,
            summary, checkpoint). ``skip_step`` needs a single process.

    ``--resume`` may change ``lr``, ``weight_decay``, ``betas``, ``eps``, ``grad_clip`` and
    ``on_nonfinite`` (the resumed optimizer and schedule follow them); any other change of
    this section is refused (see :data:`xfm.train.checkpointing.RESUME_CHANGEABLE`).
    """

    lr: NonNegativeFloat = 1e-4
    weight_decay: NonNegativeFloat = 0.01
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
    warmup_steps: NonNegativeInt = 2500
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0
    grad_clip: NonNegativeFloat = 1.0
    accumulate: PositiveInt = 1
    fused: bool | None = None
    on_nonfinite: Literal["stop", "skip_step"] = "stop"


@dataclass
class CheckpointSection:
    """Checkpoints: ``url`` (default ``<run_dir>/checkpoints``; local, ``s3://``, ``gs://``).

    Attributes:
        every: save every this many optimizer steps (0: only at the end).
        keep: keep the newest this many step checkpoints (0: all).
        export_safetensors: also write ``model.safetensors`` (weights for inference).
    """

    url: str = ""
    every: NonNegativeInt = 500
    keep: NonNegativeInt = 2
    export_safetensors: bool = True


@dataclass
class EvalSection:
    """Zero-shot retrieval on ``data.eval_url``: every ``every`` steps (0: never) and at the end.

    Attributes:
        max_pairs: evaluate at most this many held-out pairs (0: all).
        batch_size: encoding batch size.
    """

    every: NonNegativeInt = 0
    at_end: bool = True
    max_pairs: NonNegativeInt = 0
    batch_size: PositiveInt = 64


@dataclass
class LogSection:
    """Observability: CSV + TensorBoard per-loss metrics, progress bar, loss-curve PNG."""

    every: PositiveInt = 1
    tensorboard: bool = True
    progress: bool = True
    plot: bool = True


#: Layer selection of an ``init:`` source: ``None`` (every layer, counts must match), an explicit
#: list of source layers (one per model layer, in order) or ``every_other`` (layers 1, 3, 5...
#: of a source with twice the model's layers, as the official code takes 12 of 24).
LayerSelection = list[NonNegativeInt] | Literal["every_other"] | None


@dataclass
class TextInitSection:
    """The language encoder from a Hugging Face BERT / RoBERTa folder (``init.text``).

    Attributes:
        path: a ``save_pretrained`` folder: ``config.json`` + ``model.safetensors`` or
            ``pytorch_model.bin`` (read with ``weights_only``), e.g. ``roberta-base``.
        layers: which checkpoint layers become the model's: ``null`` (all; the counts must
            match), a list of checkpoint layers (one per model layer, in order) or
            ``every_other`` (layers 1, 3, 5... of a checkpoint with twice the model's layers,
            as the official code takes 12 of roberta-large's 24).
        mlm_head: also load the checkpoint's MLM head (``lm_head`` / ``cls.predictions``) into
            the text MLM head when it has one.
    """

    path: Annotated[str, Field(min_length=1)]
    layers: LayerSelection = None
    mlm_head: bool = True


@dataclass
class VisionInitSection:
    """The vision encoder from a BEiT-v2 checkpoint (``init.vision``), resized to the model's
    image size (relative position tables interpolated, a shared table copied into every block).

    Attributes:
        path: a ``.pth`` (read with ``weights_only``; ``{"model": ...}`` nesting is found) or
            ``.safetensors`` file.
        format: ``timm`` (timm's ``Beit`` state dict), ``official`` (the BEiT-v2 release, e.g.
            ``beitv2_base_patch16_224_pt1k.pth``, or an X-FM checkpoint's ``vision_encoder.*``),
            ``auto`` (``official`` when the keys say so, else ``timm``).
    """

    path: Annotated[str, Field(min_length=1)]
    format: Literal["auto", "timm", "official"] = "auto"


@dataclass
class FusionInitSection:
    """The fusion encoder's self-attention and feed-forward blocks from the ``init.text``
    checkpoint (``init.fusion``; cross-attention stays new). The official X-FM code starts its
    fusion encoder from scratch: leave ``init.fusion`` unset for that.

    Attributes:
        layers: checkpoint layers for the fusion layers (``null``: the top ``model.fusion.layers``
            layers of the checkpoint, the BERT-style "upper layers become cross-modal" init; or
            a list, or ``every_other``, as for ``init.text.layers``).
        mlm_head: copy the checkpoint's MLM head into the fusion MLM head too.
    """

    layers: LayerSelection = None
    mlm_head: bool = False


@dataclass
class InitSection:
    """The official recipe's initialisation from public weights (SPEC sections 1 and 5).

    Attributes:
        text: the language encoder (and its MLM head) from Hugging Face BERT / RoBERTa weights.
        vision: the vision encoder from BEiT-v2 weights.
        fusion: the fusion encoder from the text checkpoint's layers (default: from scratch).
        new_params: which parameters get ``optim.new_param_lr_mult``: ``left_new`` (every
            parameter no source filled, listed in the log and ``init.json``) or ``patterns``
            (``optim.new_params``, e.g. to give a scratch fusion encoder the base lr as the
            official code does).
    """

    text: TextInitSection | None = None
    vision: VisionInitSection | None = None
    fusion: FusionInitSection | None = None
    new_params: Literal["left_new", "patterns"] = "left_new"


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
        model: ``name``: the ``model`` registry name (default ``xfm``, :class:`xfm.fusion.XFM`;
            a plug-in model must offer the same interface), and its config fields:
            :class:`xfm.fusion.XFMConfig`'s for ``xfm`` (``text``/``vision``/``fusion`` specs;
            the text ``vocab_size``/``pad_token_id`` default to the tokenizer's, the vision
            ``image_size``/``patch_size`` to ``data.process``).
        init_from: optional weights to start from (``xfm.core.checkpoint.load_state_dict``).
        init_strict: refuse an ``init_from`` whose tensors are missing (other than
            ``optim.new_params``) or differently shaped, with the grouped report; ``false``
            starts those tensors from scratch.
        init: the encoders from public weights (:class:`InitSection`); not together with
            ``init_from``. A resumed run loads its checkpoint and does not run it again.
    """

    run_dir: str = "runs/pretrain"
    seed: int = 0
    steps: PositiveInt = 1000
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    threads: PositiveInt | None = None
    distributed: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    compile: bool = False
    deterministic: bool = False
    model: ModelSpec = field(default_factory=dict)
    init_from: str = ""
    init_strict: bool = True
    init: InitSection | None = None
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)

    def __post_init__(self) -> None:
        if self.init is not None and self.init_from:
            raise ConfigError(
                "init_from (a whole xfm state dict) and init (encoders from public weights) "
                "exclude each other: set one of them",
                key="init",
            )
        if self.init is not None and self.init.fusion is not None and self.init.text is None:
            raise ConfigError(
                "init.fusion copies layers of the init.text checkpoint: set init.text too",
                key="init.fusion",
            )


def load_pretrain_config(path: str, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a pretraining YAML (following ``base:``), apply ``dotted.key=value`` overrides."""
    from xfm.core.config import load_config

    return load_config(PretrainConfig, str(path), overrides)

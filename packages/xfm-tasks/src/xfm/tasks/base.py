"""The task contract shared by every downstream task (entry-point group ``xfm.task``).

A task is a small object built from its ``options`` (``FinetuneConfig.options``) that knows

* how to build its model from an :class:`~xfm.fusion.XFMConfig` dict (:meth:`Task.build_model`),
* what its data looks like (:meth:`Task.train_data` / :meth:`Task.eval_data`: a torch dataset
  and its collate function, read from the official annotation format),
* the training loss of one batch (:meth:`Task.loss` -> ``{"loss": total, **parts}``),
* how it is evaluated (:meth:`Task.evaluate` -> ``{metric: value}``, percentages for accuracies),
* its official checkpoint layout (``official_layout``, a key list name of ``golden/keys``;
  the layouts themselves live in :mod:`xfm.tasks.official`).

:mod:`xfm.tasks.finetune` runs any task with the xfm-train optimizer, scheduler, metrics and
checkpoints; :mod:`xfm.tasks.cli` exposes it as ``xfm finetune TASK`` / ``xfm eval TASK``.

Task models are :class:`~xfm.fusion.XFM` subclasses that drop the heads the task does not own
(so their state dicts hold exactly the task's parameters) and add their own heads.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import AfterValidator
from torch import nn

from xfm.fusion.model import XFM, XFMConfig
from xfm.tasks.task_options import check_task_model, check_task_name, check_task_options
from xfm.train.config import (
    NonNegativeInt,
    OptimSection,
    PositiveInt,
    check_synth,
)

__all__ = [
    "EVAL_TRANSFORMS",
    "FinetuneConfig",
    "Task",
    "TaskData",
    "TaskDataSection",
    "TaskModel",
    "TrainSection",
    "collect_outputs",
    "get_task",
    "move_to",
    "xfm_config",
]


#: Heads of the pretraining model, by attribute name (what a task model may drop).
PRETRAIN_HEADS: tuple[str, ...] = (
    "text_mlm_head",
    "fusion_mlm_head",
    "vision_proj",
    "text_proj",
    "temp",
    "itm_head",
    "bbox_head",
)

#: Evaluation-time image transform defaults (no augmentation), shared by the task datasets.
EVAL_TRANSFORMS: dict[str, Any] = {"augment": False, "mim": False}


def xfm_config(spec: Mapping[str, Any] | XFMConfig) -> XFMConfig:
    """An :class:`XFMConfig` from a config dict (``text``/``vision``/``fusion`` specs...).

    Task models never detach the language states (official ``is_pretrain=False``).
    """
    if isinstance(spec, XFMConfig):
        cfg = spec
    else:
        known = {f.name for f in dataclasses.fields(XFMConfig)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(
                f"model config: unknown keys {unknown}; expected some of {sorted(known)}"
            )
        cfg = XFMConfig(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.items()})
    return dataclasses.replace(cfg, stop_gradient=False)


class TaskModel(XFM):
    """An :class:`XFM` that keeps only the pretraining heads in ``keep_heads``.

    Subclasses set ``keep_heads`` and add their own heads in ``__init__``; their state dict then
    holds exactly the parameters of the official task model (in xfm names).
    """

    keep_heads: ClassVar[tuple[str, ...]] = ()
    task_name: ClassVar[str] = ""

    def __init__(self, config: XFMConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__(xfm_config(config or {}))
        for name in PRETRAIN_HEADS:
            if name not in self.keep_heads:
                delattr(self, name)

    def clamp_temp(self) -> None:
        """Task forwards use the temperature unclamped (official); kept as a no-op."""

    @property
    def text_width(self) -> int:
        """Width ``Dt`` of the language / fusion states."""
        return int(self.text_encoder.width)


@dataclass
class TaskData:
    """A dataset plus its collate function (``collate(list_of_items) -> batch``)."""

    dataset: torch.utils.data.Dataset
    collate: Callable[[list[Any]], Any]

    def loader(self, batch_size: int, *, shard: bool = False) -> torch.utils.data.DataLoader:
        """An evaluation loader in dataset order; ``shard``: each rank reads its own part
        under torchrun (``DistributedSampler`` without shuffling)."""
        sampler = None
        if shard:
            from xfm.train.distributed import get_world_size

            if get_world_size() > 1:
                sampler = torch.utils.data.DistributedSampler(self.dataset, shuffle=False)
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size, collate_fn=self.collate, sampler=sampler
        )


def eval_autocast(
    autocast: Callable[[], Any] | None, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    """The caller's autocast context, or autocast explicitly off (fp32 evaluation)."""
    return autocast() if autocast else torch.autocast(device.type, enabled=False)


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` (tensor / dict / list / tuple of them) on ``device``; other values as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


@torch.no_grad()
def collect_outputs(
    data: TaskData,
    step: Callable[[Any], Mapping[str, torch.Tensor]],
    *,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], Any] | None = None,
    progress: bool = False,
    desc: str = "eval",
    shard: bool = False,
) -> dict[str, torch.Tensor]:
    """The evaluation loop of a task: ``step(batch)`` on every batch of ``data``, each output
    concatenated over the batches (dim 0).

    Batches are moved to ``device``; ``step`` runs without gradient under the evaluation
    autocast (:func:`eval_autocast`). ``shard``: under torchrun each rank reads its part of
    the data (:meth:`TaskData.loader`) and the outputs of all ranks are gathered, in rank order.
    """
    from tqdm import tqdm

    parts: dict[str, list[torch.Tensor]] = {}
    for batch in tqdm(data.loader(batch_size, shard=shard), desc=desc, disable=not progress):
        batch = move_to(batch, device)
        with eval_autocast(autocast, device):
            values = step(batch)
        for key, value in values.items():
            parts.setdefault(key, []).append(value)
    out = {key: torch.cat(values) for key, values in parts.items()}
    if shard:
        from xfm.train.distributed import all_gather_no_grad

        out = {key: torch.cat(all_gather_no_grad(value)) for key, value in out.items()}
    return out


@dataclass
class TaskDataSection:
    """Where a task's data lives (the official annotation JSON formats).

    Attributes:
        root: folder the image paths of the annotations are relative to (``{synth}`` expands).
        train: training annotation file.
        eval: split name -> annotation file (``val``, ``test``, ``testA`` ...).
        tokenizer: tokenizer folder / file (:func:`xfm.text.tokenizer.load_tokenizer`).
        image_size: square input side (also the vision encoder's ``image_size`` by default).
        max_tokens: token limit of a text.
        augment: random resized crop of training images (never for boxes).
        synth: build the shapes-world set here when missing (``{synth}`` expands to it).
        num_workers: data-loader worker processes.
    """

    root: str = "{synth}"
    train: str = ""
    eval: dict[str, str] = field(default_factory=dict)
    tokenizer: str = "{synth}/tokenizer"
    image_size: PositiveInt = 64
    max_tokens: PositiveInt = 30
    augment: bool = False
    synth: Annotated[dict[str, Any], AfterValidator(check_synth)] | None = None
    num_workers: NonNegativeInt = 0

    def expand(self, path: str) -> str:
        """``path`` with ``{synth}`` replaced by the synthetic dataset folder."""
        from xfm.train.synthetic import expand_synth

        return expand_synth(path, self.synth)


@dataclass
class TrainSection:
    """The fine-tuning loop.

    Attributes:
        steps: optimizer steps.
        batch_size: per-rank training batch size.
        eval_batch_size: per-rank evaluation batch size.
        log_every: metrics row every this many steps.
        eval_every: evaluate every this many steps (0: only at the end).
        eval_splits: splits evaluated during / after training (default: all of ``data.eval``).
        checkpoint_every: training checkpoint every this many steps (0: only at the end).
        keep: newest training checkpoints kept.
        accumulate: micro-batches of ``batch_size`` per optimizer step (the gradient of a
            mean-reduced loss is that of one ``accumulate * batch_size`` batch).
        progress: show a progress bar (rank 0).
    """

    steps: PositiveInt = 200
    batch_size: PositiveInt = 32
    eval_batch_size: PositiveInt = 64
    log_every: PositiveInt = 10
    eval_every: NonNegativeInt = 0
    eval_splits: list[str] = field(default_factory=list)
    checkpoint_every: NonNegativeInt = 0
    keep: NonNegativeInt = 1
    accumulate: PositiveInt = 1
    progress: bool = True


@dataclass
class FinetuneConfig:
    """Everything ``xfm finetune TASK`` needs.

    Attributes:
        task: registered task name (``xfm.task`` entry point).
        run_dir: logs, metrics, checkpoints and ``model.safetensors``.
        seed: model init, data order, hard negatives.
        device: ``auto`` / ``cpu`` / ``cuda[:i]``.
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + scaler, CUDA).
        threads: ``torch.set_num_threads`` (``None``: leave).
        model: :class:`~xfm.fusion.XFMConfig` fields.
        init_from: weights to start from: an xfm ``.safetensors`` / run dir, or an official
            checkpoint (pretraining or task layout, ``.pth`` / ``.safetensors``).
        init_strict: refuse an ``init_from`` whose tensors are missing (other than the
            heads matching ``optim.new_params`` and a decoder initialised from the fusion
            layers) or differently shaped; ``false`` starts those from scratch.
        options: task options (e.g. retrieval ``k_test``).

    Every section is checked at load time (:mod:`xfm.train.config` and
    :mod:`xfm.tasks.task_options`): the model section and encoder specs, the task name and its
    options, ``data.synth``, and the bounds of counts and intervals.
    """

    task: Annotated[str, AfterValidator(check_task_name)] = ""
    run_dir: str = "runs/finetune"
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    threads: PositiveInt | None = None
    model: Annotated[dict[str, Any], AfterValidator(check_task_model)] = field(default_factory=dict)
    init_from: str = ""
    init_strict: bool = True
    options: Annotated[dict[str, Any], AfterValidator(check_task_options)] = field(
        default_factory=dict
    )
    data: TaskDataSection = field(default_factory=TaskDataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)


class Task:
    """Base class of a downstream task. Subclasses set the class attributes and implement the
    methods; ``options`` are the task's own settings (``FinetuneConfig.options``).

    Attributes:
        name: registry name.
        metric: the main evaluation metric (reported first, used to compare runs).
        official_layout: name of the official key list (``golden/keys/<name>.txt``) of the
            task checkpoint, or ``None`` when the task has no official layout.
        default_options: defaults of ``options``.
        model_sections: keys the task model accepts in the ``model`` section beyond
            :class:`~xfm.fusion.XFMConfig`'s, each checked at load time against a dataclass.
        options_class: optional dataclass whose fields are the task's options (checked at load
            time; without it only the names of ``default_options`` are).
    """

    name: ClassVar[str] = ""
    metric: ClassVar[str] = ""
    official_layout: ClassVar[str | None] = None
    default_options: ClassVar[dict[str, Any]] = {}
    model_sections: ClassVar[dict[str, type]] = {}
    options_class: ClassVar[type | None] = None

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.default_options))
        if unknown:
            raise ValueError(
                f"task {self.name!r}: unknown options {unknown}; expected some of "
                f"{sorted(self.default_options)}"
            )
        self.options = {**self.default_options, **options}

    # ------------------------------------------------------------------------- model
    def build_model(self, model_config: Mapping[str, Any] | XFMConfig) -> nn.Module:
        """The task model (a :class:`TaskModel`) from an :class:`XFMConfig` dict."""
        raise NotImplementedError

    # -------------------------------------------------------------------------- data
    def train_data(self, data: TaskDataSection, tokenizer: Any) -> TaskData:
        """Training dataset of ``data.train``."""
        raise NotImplementedError

    def eval_data(self, data: TaskDataSection, split: str, tokenizer: Any) -> TaskData:
        """Evaluation dataset of ``data.eval[split]``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- train / eval
    def loss(
        self, model: nn.Module, batch: Any, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"loss": weighted total, <part>: value, ...}`` of one training batch."""
        raise NotImplementedError

    def evaluate(
        self,
        model: nn.Module,
        data: TaskData,
        *,
        batch_size: int = 64,
        device: torch.device | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: bool = False,
    ) -> dict[str, float]:
        """``{metric: value}`` of ``model`` on an evaluation dataset."""
        raise NotImplementedError


def get_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """The registered task ``name`` (entry-point group ``xfm.task``) built with ``options``."""
    from xfm.core.registry import create

    return create("task", name, **dict(options or {}))


def batches(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive chunks of at most ``size`` items."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

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

Task models (:class:`TaskModel`) are the X-FM encoders (:class:`~xfm.fusion.model.XFMEncoders`)
plus only the pretraining heads the task owns (built by the same factories as
:class:`~xfm.fusion.XFM`'s) and their own heads, so their state dicts hold exactly the task's
parameters.
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

from xfm.fusion.model import PRETRAIN_HEADS, HeadMethods, XFMConfig, XFMEncoders, build_heads
from xfm.tasks.task_options import check_task_model, check_task_name, check_task_options
from xfm.train.config import (
    NonNegativeInt,
    OptimSection,
    PositiveInt,
    check_synth,
)

__all__ = [
    "EVAL_TRANSFORMS",
    "PRETRAIN_HEADS",
    "FinetuneConfig",
    "Task",
    "TaskData",
    "TaskDataSection",
    "TaskModel",
    "TrainSection",
    "collect_outputs",
    "concat_outputs",
    "get_task",
    "move_to",
    "run_batches",
    "xfm_config",
]


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


class TaskModel(HeadMethods, XFMEncoders):
    """The X-FM encoders plus the pretraining heads named in ``keep_heads`` (nothing else is
    built).

    Subclasses set ``keep_heads`` (names of :data:`~xfm.fusion.model.PRETRAIN_HEADS`) and add
    their own heads in ``__init__``; their state dict then holds exactly the parameters of the
    official task model (in xfm names). The heads are built in the pretraining order by
    :func:`~xfm.fusion.model.build_heads`.
    """

    keep_heads: ClassVar[tuple[str, ...]] = ()
    task_name: ClassVar[str] = ""

    def __init__(self, config: XFMConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__(xfm_config(config or {}))
        build_heads(self, self.keep_heads)

    def clamp_temp(self) -> None:
        """Task forwards use the temperature unclamped (official); kept as a no-op."""


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
def run_batches(
    batches: Iterable[Any],
    step: Callable[[Any], Mapping[str, Any]],
    *,
    device: torch.device,
    autocast: Callable[[], Any] | None = None,
    progress: bool = False,
    desc: str = "eval",
    unit: str = "batch",
    total: int | None = None,
    size: Callable[[Any], int] | None = None,
) -> dict[str, list[Any]]:
    """The evaluation loop of every task: ``step(batch)`` on each of ``batches``, in order.

    Each batch is moved to ``device`` (:func:`move_to`); ``step`` runs without gradient under
    the evaluation autocast (:func:`eval_autocast`) and returns named per-batch outputs
    (tensors ``[b, ...]`` or lists of ``b`` items). A tqdm bar (``progress``) advances by
    ``size(batch)`` (default 1) towards ``total`` (default ``len(batches)`` when known).

    Returns:
        output name -> the list of its per-batch values (see :func:`concat_outputs`).
    """
    from tqdm import tqdm

    if total is None and size is None and hasattr(batches, "__len__"):
        total = len(batches)  # type: ignore[arg-type]
    parts: dict[str, list[Any]] = {}
    with tqdm(total=total, desc=desc, unit=unit, disable=not progress) as bar:
        for batch in batches:
            batch = move_to(batch, device)
            with eval_autocast(autocast, device):
                values = step(batch)
            for key, value in values.items():
                parts.setdefault(key, []).append(value)
            bar.update(size(batch) if size else 1)
    return parts


def concat_outputs(parts: Mapping[str, list[Any]]) -> dict[str, Any]:
    """Per-batch outputs of :func:`run_batches` joined over the batches: tensors concatenated
    along dim 0, lists chained into one list."""
    out: dict[str, Any] = {}
    for key, values in parts.items():
        if all(isinstance(v, torch.Tensor) for v in values):
            out[key] = torch.cat(values)
        else:
            out[key] = [item for value in values for item in value]
    return out


def _gather_ranks(value: Any) -> Any:
    """``value`` (a tensor ``[n, ...]`` or a list) of every rank, joined in rank order."""
    from xfm.train.distributed import all_gather_no_grad, get_world_size, is_distributed

    if isinstance(value, torch.Tensor):
        return torch.cat(all_gather_no_grad(value))
    if not is_distributed():
        return value
    gathered: list[Any] = [None] * get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return [item for part in gathered for item in part]


def collect_outputs(
    data: TaskData,
    step: Callable[[Any], Mapping[str, Any]],
    *,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], Any] | None = None,
    progress: bool = False,
    desc: str = "eval",
    shard: bool = False,
) -> dict[str, Any]:
    """:func:`run_batches` over ``data`` in batches of ``batch_size``, each output joined over
    the batches (:func:`concat_outputs`: tensors along dim 0, lists chained).

    ``shard``: under torchrun each rank reads its part of the data (:meth:`TaskData.loader`)
    and the outputs of all ranks are gathered, in rank order.
    """
    loader = data.loader(batch_size, shard=shard)
    parts = run_batches(
        loader, step, device=device, autocast=autocast, progress=progress, desc=desc
    )
    out = concat_outputs(parts)
    if shard:
        out = {key: _gather_ranks(value) for key, value in out.items()}
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

"""The fine-tuning loop of every task (``xfm finetune TASK``) and task evaluation
(``xfm eval TASK``).

It reuses the pretraining pieces of :mod:`xfm.train`: AdamW groups and the warm-up/decay
schedule (:mod:`xfm.train.optim`), atomic training checkpoints and the safetensors export
(:mod:`xfm.train.checkpointing`), the CSV/TensorBoard metrics (:mod:`xfm.train.metrics`),
devices and process groups (:mod:`xfm.train.trainer`, :mod:`xfm.train.distributed`). What is
task specific (model, data, loss, metrics) comes from the :class:`~xfm.tasks.base.Task`.

Run dir layout: ``config.yaml``, ``metrics.csv`` (loss parts, lr), ``eval.json`` (the final
evaluation), ``checkpoints/step_*.pt`` and ``model.safetensors`` (weights, with the task name
and model config in its metadata, which ``xfm eval TASK --checkpoint RUN_DIR`` reads).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from xfm.core.config import save_config, to_dict
from xfm.tasks.base import FinetuneConfig, Task, TaskData, get_task
from xfm.tasks.base_data import ensure_synthetic
from xfm.train.checkpointing import (
    capture_rng,
    export_weights,
    prune_checkpoints,
    save_training_state,
)
from xfm.train.distributed import (
    barrier,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from xfm.train.metrics import MetricsLogger
from xfm.train.optim import build_optimizer, build_scheduler
from xfm.train.trainer import resolve_device

__all__ = ["Finetuner", "autocast_for", "model_spec", "move_to"]

log = logging.getLogger("xfm.tasks")


def autocast_for(
    device: torch.device, precision: str
) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument factory of the autocast context of ``precision`` on ``device``."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32 or bf16 for fine-tuning; got {precision!r}")
    return contextlib.nullcontext


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` (tensor / dict / list / tuple / dataclass with ``to``) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def model_spec(cfg: FinetuneConfig, tokenizer: Any | None) -> dict[str, Any]:
    """The model config dict: ``cfg.model`` with the tokenizer's vocabulary / pad id and the
    data image size filled in where not set."""
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in to_dict(cfg.model).items()}
    text = spec.setdefault("text", {"name": "roberta"})
    vision = spec.setdefault("vision", {"name": "beit_v2"})
    if tokenizer is not None:
        text.setdefault("vocab_size", int(tokenizer.vocab_size))
        text.setdefault("pad_token_id", int(tokenizer.pad_id))
    vision.setdefault("image_size", cfg.data.image_size)
    return spec


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def load_tokenizer_for(cfg: FinetuneConfig) -> Any | None:
    """The tokenizer of ``cfg.data.tokenizer`` (``None`` when it is empty)."""
    if not cfg.data.tokenizer:
        return None
    from xfm.text.tokenizer import load_tokenizer

    return load_tokenizer(cfg.data.expand(cfg.data.tokenizer))


class Finetuner:
    """Fine-tune a task model from a :class:`FinetuneConfig`; :meth:`fit` returns a summary.

    Args:
        config: the run configuration.
        print_fn: where progress lines go (rank 0 only).
    """

    def __init__(self, config: FinetuneConfig, print_fn: Callable[[str], None] = print) -> None:
        self.cfg = config
        self.print = print_fn if is_main_process() else (lambda _: None)
        self.step = 0

    # ----------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Device, process group, data, model, optimizer, schedule, metrics."""
        cfg = self.cfg
        if not cfg.task:
            raise ValueError(
                "the config names no task (set task: retrieval | nlvr | grounding ...)"
            )
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        init_distributed(self.device)
        self.autocast = autocast_for(self.device, cfg.precision)
        if is_main_process():
            ensure_synthetic(cfg.data.synth, progress=True)
        barrier()
        self.task: Task = get_task(cfg.task, cfg.options)
        self.tokenizer = load_tokenizer_for(cfg)
        self.spec = model_spec(cfg, self.tokenizer)
        _seed(cfg.seed)
        model = self.task.build_model(self.spec)
        if cfg.init_from:
            from xfm.tasks.official import init_task_model

            report = init_task_model(
                model,
                cfg.data.expand(cfg.init_from),
                decoder_init=str(self.task.options.get("decoder_init", "fusion")),
                log=self.print,
            )
            self.print(f"initialised from {cfg.init_from}: {report}")
        self.model = model.to(self.device)
        self.train_model: nn.Module = self.model
        if get_world_size() > 1:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.train_data: TaskData = self.task.train_data(cfg.data, self.tokenizer)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        # a task may build its own optimizer (issue 10: layer-wise lr decay for ImageNet)
        make_optimizer = getattr(self.task, "build_optimizer", None) or build_optimizer
        self.optimizer = make_optimizer(self.model, cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.steps)
        self.run_dir = Path(cfg.run_dir)
        if is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")

    def _loader(self, data: TaskData, batch_size: int, train: bool) -> DataLoader:
        if get_world_size() > 1:
            sampler: Any = DistributedSampler(data.dataset, shuffle=train, seed=self.cfg.seed)
        elif train:
            sampler = RandomSampler(
                data.dataset, generator=torch.Generator().manual_seed(self.cfg.seed)
            )
        else:
            sampler = None
        return DataLoader(
            data.dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=data.collate,
            num_workers=self.cfg.data.num_workers,
            drop_last=train and len(data.dataset) >= batch_size * get_world_size(),
        )

    def _batches(self) -> Iterator[Any]:
        loader = self._loader(self.train_data, self.cfg.train.batch_size, train=True)
        epoch = 0
        while True:
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    # ------------------------------------------------------------------------ loop
    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimizer step on ``batch``; returns the loss parts and the lr."""
        self.train_model.train()
        batch = move_to(batch, self.device)
        with self.autocast():
            parts = self.task.loss(self.train_model, batch, self.generator)
        loss = parts["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in parts.items()}
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        return out

    def evaluate(self, splits: list[str] | None = None, progress: bool = False) -> dict[str, float]:
        """``{split/metric: value}`` on the evaluation splits."""
        return evaluate_splits(
            self.task,
            self.model,
            self.cfg,
            self.tokenizer,
            splits,
            self.device,
            self.autocast,
            progress,
        )

    def fit(self) -> dict[str, Any]:
        """Run ``train.steps`` optimizer steps, evaluate, save; returns a summary."""
        cfg = self.cfg
        tc = cfg.train
        metrics: MetricsLogger | None = None
        start = time.time()
        history: list[dict[str, float]] = []
        evals: dict[str, float] = {}
        try:
            batches = self._batches()
            for _ in range(tc.steps):
                row = self.train_step(next(batches))
                history.append(row)
                if metrics is None and is_main_process():  # columns: this task's loss parts
                    metrics = MetricsLogger(self.run_dir, list(row), tensorboard=False)
                if metrics is not None and (self.step % tc.log_every == 0 or self.step == tc.steps):
                    metrics.log(self.step, row)
                    self.print(
                        f"step {self.step}/{tc.steps} "
                        + " ".join(f"{k}={v:.4g}" for k, v in row.items())
                    )
                if tc.eval_every and self.step % tc.eval_every == 0 and self.step < tc.steps:
                    evals = self.evaluate(tc.eval_splits or None)
                    if metrics is not None:
                        metrics.log(self.step, evals)
                    self.print(f"eval @ {self.step}: {_fmt(evals)}")
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                    self.save_checkpoint()
            evals = self.evaluate(tc.eval_splits or None, progress=True)
            if metrics is not None:
                metrics.log(self.step, evals)
        finally:
            if metrics is not None:
                metrics.close()
        self.save_checkpoint()
        elapsed = time.time() - start
        summary = {
            "task": cfg.task,
            "steps": self.step,
            "seconds": elapsed,
            "first_loss": history[0]["loss"] if history else math.nan,
            "last_loss": history[-1]["loss"] if history else math.nan,
            "eval": evals,
            "run_dir": str(self.run_dir),
        }
        if is_main_process():
            (self.run_dir / "eval.json").write_text(json.dumps(summary, indent=1))
            self.print(f"eval: {_fmt(evals)}")
        return summary

    def save_checkpoint(self) -> None:
        """Training state (atomic) + ``model.safetensors`` with task/config metadata."""
        if not is_main_process():
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "rng": capture_rng(self.generator),
            "loader": {},
            "config": to_dict(self.cfg),
        }
        ckpt_dir = str(self.run_dir / "checkpoints")
        save_training_state(state, ckpt_dir, self.step)
        prune_checkpoints(ckpt_dir, self.cfg.train.keep, self.step)
        save_task_model(self.model, self.run_dir / "model.safetensors", self.cfg.task, self.spec)


def save_task_model(model: nn.Module, path: str | Path, task: str, spec: dict[str, Any]) -> None:
    """Write the weights as safetensors (atomic) with ``{"task", "model"}`` metadata."""
    export_weights(
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        str(path),
        {"task": task, "model": spec},
    )


def evaluate_splits(
    task: Task,
    model: nn.Module,
    cfg: FinetuneConfig,
    tokenizer: Any,
    splits: list[str] | None,
    device: torch.device,
    autocast: Callable[[], Any],
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate ``model`` on each split of ``cfg.data.eval`` (default: all); ``split/metric``."""
    names = list(splits or cfg.data.eval)
    unknown = [s for s in names if s not in cfg.data.eval]
    if unknown:
        raise ValueError(
            f"unknown evaluation split(s) {unknown}; data.eval has {sorted(cfg.data.eval)}"
        )
    was = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for split in names:
            data = task.eval_data(cfg.data, split, tokenizer)
            result = task.evaluate(
                model,
                data,
                batch_size=cfg.train.eval_batch_size,
                device=device,
                autocast=autocast,
                progress=progress and is_main_process(),
            )
            out.update({f"{split}/{k}": v for k, v in result.items()})
    finally:
        model.train(was)
    return out


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in values.items())


def rank_info() -> tuple[int, int]:
    """``(rank, world_size)``."""
    return get_rank(), get_world_size()

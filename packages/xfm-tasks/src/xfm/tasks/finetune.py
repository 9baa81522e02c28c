"""The fine-tuning job of every task (``xfm finetune TASK``) and task evaluation
(``xfm eval TASK``).

What is task specific (model, data, loss, metrics) comes from the :class:`~xfm.tasks.base.Task`;
the rest is the training engine pretraining uses too (:class:`xfm.train.engine.Engine`):
device, process group, precision (bf16 autocast; fp16 + scaler on CUDA), DDP, gradient
accumulation (``train.accumulate``), clipping, AdamW groups and the warm-up/decay schedule,
atomic checkpoints with exact resume (``--resume``: weights, optimizer, schedule, RNG and the
position in the shuffled data), CSV metrics, the progress bar and the safetensors export.

Run dir layout: ``config.yaml``, ``metrics.csv`` (loss parts, lr), ``eval.json`` (the final
evaluation), ``checkpoints/step_*.pt`` and ``model.safetensors`` (weights, with the task name
and model config in its metadata, which ``xfm eval TASK --checkpoint RUN_DIR`` reads).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xfm.core.config import save_config, to_dict
from xfm.tasks.base import FinetuneConfig, Task, get_task, move_to
from xfm.train.checkpointing import export_weights
from xfm.train.distributed import get_rank, get_world_size, is_main_process
from xfm.train.engine import Engine, EngineSettings, EpochLoader, seed_everything
from xfm.train.init_check import check_init
from xfm.train.optim import build_optimizer, build_scheduler
from xfm.train.synthetic import ensure_synthetic

__all__ = ["Finetuner", "model_spec", "move_to"]

log = logging.getLogger("xfm.tasks")


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (0 when it has none)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 0
    values = batch.values() if isinstance(batch, dict) else batch
    if isinstance(values, list | tuple) or isinstance(batch, dict):
        for v in values:
            n = batch_samples(v)
            if n:
                return n
    return 0


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


def load_tokenizer_for(cfg: FinetuneConfig) -> Any | None:
    """The tokenizer of ``cfg.data.tokenizer`` (``None`` when it is empty)."""
    if not cfg.data.tokenizer:
        return None
    from xfm.text.tokenizer import load_tokenizer

    return load_tokenizer(cfg.data.expand(cfg.data.tokenizer))


def engine_settings(cfg: FinetuneConfig) -> EngineSettings:
    """The engine part of a fine-tuning config."""
    tc = cfg.train
    return EngineSettings(
        run_dir=cfg.run_dir,
        steps=tc.steps,
        device=cfg.device,
        precision=cfg.precision,
        threads=cfg.threads,
        accumulate=tc.accumulate,
        grad_clip=cfg.optim.grad_clip,
        on_nonfinite=cfg.optim.on_nonfinite,
        checkpoint_every=tc.checkpoint_every,
        checkpoint_keep=tc.keep,
        log_every=tc.log_every,
        eval_every=tc.eval_every,
        tensorboard=False,
        progress=tc.progress,
        name=f"finetune {cfg.task}",
    )


class Finetuner:
    """Fine-tune a task model from a :class:`FinetuneConfig`; :meth:`fit` returns a summary.

    Args:
        config: the run configuration.
        print_fn: where progress lines go (rank 0 only).
        resume: ``True``: continue from the newest checkpoint of the run (error when there is
            none); a URL: continue from that checkpoint; ``False``: start fresh.
        overwrite: replace an earlier run in ``run_dir`` (else such a folder is refused
            unless resuming).
    """

    def __init__(
        self,
        config: FinetuneConfig,
        print_fn: Callable[[str], None] = print,
        resume: bool | str = False,
        overwrite: bool = False,
    ) -> None:
        self.cfg = config
        self.resume = resume
        self.engine = Engine(engine_settings(config), print_fn)
        self.engine.settings.overwrite = overwrite

    @property
    def print(self) -> Callable[[str], None]:
        return self.engine.print

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self.engine.step

    # ----------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Device, process group, data, model, optimizer, schedule; resume if asked."""
        cfg = self.cfg
        if not cfg.task:
            raise ValueError(
                "the config names no task (set task: retrieval | nlvr | grounding ...)"
            )
        engine = self.engine
        self.device = engine.start(self.resume)
        self.autocast = engine.autocast
        ensure_synthetic(cfg.data.synth, progress=True)
        self.task: Task = get_task(cfg.task, cfg.options)
        self.tokenizer = load_tokenizer_for(cfg)
        self.spec = model_spec(cfg, self.tokenizer)
        seed_everything(cfg.seed)
        model = self.task.build_model(self.spec)
        if cfg.init_from:
            from xfm.tasks.official import init_task_model

            decoder_init = str(self.task.options.get("decoder_init", "fusion"))
            report = init_task_model(
                model, cfg.data.expand(cfg.init_from), decoder_init=decoder_init, log=self.print
            )
            new = list(cfg.optim.new_params)
            if hasattr(model, "text_decoder"):  # from the fusion layers, or new by choice
                new.append(r"^text_decoder\.")  # (decoder_init: none); reported above
            line = check_init(report, cfg.init_from, strict=cfg.init_strict, new_params=new)
            self.print(f"initialised from {cfg.init_from}: {line}")
        self.model = model.to(self.device)
        self.train_data = self.task.train_data(cfg.data, self.tokenizer)
        self.batches = EpochLoader(
            self.train_data.dataset,
            cfg.train.batch_size,
            self.train_data.collate,
            seed=cfg.seed,
            num_workers=cfg.data.num_workers,
        )
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        # a task may build its own optimizer (issue 10: layer-wise lr decay for ImageNet)
        make_optimizer = getattr(self.task, "build_optimizer", None) or build_optimizer
        wrapped = engine.prepare(
            self.model,
            self.model,
            lambda _: make_optimizer(self.model, cfg.optim, self.device),
            lambda optimizer: build_scheduler(optimizer, cfg.optim, cfg.train.steps),
            find_unused_parameters=True,  # a task loss need not reach every head each step
            generator=self.generator,
        )
        self.train_model: nn.Module = wrapped.forward
        engine.resume(self.resume, to_dict(cfg), self.batches.load_state_dict)
        self.run_dir = engine.run_dir
        if is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")

    # ------------------------------------------------------------------------ loop
    def _next_batch(self) -> tuple[Any, int]:
        batch = self.batches.next()
        return move_to(batch, self.device), batch_samples(batch)

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The task loss of one batch (through the DDP-wrapped model) and its detached parts."""
        parts = self.task.loss(self.train_model, batch, self.generator)
        return parts["loss"], {k: v.detach() for k, v in parts.items() if k != "loss"}

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``train.accumulate`` batches); the loss parts and the lr."""
        self.model.train()
        return self.engine.train_step(self._next_batch, self.compute_loss)

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
        """Run to ``train.steps`` optimizer steps, evaluate, save; returns a summary."""
        if not hasattr(self, "model"):
            self.setup()
        cfg, engine = self.cfg, self.engine
        tc = cfg.train
        evals: dict[str, float] = {}
        if engine.finished:  # resumed at the last step: report, change nothing
            return {"task": cfg.task, "steps": self.step, "finished": True}

        def report(row: dict[str, float]) -> None:
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                shown = {k: v for k, v in row.items() if k != "samples_per_s"}
                self.print(
                    f"step {self.step}/{tc.steps} "
                    + " ".join(f"{k}={v:.4g}" for k, v in shown.items())
                )

        def evaluate() -> None:
            result = self.evaluate(tc.eval_splits or None)
            engine.log(self.step, result)
            self.print(f"eval @ {self.step}: {_fmt(result)}")

        self.model.train()
        try:
            elapsed, _ = engine.fit(
                self.train_step, self.save_checkpoint, evaluate=evaluate, on_step=report
            )
            evals = self.evaluate(tc.eval_splits or None, progress=True)
            engine.log(self.step, evals)
        finally:
            engine.close_metrics()
        history = engine.history
        summary = {
            "task": cfg.task,
            "steps": self.step,
            "seconds": elapsed,
            "first_loss": history[0]["loss"] if history else math.nan,
            "last_loss": history[-1]["loss"] if history else math.nan,
            "skipped_steps": engine.skipped_steps,
            "eval": evals,
            "run_dir": str(self.run_dir),
        }
        if is_main_process():
            (self.run_dir / "eval.json").write_text(json.dumps(summary, indent=1))
            self.print(f"eval: {_fmt(evals)}")
            self.print(
                f"outputs in {self.run_dir}: model.safetensors (weights), eval.json, "
                f"metrics.csv, checkpoints/ (xfm eval {cfg.task} --checkpoint {self.run_dir})"
            )
        return summary

    def save_checkpoint(self) -> None:
        """Training state (atomic; collective) + ``model.safetensors`` with task metadata."""
        self.engine.save_checkpoint(self.batches.state_dict(), to_dict(self.cfg))
        if is_main_process():
            save_task_model(
                self.model, self.run_dir / "model.safetensors", self.cfg.task, self.spec
            )

    def close(self) -> None:
        """Leave the process group."""
        self.engine.close()


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

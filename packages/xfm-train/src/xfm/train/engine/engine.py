"""The training engine shared by ``xfm pretrain`` and ``xfm finetune``.

:class:`Engine` owns everything a training run does that does not depend on what is trained:

* the runtime (:mod:`.runtime`): threads, determinism, device, process group, precision;
* the wrapping (:mod:`.wrapping`): DDP / FSDP / ``torch.compile``, the unused-parameter probe;
* the step (:mod:`.step`): accumulation with ``no_sync``, staged backward, clipping,
  optimizer, schedule;
* the state (:mod:`.state`): atomic checkpoints and exact resume (RNG, loader state);
* the loop (:meth:`Engine.fit`): progress bar, CSV/TensorBoard metrics, evaluation and
  checkpoint cadence, non-finite loss check.

A job (:class:`~xfm.train.trainer.Trainer`, :class:`~xfm.tasks.finetune.Finetuner`) keeps what
is its own: data, model, loss and summary. It calls, in order::

    engine.start()                        # device, process group
    ...build data and model on engine.device...
    engine.prepare(model, module, build_optimizer, build_scheduler)
    engine.resume(target, config_dict, loader.load_state_dict)
    engine.fit(step=lambda: engine.train_step(next_batch, compute, stages), save=..., ...)
    engine.export(url, metadata)
    engine.close()
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xfm.core.cli.errors import UserError
from xfm.train.checkpointing import check_writable, export_weights
from xfm.train.distributed import (
    barrier,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
)
from xfm.train.engine.run_dir import prepare_run_dir
from xfm.train.engine.runtime import autocast_factory, make_scaler, resolve_device
from xfm.train.engine.state import Checkpoints, Resumed
from xfm.train.engine.step import Compute, NextBatch, Stages, Stepper
from xfm.train.engine.wrapping import Wrapped, freeze_unreached, frozen_groups, wrap
from xfm.train.metrics import MetricsLogger
from xfm.train.nonfinite import NonFiniteLossError

__all__ = ["Engine", "EngineSettings"]

log = logging.getLogger("xfm.train")


@dataclass
class EngineSettings:
    """What the engine needs of a run's configuration.

    Attributes:
        run_dir: local folder of metrics (and checkpoints unless ``checkpoint_dir``).
        steps: optimizer steps of the whole run (the schedule's length).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + scaler, CUDA only).
        threads: ``torch.set_num_threads`` (``None``: leave).
        deterministic: ``torch.use_deterministic_algorithms(True)``.
        distributed: ``auto``, ``none``, ``ddp`` or ``fsdp`` (under torchrun).
        compile: ``torch.compile`` the trained module.
        accumulate: micro-batches per optimizer step.
        grad_clip: max global gradient norm (0: off).
        checkpoint_dir: checkpoint folder / URL (default ``run_dir/checkpoints``).
        checkpoint_every: save every this many steps (0: only at the end).
        checkpoint_keep: newest step checkpoints kept (0: all).
        log_every: metrics row every this many steps (and at the last).
        eval_every: evaluation hook every this many steps (0: never during training).
        tensorboard: TensorBoard events next to ``metrics.csv``.
        progress: tqdm progress bar (rank 0).
        name: the progress bar's label.
        overwrite: start afresh in a run folder that holds an earlier run, deleting its
            outputs and checkpoints (without it, such a folder is refused unless resuming).
        on_nonfinite: what a non-finite loss does: ``stop`` (the run ends with an error naming
            the loss and the step; the newest checkpoint is the last good state) or
            ``skip_step`` (that step's gradients are discarded, no optimizer or schedule step;
            the step still counts towards ``steps`` and consumed its batches; a warning names
            the loss; counted in ``skipped_steps``). ``skip_step`` needs a single process.
    """

    run_dir: str
    steps: int
    device: str = "auto"
    precision: str = "fp32"
    threads: int | None = None
    deterministic: bool = False
    distributed: str = "auto"
    compile: bool = False
    accumulate: int = 1
    grad_clip: float = 0.0
    checkpoint_dir: str = ""
    checkpoint_every: int = 0
    checkpoint_keep: int = 1
    log_every: int = 1
    eval_every: int = 0
    tensorboard: bool = False
    progress: bool = True
    name: str = "train"
    overwrite: bool = False
    on_nonfinite: str = "stop"


def _non_finite(values: dict[str, float], step: int) -> str:
    """The message of a non-finite step loss, naming the first non-finite part."""
    parts = [k for k in values if k not in ("loss", "lr", "samples_per_s")]
    name = next((k for k in parts if not math.isfinite(values[k])), "loss")
    return f"non-finite loss {name} = {values[name]} at step {step}"


def _postfix(values: dict[str, float]) -> dict[str, str]:
    """The progress bar's postfix: loss, throughput, and the counters that are non-zero
    (``skipped_steps``, ``bad/<source>``)."""
    out = {}
    if "loss" in values:
        out["loss"] = f"{values['loss']:.3f}"
    out["sps"] = f"{values['samples_per_s']:.1f}"
    for key, value in values.items():
        if (key == "skipped_steps" or key.startswith("bad/")) and value:
            out[key.replace("_steps", "")] = str(int(value))
    return out


class Engine:
    """Runs the training of a job; see the module docstring for the call order.

    Args:
        settings: the run's engine settings.
        print_fn: where report lines go (rank 0 only).
    """

    def __init__(self, settings: EngineSettings, print_fn: Callable[[str], None] = print) -> None:
        self.settings = settings
        self._print_fn = print_fn
        self.print = print_fn if is_main_process() else (lambda _: None)
        self.step = 0
        self.history: list[dict[str, float]] = []
        #: optimizer steps discarded for a non-finite loss (``on_nonfinite=skip_step``)
        self.skipped_steps = 0
        #: the step of the newest checkpoint this run wrote or resumed from
        self.saved_step: int | None = None
        self.columns: list[str] | None = None
        self.metrics: MetricsLogger | None = None
        self.resume_step: int | None = None
        #: set by :meth:`resume` when the checkpoint is already at ``settings.steps``
        self.finished = False
        self.frozen: list[str] = []
        self.run_dir = Path(settings.run_dir)
        self.ckpt_dir = settings.checkpoint_dir or str(self.run_dir / "checkpoints")

    # ------------------------------------------------------------------------ runtime
    def start(self, resume: bool | str = False) -> torch.device:
        """Threads, determinism, device (on CPU: freed memory kept for reuse), precision check,
        process group, the run folder (refused when it holds an earlier run, unless ``resume``
        or ``settings.overwrite``) and a write probe of the checkpoint folder; returns the
        device."""
        s = self.settings
        if s.threads:
            torch.set_num_threads(s.threads)
        if s.deterministic:
            torch.use_deterministic_algorithms(True)
        self.device = resolve_device(s.device)
        if self.device.type == "cpu":
            # reuse freed activation memory between steps instead of faulting fresh pages in
            # (about 8% of a small-config CPU step; xfm.core.cpu_memory)
            from xfm.core.cpu_memory import keep_freed_memory

            keep_freed_memory()
        self.autocast = autocast_factory(self.device, s.precision)
        init_distributed(self.device)
        self.print = self._print_fn if is_main_process() else (lambda _: None)
        self.rank, self.world = get_rank(), get_world_size()
        if is_main_process():
            prepare_run_dir(self.run_dir, self.ckpt_dir, resume=bool(resume), overwrite=s.overwrite)
            check_writable(self.ckpt_dir)  # a wrong bucket fails now, not after training
        return self.device

    # ----------------------------------------------------------------------- wrapping
    def prepare(
        self,
        model: nn.Module,
        module: nn.Module,
        build_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
        build_scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler],
        *,
        probe: Callable[[], torch.Tensor] | None = None,
        find_unused_parameters: bool = False,
        generator: torch.Generator | None = None,
    ) -> Wrapped:
        """Wrap ``module`` (which holds ``model``, or is it), build optimizer and schedule.

        Args:
            model: the model whose state is saved and exported.
            module: what a training forward calls (``model`` or a loss module around it).
            build_optimizer: gets the trainable (wrapped) module.
            build_scheduler: gets the optimizer.
            probe: the loss of one probe step (the job restores its data and RNG
                afterwards); the parameters it does not reach are frozen so that DDP needs no
                ``find_unused_parameters``. Run in a single process too, so that the trainable
                parameters, hence the optimizer state, are the same on any number of ranks
                (a checkpoint resumes on another number; a parameter without gradient is
                left unchanged by the optimizer either way).
            find_unused_parameters: DDP's switch instead of the probe.
            generator: the job's own random generator (checkpointed with the RNG states).
        """
        s = self.settings
        self.model = model
        if probe is not None:
            self.frozen = freeze_unreached(model, probe())
            if self.frozen:
                self.print(
                    "excluded from training (no enabled objective reaches them): "
                    f"{frozen_groups(self.frozen)}"
                )
        self.wrapped = wrap(module, self.device, s.distributed, s.compile, find_unused_parameters)
        if s.on_nonfinite == "skip_step" and self.wrapped.mode != "none":
            raise UserError(
                f"optim.on_nonfinite=skip_step needs a single process (this run is "
                f"{self.wrapped.mode} on {self.world} ranks, whose steps must agree); use "
                f"on_nonfinite=stop and resume with a lower optim.lr after a non-finite loss"
            )
        self.optimizer = build_optimizer(self.wrapped.trainable)
        self.scheduler = build_scheduler(self.optimizer)
        self.scaler = make_scaler(s.precision)
        self.stepper = Stepper(
            self.wrapped,
            self.optimizer,
            self.scheduler,
            self.autocast,
            self.scaler,
            s.accumulate,
            s.grad_clip,
            s.on_nonfinite,
        )
        self.checkpoints = Checkpoints(
            self.ckpt_dir,
            s.checkpoint_keep,
            model,
            self.wrapped,
            self.optimizer,
            self.scheduler,
            self.scaler,
            generator,
        )
        return self.wrapped

    @property
    def forward(self) -> Callable:
        """The wrapped (DDP / FSDP / compiled) module's forward."""
        return self.wrapped.forward

    # -------------------------------------------------------------------------- state
    def resume(
        self,
        target: bool | str,
        config: dict[str, Any],
        load_loader: Callable[[Any], None] | None = None,
    ) -> Resumed | None:
        """Continue from a checkpoint (``True``: the run's newest; a URL; ``False``: no)."""
        resumed = self.checkpoints.resume(target, config, load_loader)
        if resumed is not None:
            self.step = resumed.step
            self.history = resumed.history
            self.resume_step = resumed.step
            self.skipped_steps = int(resumed.engine.get("skipped_steps", 0))
            self.saved_step = resumed.step
            self.finished = self.step >= self.settings.steps
            if self.finished:
                self.print(
                    f"{resumed.url} is the end of a finished run (step {self.step} of "
                    f"{self.settings.steps}): nothing to do, nothing changed. To train further, "
                    f"resume with a larger steps=."
                )
            else:
                self.print(f"resumed from {resumed.url} at step {self.step}")
        return resumed

    def save_checkpoint(self, loader: Any, config: dict[str, Any]) -> str | None:
        """Training state after ``self.step`` steps (collective; URL on rank 0)."""
        url = self.checkpoints.save(
            self.step, loader, config, self.history, {"skipped_steps": self.skipped_steps}
        )
        self.saved_step = self.step
        return url

    def model_state(self) -> dict[str, torch.Tensor]:
        """Full model state on rank 0 (collective under FSDP)."""
        return self.checkpoints.model_state()

    def export(self, url: str, metadata: dict[str, Any]) -> None:
        """Write the model weights as safetensors with ``metadata`` (collective under FSDP)."""
        weights = self.model_state()
        if is_main_process():
            export_weights(weights, url, metadata)

    @contextlib.contextmanager
    def full_model(self):
        """The full (unsharded under FSDP) model for evaluation code outside the forward."""
        if self.wrapped.mode == "fsdp":
            from xfm.train import fsdp

            with fsdp.unsharded(self.wrapped.trainable):
                yield self.model
        else:
            yield self.model

    # --------------------------------------------------------------------------- step
    def train_step(
        self, next_batch: NextBatch, compute: Compute, stages: Stages | None = None
    ) -> dict[str, float]:
        """One optimizer step; ``{"loss", parts..., "lr", "_samples"}`` (all ranks), with
        ``skipped_steps`` under ``on_nonfinite=skip_step``; a skipped step's values are
        ``{"lr", "skipped_steps", "_samples", "_skipped": the reason}`` (no losses).

        Raises:
            NonFiniteLossError: a non-finite loss under ``on_nonfinite=stop``.
        """
        try:
            result = self.stepper.step(next_batch, compute, stages)
        except NonFiniteLossError as err:
            if self.saved_step is not None:
                what = (
                    f"its newest checkpoint (step {self.saved_step}) is intact: --resume it "
                    f"with a lower optim.lr"
                )
            else:
                what = "no checkpoint was written yet: rerun with a lower optim.lr"
            raise err.at_step(
                self.step + 1,
                f" (optim.on_nonfinite=stop: the run stops; {what}, or set "
                f"optim.on_nonfinite=skip_step)",
            ) from None
        self.step += 1
        values: dict[str, Any] = {"loss": result.loss, **result.parts, "lr": result.lr}
        if result.skipped is not None:
            self.skipped_steps += 1
            values = {"lr": result.lr, "_skipped": result.skipped.at_step(self.step)}
        if self.settings.on_nonfinite == "skip_step":
            values["skipped_steps"] = float(self.skipped_steps)
        values["_samples"] = float(result.samples * self.world)
        return values

    # -------------------------------------------------------------------------- loop
    def log(self, step: int, values: dict[str, float]) -> None:
        """A metrics row (rank 0); the CSV's columns are ``self.columns`` or the first row's."""
        if not is_main_process():
            return
        if self.metrics is None:
            s = self.settings
            columns = self.columns or [k for k in values if not k.startswith("_")]
            if not self.columns and "skipped_steps" in values and "loss" not in columns:
                columns.insert(0, "loss")  # (a first row of a skipped step has no losses)
            self.metrics = MetricsLogger(self.run_dir, columns, s.tensorboard, self.resume_step)
        self.metrics.log(step, values)

    def fit(
        self,
        step: Callable[[], dict[str, float]],
        save: Callable[[], Any],
        *,
        evaluate: Callable[[], Any] | None = None,
        on_step: Callable[[dict[str, float]], None] | None = None,
        until: int | None = None,
    ) -> tuple[float, int]:
        """Run optimizer steps to ``settings.steps`` (or ``until``); returns (seconds, steps).

        Per step: ``step()`` (usually :meth:`train_step`; it must advance ``self.step``),
        throughput, non-finite check,
        history, metrics row, progress bar, ``on_step(values)``, ``evaluate()`` every
        ``eval_every`` steps (not at the last: the job evaluates at the end), ``save()`` every
        ``checkpoint_every``; ``save()`` again at the end unless the last step was just saved.
        """
        s = self.settings
        bar = None
        if s.progress and is_main_process():
            from tqdm import tqdm

            bar = tqdm(total=s.steps, initial=self.step, desc=s.name, dynamic_ncols=True)
        t0, start_step = time.perf_counter(), self.step
        window: list[tuple[float, float]] = []
        stop = s.steps if until is None else min(until, s.steps)
        try:
            while self.step < stop:
                ts = time.perf_counter()
                values = step()
                dt = time.perf_counter() - ts
                window = ([*window, (values.pop("_samples", 0.0), dt)])[-20:]
                values["samples_per_s"] = sum(n for n, _ in window) / max(
                    sum(d for _, d in window), 1e-9
                )
                skipped = values.pop("_skipped", None)
                if skipped is not None:
                    log.warning("%s: step skipped (optim.on_nonfinite=skip_step)", skipped)
                elif not math.isfinite(values["loss"]):
                    raise FloatingPointError(_non_finite(values, self.step))
                else:  # (a skipped step has no losses: kept out of the history)
                    self.history.append({"step": self.step, **values})
                if self.step % s.log_every == 0 or self.step == s.steps:
                    self.log(self.step, values)
                if bar is not None:
                    bar.set_postfix(_postfix(values))
                    bar.update(1)
                if on_step is not None:
                    on_step(values)
                if (
                    evaluate is not None
                    and s.eval_every
                    and self.step % s.eval_every == 0
                    and self.step < s.steps
                ):
                    evaluate()
                if s.checkpoint_every and self.step % s.checkpoint_every == 0:
                    save()
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - t0
        if not s.checkpoint_every or self.step % s.checkpoint_every:
            save()
        return elapsed, self.step - start_step

    def close_metrics(self) -> None:
        """Flush and close the metrics files (rank 0)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def close(self) -> None:
        """Close the metrics and leave the process group."""
        self.close_metrics()
        if is_distributed():
            barrier()
            torch.distributed.destroy_process_group()

"""One optimizer step: micro-steps (forward, backward, accumulation with ``no_sync``), then
gradient clipping, the optimizer and the learning-rate schedule.

The engine calls ``backward``, never the loss. A loss is given to :meth:`Stepper.step` as

* ``compute(batch) -> (total, parts)``: the whole loss of a batch in one forward (through the
  DDP/FSDP/compiled module), back-propagated once; and optionally
* ``stages(batch) -> iterator of Stage``: the same loss in stages, each back-propagated as soon
  as it is complete so that its graph is freed before the next stage runs (lower peak memory).
  Used with one process and no compile only (DDP and FSDP need one backward per forward).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from xfm.train import fsdp
from xfm.train.engine.runtime import Autocast
from xfm.train.engine.wrapping import Wrapped
from xfm.train.nonfinite import NONFINITE_POLICIES, NonFiniteLossError, check_finite

__all__ = ["Stage", "StepResult", "Stepper"]


class Stage(Protocol):
    """One stage of a staged loss: ``loss`` (scalar tensor to back-propagate, weighted) and
    ``parts`` (detached per-loss values, ``"source/name"``)."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


#: ``compute(batch) -> (total loss, {name: detached value})``.
Compute = Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
#: ``stages(batch) -> iterator of Stage``.
Stages = Callable[[Any], Iterator[Stage]]
#: ``next_batch() -> (batch on the device, number of samples)``.
NextBatch = Callable[[], tuple[Any, int]]


@dataclass
class StepResult:
    """What one optimizer step produced (losses averaged over the micro-steps)."""

    loss: float
    parts: dict[str, float]
    lr: float
    samples: int
    #: why the step was skipped (``on_nonfinite=skip_step``), else ``None``
    skipped: NonFiniteLossError | None = None


class Stepper:
    """Runs optimizer steps of ``accumulate`` micro-steps on a wrapped module.

    Args:
        wrapped: the result of :func:`xfm.train.engine.wrapping.wrap`.
        optimizer, scheduler: stepped once per optimizer step.
        autocast: the run's autocast factory (entered around forwards only).
        scaler: fp16 ``GradScaler`` or ``None``.
        accumulate: micro-steps per optimizer step; each micro-step's loss is divided by it,
            so mean-reduced losses give the gradient of one ``accumulate`` times larger batch.
        grad_clip: max global gradient norm (0: off).
        on_nonfinite: a non-finite loss (checked after each forward or stage, before its
            backward) ends the run (``stop``: :class:`NonFiniteLossError` propagates) or
            discards the step (``skip_step``: gradients zeroed, no optimizer or schedule step,
            the step's remaining micro-batches not read; :attr:`StepResult.skipped` says why).
    """

    def __init__(
        self,
        wrapped: Wrapped,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        autocast: Autocast,
        scaler: torch.amp.GradScaler | None = None,
        accumulate: int = 1,
        grad_clip: float = 0.0,
        on_nonfinite: str = "stop",
    ) -> None:
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"on_nonfinite must be one of {NONFINITE_POLICIES}; got {on_nonfinite!r}"
            )
        if accumulate < 1:
            raise ValueError(f"accumulate must be >= 1; got {accumulate}")
        self.wrapped = wrapped
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.autocast = autocast
        self.scaler = scaler
        self.accumulate = accumulate
        self.grad_clip = grad_clip
        self.on_nonfinite = on_nonfinite

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-step's (or stage's) loss, scaled by ``1/accumulate``."""
        loss = loss / self.accumulate
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def micro_step(
        self, batch: Any, compute: Compute, stages: Stages | None = None, sync: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and backward of one batch; returns the detached total and parts.

        ``sync=False`` skips DDP's gradient all-reduce (``no_sync``: every micro-step but the
        last of an optimizer step).
        """
        if self.wrapped.staged and stages is not None:
            return self._staged(batch, stages)
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
        trainable = self.wrapped.trainable
        if not sync and isinstance(trainable, nn.parallel.DistributedDataParallel):
            ctx = trainable.no_sync()
        with ctx:
            with self.autocast():
                total, parts = compute(batch)
            check_finite({**parts, "total": total})  # before backward
            self.backward(total)
        return total.detach(), parts

    def _staged(self, batch: Any, stages: Stages) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        it = stages(batch)
        while True:
            with self.autocast():
                stage = next(it, None)
            if stage is None:
                break
            check_finite({**stage.parts, "total": stage.loss})  # before backward
            self.backward(stage.loss)
            loss = stage.loss.detach()
            total = loss if total is None else total + loss
            parts.update(stage.parts)
        if total is None:
            raise ValueError("the loss produced no stage")
        return total, parts

    def step(
        self,
        next_batch: Callable[[], tuple[Any, int]],
        compute: Compute,
        stages: Stages | None = None,
    ) -> StepResult:
        """One optimizer step: ``accumulate`` micro-steps, clip, optimizer, schedule.

        A non-finite loss raises :class:`NonFiniteLossError` (``stop``) or returns a result
        with ``skipped`` set, ``loss`` NaN and no parts (``skip_step``).
        """
        try:
            return self._step(next_batch, compute, stages)
        except NonFiniteLossError as err:
            if self.on_nonfinite != "skip_step":
                raise
            self.optimizer.zero_grad(set_to_none=True)  # discard the step's gradients
            lr = self.scheduler.get_last_lr()[0]
            return StepResult(math.nan, {}, float(lr), 0, skipped=err)

    def _step(
        self,
        next_batch: Callable[[], tuple[Any, int]],
        compute: Compute,
        stages: Stages | None = None,
    ) -> StepResult:
        acc = self.accumulate
        total = None
        parts: dict[str, torch.Tensor] = {}
        samples = 0
        for i in range(acc):
            batch, n = next_batch()
            t, p = self.micro_step(batch, compute, stages, sync=i == acc - 1)
            total = t.float() / acc if total is None else total + t.float() / acc
            for k, v in p.items():
                parts[k] = parts.get(k, 0) + v.float() / acc
            samples += n
        if self.wrapped.mode == "fsdp":
            fsdp.sync_replicated_grads(self.wrapped.replicated)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:  # (FSDP: sharded DTensor grads; the norm is the global one)
            params = [p for p in self.wrapped.trainable.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        assert total is not None
        return StepResult(float(total), {k: float(v) for k, v in parts.items()}, float(lr), samples)

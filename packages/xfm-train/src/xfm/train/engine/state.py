"""Training-state checkpoints of a run: save (atomic, local / ``s3://`` / ``gs://``) and resume.

A checkpoint holds the model (full tensors, our names), optimizer (keyed by parameter name
under FSDP), scheduler, fp16 scaler, step, every rank's RNG (Python, NumPy, torch, the run's
generator), the data-loader state, the config and the recent history, written by rank 0 with
:mod:`xfm.train.checkpointing`. Restoring all of it continues a run bit-exactly on the same
number of ranks. On another number (elastic resume) the model, optimizer and schedule are full
states and the data position is global, so they continue exactly; rank ``r`` restores the
RNG state of rank ``r`` when the checkpoint has one and is reseeded otherwise
(:func:`rank_rng_state`, :func:`reseed_rank`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from xfm.core.checkpoint import CheckpointError, load_into
from xfm.train import fsdp
from xfm.train.checkpointing import (
    capture_rng,
    check_compatible,
    latest_checkpoint,
    load_training_state,
    prune_checkpoints,
    restore_rng,
    save_training_state,
)
from xfm.train.distributed import barrier, get_rank, get_world_size, is_distributed, is_main_process
from xfm.train.engine.wrapping import Wrapped

__all__ = ["Checkpoints", "Resumed", "rank_rng_state", "reseed_rank"]


def rank_rng_state(saved: Any, rank: int) -> dict[str, Any] | None:
    """The RNG state that ``rank`` restores from a checkpoint's ``rng`` entry.

    ``saved`` is a list with one state per rank of the run that wrote it (or one state, from a
    single-process run). Rank ``r`` takes entry ``r`` when there is one, so that a resume on
    the same number of ranks, or on fewer, restores each remaining rank exactly; ``None`` for
    a rank the checkpoint has no state for (a resume on more ranks): see :func:`reseed_rank`.
    """
    states = saved if isinstance(saved, list) else [saved]
    return states[rank] if rank < len(states) else None


def reseed_rank(seed: int, rank: int, step: int, generator: torch.Generator | None = None) -> None:
    """Seed Python's, NumPy's and torch's generators and ``generator`` for a rank that a
    checkpoint has no RNG state for: deterministically from the run's ``seed``, the ``rank``
    and the resumed ``step`` (so a resume repeats neither a fresh run's streams nor another
    rank's)."""
    base = (seed * 1_000_003 + rank + 1) * 1_000_033 + step
    random.seed(base)
    np.random.seed(base % (1 << 32))
    torch.manual_seed(base % (1 << 63))
    if generator is not None:
        generator.manual_seed((base + 1) % (1 << 63))


@dataclass
class Resumed:
    """What a resume restored besides the module states."""

    url: str
    step: int
    loader: Any
    history: list[dict[str, float]] = field(default_factory=list)
    #: the engine's own counters (``skipped_steps``)
    engine: dict[str, Any] = field(default_factory=dict)


class Checkpoints:
    """Save and restore the training state of one run.

    Args:
        directory: checkpoint folder / URL.
        keep: newest step checkpoints kept (0: all).
        model: the unwrapped model (its state is what is saved).
        wrapped: the wrapped module (FSDP collectives need it).
        optimizer, scheduler, scaler: the run's.
        generator: the run's own random generator (saved with the RNG states).
    """

    def __init__(
        self,
        directory: str,
        keep: int,
        model: nn.Module,
        wrapped: Wrapped,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.directory = directory
        self.keep = keep
        self.model = model
        self.wrapped = wrapped
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.generator = generator

    def model_state(self) -> dict[str, torch.Tensor]:
        """Full model state (CPU tensors, our names) on rank 0, ``{}`` on the others (under
        FSDP a collective: call it on every rank)."""
        if self.wrapped.mode == "fsdp":
            return fsdp.full_model_state(self.wrapped.trainable)
        if not is_main_process():
            return {}
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def _optimizer_state(self) -> dict[str, Any]:
        if self.wrapped.mode == "fsdp":
            return fsdp.full_optimizer_state(self.wrapped.trainable, self.optimizer)
        return self.optimizer.state_dict()

    def save(
        self,
        step: int,
        loader: Any,
        config: dict[str, Any],
        history: list[dict[str, float]] | None = None,
        counters: dict[str, int] | None = None,
    ) -> str | None:
        """Write the state after ``step`` optimizer steps (rank 0) and prune old checkpoints.

        Collective under a process group (every rank's RNG is gathered). Returns the URL on
        rank 0, ``None`` elsewhere.
        """
        rng = capture_rng(self.generator)
        rngs: list[Any] = [rng]
        if is_distributed():
            rngs = [None] * get_world_size()
            torch.distributed.all_gather_object(rngs, rng)
        model_state = self.model_state()
        optimizer_state = self._optimizer_state()
        url = None
        if is_main_process():
            state = {
                "model": model_state,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "step": step,
                "rng": rngs if len(rngs) > 1 else rngs[0],
                "loader": loader,
                "config": config,
                "history": (history or [])[-1000:],
                "engine": dict(counters or {}),
            }
            url = save_training_state(state, self.directory, step)
            prune_checkpoints(self.directory, self.keep, step)
        barrier()
        return url

    def resume(
        self,
        target: bool | str,
        config: dict[str, Any],
        load_loader: Callable[[Any], None] | None = None,
    ) -> Resumed | None:
        """Restore the state of checkpoint ``target`` (``True``: the newest of the run's
        directory; a URL: that one; ``False``: nothing, returns ``None``).

        ``config`` (the current run's) must match the saved one in the sections that decide
        the result (:func:`xfm.train.checkpointing.check_compatible`); the intended changes
        it allows (``optim.lr``, weight decay...) are applied to the resumed optimizer and
        schedule. ``load_loader`` gets the saved data-loader state.
        """
        if not target:
            return None
        url = target if isinstance(target, str) else latest_checkpoint(self.directory)
        if url is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint in {self.directory!r} (no 'latest' file); "
                f"start without --resume"
            )
        state = load_training_state(url)
        check_compatible(state["config"], config, url)
        # the optimizer and schedule as this run's config built them: a resume may change
        # their hyper-parameters (RESUME_CHANGEABLE), which loading the saved states undoes
        fresh_groups = [
            {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
        ]
        fresh_base = list(getattr(self.scheduler, "base_lrs", []))
        try:
            if self.wrapped.mode == "fsdp":
                fsdp.load_full_state(
                    self.wrapped.trainable, self.optimizer, state["model"], state["optimizer"]
                )
            else:
                load_into(self.model, state["model"], strict=True)
                self.optimizer.load_state_dict(state["optimizer"])
        except (CheckpointError, ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"cannot resume from {url!r}: {err}") from err
        self.scheduler.load_state_dict(state["scheduler"])
        self._reapply_hyperparameters(fresh_groups, fresh_base)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if load_loader is not None:
            load_loader(state["loader"])
        rng = rank_rng_state(state["rng"], get_rank())
        if rng is None:  # more ranks than the checkpoint has RNG states for
            reseed_rank(
                int(config.get("seed") or 0), get_rank(), int(state["step"]), self.generator
            )
        else:
            restore_rng(rng, self.generator)
        return Resumed(
            url,
            int(state["step"]),
            state["loader"],
            list(state.get("history", [])),
            dict(state.get("engine") or {}),
        )

    def _reapply_hyperparameters(
        self, fresh_groups: list[dict[str, Any]], fresh_base: list[float]
    ) -> None:
        """After loading the saved optimizer and schedule: give each param group the
        hyper-parameters of this run's config again (weight decay, betas, eps...), and when
        the base learning rates differ (``optim.lr`` changed on resume), scale each group's
        current lr by new base / saved base so that the schedule continues from the new peak."""
        groups = self.optimizer.param_groups
        if len(groups) != len(fresh_groups):
            return
        saved_base = list(getattr(self.scheduler, "base_lrs", []))
        for i, (group, fresh) in enumerate(zip(groups, fresh_groups, strict=True)):
            for key, value in fresh.items():
                if key not in ("lr", "initial_lr"):
                    group[key] = value
            if i < len(fresh_base) and i < len(saved_base) and fresh_base[i] != saved_base[i]:
                if saved_base[i]:
                    group["lr"] = group["lr"] * fresh_base[i] / saved_base[i]
                group["initial_lr"] = fresh_base[i]
        if fresh_base and len(fresh_base) == len(saved_base):
            self.scheduler.base_lrs = list(fresh_base)
            self.scheduler._last_lr = [g["lr"] for g in groups]

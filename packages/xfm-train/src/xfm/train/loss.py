"""The multi-objective pretraining loss of one optimizer step (SPEC section 2).

:class:`PretrainLoss` wraps the model so that DDP/FSDP see every encoder pass inside one
``forward``: it takes ``{source: batch}`` and returns the weighted sum of every enabled
objective of every source, plus the detached per-loss values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from xfm.core.registry import create
from xfm.train.objectives.base import Objective
from xfm.train.objectives.context import BatchContext

__all__ = ["PretrainLoss", "build_objectives"]

#: Objectives that must run after the others of a source (they reuse cached states).
_LAST = ("mim",)


def build_objectives(
    objectives: Mapping[str, float], options: Mapping[str, Mapping[str, Any]], source: str
) -> list[tuple[str, float, Objective]]:
    """Instantiate ``{name: weight}`` from the ``xfm.objective`` registry for ``source``.

    Returns ``[(name, weight, objective)]`` ordered so that MIM comes last (it reuses the
    unmasked vision output the others computed).
    """
    unknown = set(options) - set(objectives)
    if unknown:
        raise ValueError(
            f"source {source!r}: options given for objectives {sorted(unknown)} that are not "
            f"enabled (enabled: {sorted(objectives)})"
        )
    out = []
    for name, weight in objectives.items():
        obj = create("objective", name, **dict(options.get(name, {})))
        obj.check_source(source)
        out.append((name, float(weight), obj))
    out.sort(key=lambda item: item[0] in _LAST)
    return out


class PretrainLoss(nn.Module):
    """``forward({source: batch}) -> (total_loss, {"source/loss": value})``.

    Args:
        model: the :class:`~xfm.fusion.XFM`.
        objectives: per source, ``[(name, weight, objective)]`` (:func:`build_objectives`).
        source_weights: per source, a factor on all its losses.
        generator: random generator of the ITM hard negatives (saved in checkpoints).
        id_aware: pass ``image_index`` of image-text batches as sample ids.
    """

    def __init__(
        self,
        model: nn.Module,
        objectives: Mapping[str, list[tuple[str, float, Objective]]],
        source_weights: Mapping[str, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.objectives = dict(objectives)
        self.source_weights = dict(source_weights or {})
        self.generator = generator

    def forward(
        self,
        batches: Mapping[str, Any],
        backward: Callable[[torch.Tensor], None] | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted loss sum of one step and its parts (detached, ``"source/name"``).

        Args:
            batches: ``{source: batch}``.
            backward: staged mode (one process, no DDP/FSDP): called on the partial loss of
                every stage, as soon as it is complete, so that its graph is freed before the
                next stage runs. Stages: per source, the objectives that share the unmasked
                encoder passes, then MIM (whose target is the detached unmasked output). The
                gradients add up to those of the total; the returned total is detached.
            autocast: context manager factory entered around each stage's forward (staged
                mode; backward runs outside it).
        """
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        enter = autocast or contextlib.nullcontext
        for source, batch in batches.items():
            objectives = self.objectives.get(source)
            if not objectives:
                continue
            ctx = BatchContext.from_batch(self.model, source, batch, self.generator)
            sw = self.source_weights.get(source, 1.0)
            stages = [[o for o in objectives if o[0] not in _LAST]]
            stages.append([o for o in objectives if o[0] in _LAST])
            if backward is None:
                stages = [objectives]
            for stage in stages:
                if not stage:
                    continue
                stage_total: torch.Tensor | None = None
                with enter():
                    for _, weight, objective in stage:
                        for key, value in objective(self.model, ctx).items():
                            parts[f"{source}/{key}"] = value.detach()
                            term = value * (weight * sw)
                            stage_total = term if stage_total is None else stage_total + term
                assert stage_total is not None
                if backward is not None:
                    backward(stage_total)
                    stage_total = stage_total.detach()
                total = stage_total if total is None else total + stage_total
        if total is None:
            raise ValueError(f"no objective ran for sources {sorted(batches)}")
        return total, parts

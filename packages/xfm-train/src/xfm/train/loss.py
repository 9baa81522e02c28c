"""The multi-objective pretraining loss of one optimizer step (SPEC section 2).

:class:`PretrainLoss` takes ``{source: batch}`` and computes the weighted losses of every
enabled objective of every source, in two ways that give the same gradients:

- :meth:`PretrainLoss.stages` yields one :class:`StageLoss` per source and :class:`Stage`; the
  caller back-propagates each before asking for the next, so that each stage's graph is freed
  before the next stage builds its own (lower peak memory; the trainer's single-process mode).
  The loss module never calls ``backward`` itself.
- :meth:`PretrainLoss.forward` returns the summed loss and its parts in one call, for one
  backward: DDP, FSDP and ``torch.compile`` need every encoder pass inside one ``forward``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from xfm.core.registry import create
from xfm.train.nonfinite import NonFiniteLossError, check_finite
from xfm.train.objectives.base import Objective, Stage
from xfm.train.objectives.context import BatchContext

__all__ = ["PretrainLoss", "StageLoss", "WeightedObjective", "build_objectives"]


class WeightedObjective(NamedTuple):
    """One enabled objective of a source: its registry name, its weight and the instance."""

    name: str
    weight: float
    objective: Objective


@dataclass(frozen=True)
class StageLoss:
    """The losses of one stage of one source.

    Attributes:
        source: the data source.
        stage: the :class:`Stage` of the objectives that ran.
        loss: scalar weighted sum of their losses (with graph: back-propagate it).
        parts: detached unweighted losses keyed ``"source/name"``.
    """

    source: str
    stage: Stage
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


def build_objectives(
    objectives: Mapping[str, float], options: Mapping[str, Mapping[str, Any]], source: str
) -> list[WeightedObjective]:
    """Instantiate ``{name: weight}`` from the ``xfm.objective`` registry for ``source``.

    Returns the objectives ordered by their declared :attr:`Objective.stage` (stable: the
    configured order within a stage).
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
        out.append(WeightedObjective(name, float(weight), obj))
    return sorted(out, key=lambda item: item.objective.stage)


class PretrainLoss(nn.Module):
    """The weighted losses of every source's objectives (see the module docstring).

    Args:
        model: the :class:`~xfm.fusion.XFM`.
        objectives: per source, ``[(name, weight, objective)]`` (:func:`build_objectives`);
            ordered here by declared stage.
        source_weights: per source, a factor on all its losses.
        generator: random generator of the ITM hard negatives (saved in checkpoints).
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
        self.objectives = {
            source: sorted(
                (WeightedObjective(*item) for item in objs), key=lambda o: o.objective.stage
            )
            for source, objs in objectives.items()
        }
        self.source_weights = dict(source_weights or {})
        self.generator = generator

    def loss_names(self) -> list[str]:
        """Every ``"source/name"`` key of the parts, from the objectives' declared losses."""
        return [
            f"{source}/{loss}"
            for source, objs in self.objectives.items()
            for item in objs
            for loss in item.objective.losses
        ]

    def _sources(self, batches: Mapping[str, Any]) -> list[tuple[str, Any]]:
        ran = [(s, b) for s, b in batches.items() if self.objectives.get(s)]
        if not ran:
            raise ValueError(f"no objective ran for sources {sorted(batches)}")
        return ran

    def _weighted_sum(
        self, ctx: BatchContext, objectives: list[WeightedObjective]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``sum(weight * source weight * loss)`` of ``objectives`` and the detached parts."""
        sw = self.source_weights.get(ctx.source, 1.0)
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for name, weight, objective in objectives:
            try:
                out = objective(ctx)
            except NonFiniteLossError as err:  # e.g. ITM's sampling saw non-finite similarities
                raise err.in_source(ctx.source) from None
            if set(out) != set(objective.losses):
                raise ValueError(
                    f"objective {name!r} returned losses {sorted(out)} but declares "
                    f"{list(objective.losses)}"
                )
            # before the next objective consumes what this one computed (ITM samples its
            # negatives from the ITC similarities): a NaN is named here, as a loss
            check_finite({f"{ctx.source}/{key}": out[key] for key in objective.losses})
            for key in objective.losses:
                value = out[key]
                parts[f"{ctx.source}/{key}"] = value.detach()
                term = value * (weight * sw)
                total = term if total is None else total + term
        assert total is not None
        return total, parts

    def _context(self, source: str, batch: Any) -> BatchContext:
        return BatchContext(self.model, source, batch, generator=self.generator)

    def stages(self, batches: Mapping[str, Any]) -> Iterator[StageLoss]:
        """Yield the :class:`StageLoss` of each source (in ``batches`` order) and stage.

        A stage's encoder passes run when it is requested (wrap ``next()`` in autocast); call
        ``backward`` on its ``loss`` before requesting the next one so that its graph is freed
        first. Stages of one source share the context: MIM (:attr:`Stage.REUSE`) reads the
        unmasked vision output of the main stage, detached. The gradients of all stages add up
        to those of :meth:`forward`'s total.

        Args:
            batches: ``{source: batch}``.
        """
        for source, batch in self._sources(batches):
            ctx = self._context(source, batch)
            for stage, group in itertools.groupby(
                self.objectives[source], key=lambda o: o.objective.stage
            ):
                loss, parts = self._weighted_sum(ctx, list(group))
                yield StageLoss(source, stage, loss, parts)

    def forward(self, batches: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted loss sum of one step (with graph) and its parts (detached, ``"source/name"``).

        Args:
            batches: ``{source: batch}``.
        """
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for source, batch in self._sources(batches):
            source_total, source_parts = self._weighted_sum(
                self._context(source, batch), self.objectives[source]
            )
            parts.update(source_parts)
            total = source_total if total is None else total + source_total
        assert total is not None
        return total, parts

"""The objective protocol: a parameter-free consumer of a batch context that returns named losses.

An objective reads everything it needs from a
:class:`~xfm.train.objectives.context.BatchContext` (the typed batch plus lazily computed encoder
outputs; the context is the only caller of the model) and returns ``{loss_name: scalar}``. It
declares, as class attributes, the sources it applies to, the loss names it returns and the
:class:`Stage` it runs in, so that the loss module can group it and the trainer can name its
metric columns without knowing any objective by name.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from xfm.train.objectives.context import BatchContext

__all__ = ["Objective", "Stage", "gather_masked", "masked_cross_entropy", "mlm_loss"]


class Stage(enum.IntEnum):
    """When an objective runs within one source's batch (lower first).

    In the trainer's single-process mode each stage of a source is back-propagated on its own,
    so that its graph is freed before the next stage builds one; the gradients add up to those
    of the summed loss.
    """

    #: Objectives that run the encoder passes with gradient (ITC, ITM, MLM, bbox).
    MAIN = 0
    #: Objectives that reuse, detached, what the main stage computed: MIM regresses to the
    #: unmasked vision output of the main stage (vision guidance) instead of encoding again.
    REUSE = 1


class Objective:
    """Base class of the pretraining objectives (entry-point group ``xfm.objective``).

    Subclasses set the class attributes and implement :meth:`__call__`.

    Attributes:
        name: the registry name.
        sources: the data sources the objective applies to.
        losses: the loss names :meth:`__call__` returns, in that order.
        stage: the :class:`Stage` the objective runs in.

    Objectives own no parameters (everything trainable lives in the :class:`~xfm.fusion.XFM`)
    and never call the model: encoder passes and heads go through the context, which runs each
    of them at most once per batch.
    """

    name: ClassVar[str] = ""
    sources: ClassVar[tuple[str, ...]] = ()
    losses: ClassVar[tuple[str, ...]] = ()
    stage: ClassVar[Stage] = Stage.MAIN

    def __call__(self, ctx: BatchContext) -> dict[str, torch.Tensor]:
        """``{loss_name: scalar}`` for every name of :attr:`losses`."""
        raise NotImplementedError

    def check_source(self, source: str) -> None:
        """Raise ``ValueError`` when this objective cannot run on ``source`` batches."""
        if source not in self.sources:
            raise ValueError(
                f"objective {self.name!r} applies to sources {list(self.sources)}, "
                f"not to {source!r}"
            )

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``[K, V]`` vs ``labels`` ``[K]`` (-100 ignored).

    Returns a graph-connected zero when no label is valid (instead of NaN).
    """
    valid = labels != -100
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100)


def mlm_loss(head: torch.nn.Module, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of an MLM ``head`` on ``rows`` ``[K, D]`` against ``labels`` ``[K]``.

    Heads with a fused ``loss(rows, labels)`` (:class:`xfm.core.layers.MLMHead`: one ``[K, V]``
    tensor instead of several) use it; others get :func:`masked_cross_entropy` of their
    logits. A graph-connected zero when ``K == 0``.
    """
    fused = getattr(head, "loss", None)
    if fused is None or not bool((labels != -100).all()):
        return masked_cross_entropy(head(rows), labels)
    if rows.shape[0] == 0:
        return head(rows).sum() * 0.0
    return fused(rows, labels)


def gather_masked(
    states: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States and labels of the valid masked slots only (sparse MLM head input).

    Args:
        states: ``[B, T, D]``.
        positions: ``[B, M]`` masked positions (padded slots arbitrary).
        labels: ``[B, M]`` labels, -100 at padded slots.

    Returns:
        ``([K, D], [K])`` for the ``K`` valid slots, in row-major slot order.
    """
    valid = labels != -100
    rows = torch.arange(states.shape[0], device=states.device)[:, None].expand_as(positions)
    return states[rows[valid], positions[valid].long()], labels[valid]

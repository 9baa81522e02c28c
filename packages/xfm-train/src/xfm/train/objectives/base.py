"""The objective protocol: a small object that owns no parameters and computes named losses."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from xfm.fusion.model import XFM
    from xfm.train.objectives.context import BatchContext

__all__ = ["Objective", "masked_cross_entropy"]


class Objective:
    """Base class of the pretraining objectives (entry-point group ``xfm.objective``).

    Subclasses set ``name`` and ``sources`` (the data sources they apply to) and implement
    :meth:`__call__`, which reads the shared, lazily computed states of one batch from a
    :class:`~xfm.train.objectives.context.BatchContext` and returns ``{loss_name: scalar}``.
    Objectives own no parameters: everything trainable lives in the :class:`~xfm.fusion.XFM`.
    """

    name: ClassVar[str] = ""
    sources: ClassVar[tuple[str, ...]] = ()

    def __call__(self, model: XFM, ctx: BatchContext) -> dict[str, torch.Tensor]:
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

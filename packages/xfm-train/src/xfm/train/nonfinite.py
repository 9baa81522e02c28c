"""Non-finite losses: the error that names them and the check that finds them.

A loss is checked right after the forward that produced it, before anything consumes it
(backward, or ITM's hard-negative sampling from the ITC similarities), so that a NaN is
reported as the non-finite value it is. What happens then is ``optim.on_nonfinite``'s choice
(:class:`xfm.train.engine.step.Stepper`): ``stop`` (the error ends the run) or ``skip_step``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["NONFINITE_POLICIES", "NonFiniteLossError", "check_finite", "first_non_finite"]

#: Values of ``optim.on_nonfinite``.
NONFINITE_POLICIES = ("stop", "skip_step")


class NonFiniteLossError(FloatingPointError):
    """A loss (or a value a loss is computed from) is NaN or infinite.

    Args:
        name: what is non-finite, e.g. ``"image_text/itc"``.
        value: its value (the first non-finite element of a tensor).
        step: the optimizer step being computed (1-based; ``None`` until the engine knows it).
        what: ``"loss"`` or what else it is (``"value"``).
        hint: appended to the message (what to do about it).
    """

    def __init__(
        self,
        name: str,
        value: float,
        step: int | None = None,
        what: str = "loss",
        hint: str = "",
    ) -> None:
        self.name, self.value, self.step, self.what = name, float(value), step, what
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"non-finite {what} {name} = {self.value}{at}{hint}")

    def in_source(self, source: str) -> NonFiniteLossError:
        """The same error with ``name`` prefixed by ``source/`` (unless it has a source)."""
        name = self.name if "/" in self.name.split(" ")[0] else f"{source}/{self.name}"
        return NonFiniteLossError(name, self.value, self.step, self.what)

    def at_step(self, step: int, hint: str = "") -> NonFiniteLossError:
        """The same error naming optimizer step ``step`` (and ending with ``hint``)."""
        return NonFiniteLossError(self.name, self.value, step, self.what, hint)


def first_non_finite(values: torch.Tensor) -> float | None:
    """The first non-finite element of ``values`` (any shape), or ``None`` (one host sync)."""
    bad = ~torch.isfinite(values.detach())
    if not bool(bad.any()):
        return None
    return float(values.detach()[bad].flatten()[0])


def check_finite(parts: Mapping[str, torch.Tensor | float], what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` naming the first non-finite value of ``parts``.

    Args:
        parts: ``{name: scalar tensor or float}``; tensors are checked with one host sync.
    """
    tensors = {k: v for k, v in parts.items() if isinstance(v, torch.Tensor)}
    if tensors:
        flat = torch.stack([v.detach().float().reshape(()) for v in tensors.values()])
        if bool(torch.isfinite(flat).all()):
            tensors = {}
    for name, value in parts.items():
        if name in tensors or not isinstance(value, torch.Tensor):
            v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            if not math.isfinite(v):
                raise NonFiniteLossError(name, v, what=what)

"""One golden set: how to build its official model, draw its inputs, compute its outputs.

:func:`generate` writes ``config.json``, ``model.safetensors``, ``inputs.safetensors``,
``outputs.safetensors`` (+ extra json files); :func:`verify` rebuilds a fresh official model,
loads ``model.safetensors`` with ``strict=True``, recomputes the outputs from the stored inputs
and returns the largest absolute difference to the stored outputs (expected 0.0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from official_harness import rerandomise, save_tensors, state_dict_copies, write_json
from safetensors.torch import load_file
from torch import nn

Tensors = dict[str, torch.Tensor]


@dataclass
class GoldenSet:
    """A golden set. ``build()`` returns the official model as constructed (seeded, eval mode);
    ``describe(model)`` the ``config.json`` dict; ``make_inputs(generator)`` the inputs;
    ``compute(model, inputs)`` the outputs; ``extras(model, inputs)`` extra json files."""

    name: str
    seed: int
    build: Callable[[], nn.Module]
    describe: Callable[[nn.Module], dict]
    make_inputs: Callable[[torch.Generator], Tensors]
    compute: Callable[[nn.Module, Tensors], Tensors]
    extras: Callable[[nn.Module, Tensors], dict[str, Any]] = field(default=lambda m, i: {})


def generate(spec: GoldenSet, out_dir: Path) -> Path:
    """Write the set into ``out_dir / spec.name``; returns that directory."""
    target = out_dir / spec.name
    target.mkdir(parents=True, exist_ok=True)
    model = spec.build()
    rerandomise(model, spec.seed + 1)
    inputs = spec.make_inputs(torch.Generator().manual_seed(spec.seed + 2))
    outputs = spec.compute(model, inputs)
    bad = [k for k, v in outputs.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{spec.name}: non-finite outputs {bad}")
    write_json(spec.describe(model), target / "config.json")
    save_tensors(state_dict_copies(model), target / "model.safetensors")
    save_tensors(inputs, target / "inputs.safetensors")
    save_tensors(outputs, target / "outputs.safetensors")
    for filename, obj in spec.extras(model, inputs).items():
        write_json(obj, target / filename)
    return target


def verify(spec: GoldenSet, out_dir: Path) -> float:
    """Max |recomputed - stored| over every output after a strict reload (0.0 expected)."""
    target = out_dir / spec.name
    model = spec.build()
    model.load_state_dict(load_file(str(target / "model.safetensors")), strict=True)
    inputs = load_file(str(target / "inputs.safetensors"))
    stored = load_file(str(target / "outputs.safetensors"))
    outputs = spec.compute(model, inputs)
    if set(outputs) != set(stored):
        raise ValueError(f"{spec.name}: output names differ: {sorted(set(outputs) ^ set(stored))}")
    worst = 0.0
    for k, want in stored.items():
        got = outputs[k].detach()
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(
                f"{spec.name}/{k}: {got.shape} {got.dtype} != {want.shape} {want.dtype}"
            )
        worst = max(
            worst, float((got.double() - want.double()).abs().max()) if got.numel() else 0.0
        )
    return worst

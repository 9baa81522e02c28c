"""``xfm check-official DIR``: reproduce the official X-FM outputs stored in a golden directory.

A golden directory holds ``config.json`` (dimensions of the official model and its ``task``;
none = pretraining), ``model.safetensors`` (official parameter names), ``inputs.safetensors``
and ``outputs.safetensors`` (what the official code computed for those inputs). The layout of
the ``task`` (:mod:`xfm.tasks.official`) builds our model from the config, imports the weights
and computes every output it can from the inputs; each output tensor is compared. The command
prints one line per tensor and exits 1 when any differs by more than
``atol + rtol * |official|``, or when an output is left unchecked without a stated reason.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from xfm.core.attention import use_backend
from xfm.core.checkpoint import CheckpointError
from xfm.core.cli import Command
from xfm.tasks.official.golden import read_golden_config
from xfm.tasks.official.layout import layout_for_golden

__all__ = ["CheckOfficialCommand", "Comparison", "check_official", "compare", "golden_outputs"]

GOLDEN_FILES = ("config.json", "model.safetensors", "inputs.safetensors", "outputs.safetensors")


@dataclass
class Comparison:
    """One output tensor: ``status`` is ``ok``, ``FAIL`` or ``skipped`` (with ``reason``)."""

    name: str
    status: str
    max_abs_diff: float | None = None
    reason: str = ""


def compare(
    computed: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    atol: float,
    rtol: float,
    skipped: dict[str, str],
) -> list[Comparison]:
    """Compare each expected tensor with ours (integers exactly)."""
    results = []
    for name in sorted(expected):
        want = expected[name]
        if name not in computed:
            reason = skipped.get(name, "")
            status = "skipped" if reason else "FAIL"
            results.append(
                Comparison(name, status, None, reason or "not computed, no reason given")
            )
            continue
        got = computed[name].detach().to(want.dtype)
        if got.shape != want.shape:
            results.append(
                Comparison(name, "FAIL", None, f"shape {tuple(got.shape)} != {tuple(want.shape)}")
            )
            continue
        if not want.is_floating_point():
            diff = float((got != want).sum())
            ok = diff == 0
            results.append(Comparison(name, "ok" if ok else "FAIL", diff, "integers: exact"))
            continue
        err = (got.double() - want.double()).abs()
        bound = atol + rtol * want.double().abs()
        ok = bool((err <= bound).all()) and bool(torch.isfinite(got).all())
        results.append(
            Comparison(name, "ok" if ok else "FAIL", float(err.max()) if err.numel() else 0.0)
        )
    for name in sorted(set(computed) - set(expected)):
        results.append(
            Comparison(name, "skipped", None, "computed, but not in outputs.safetensors")
        )
    return results


def golden_outputs(
    directory: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(computed outputs, {output: reason it is not computed})`` of a golden directory."""
    directory = Path(directory)
    golden = read_golden_config(directory)
    layout = layout_for_golden(golden)
    model = layout.load_golden(
        golden, load_file(str(directory / "model.safetensors")), str(directory)
    )
    inputs = load_file(str(directory / "inputs.safetensors"))
    return layout.golden_outputs(model, inputs, golden)


def check_official(
    directory: str | Path, atol: float = 1e-5, rtol: float = 1e-4, backend: str = "eager"
) -> list[Comparison]:
    """Run the official-parity check on a golden directory; returns one entry per tensor."""
    directory = Path(directory)
    missing = [f for f in GOLDEN_FILES if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a golden directory: missing {missing}")
    with use_backend(backend):
        computed, skipped = golden_outputs(directory)
    expected = load_file(str(directory / "outputs.safetensors"))
    return compare(computed, expected, atol, rtol, skipped)


class CheckOfficialCommand(Command):
    """``xfm check-official DIR``."""

    help = "reproduce the official X-FM outputs of a golden directory"
    description = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "directory", help="golden directory (config.json, model/inputs/outputs.safetensors)"
        )
        parser.add_argument(
            "--atol", type=float, default=1e-5, help="absolute tolerance (default: %(default)s)"
        )
        parser.add_argument(
            "--rtol", type=float, default=1e-4, help="relative tolerance (default: %(default)s)"
        )
        parser.add_argument(
            "--backend",
            default="eager",
            choices=["eager", "sdpa", "xformers", "auto"],
            help="attention backend (default: eager)",
        )

    def run(self, args: argparse.Namespace) -> int:
        try:
            results = check_official(args.directory, args.atol, args.rtol, args.backend)
        except (FileNotFoundError, NotImplementedError, ValueError, CheckpointError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        width = max(len(r.name) for r in results)
        for r in results:
            diff = "" if r.max_abs_diff is None else f"max|diff| = {r.max_abs_diff:.3e}"
            note = f"  ({r.reason})" if r.reason else ""
            print(f"{r.status:<7} {r.name:<{width}}  {diff}{note}")
        failed = [r.name for r in results if r.status == "FAIL"]
        checked = sum(r.status == "ok" for r in results)
        skipped = sum(r.status == "skipped" for r in results)
        print(
            f"{checked} passed, {len(failed)} failed, {skipped} skipped "
            f"(atol={args.atol}, rtol={args.rtol})"
        )
        return 1 if failed else 0

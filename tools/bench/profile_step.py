"""Where one xfm pretraining step's CPU time goes: ``torch.profiler`` by op, copies by shape.

Builds the step exactly as ``train_step.py``'s worker does (same model, objectives, batches,
staged backward, fused AdamW), runs ``--warmup`` steps, profiles ``--steps`` steps and prints

* the top ``--top`` ops by self CPU time (time, share, calls),
* the layout copies and dtype casts (``aten::copy_`` by input shape) with the bytes they move,
* the number of ATen calls and the bytes allocated per step,
* a JSON summary (``--json``) that two runs can be diffed on: op call counts and copy shapes are
  deterministic, so they compare changes on a shared machine where times are noise (fresh
  allocations are not free either: without ``--malloc keep`` large blocks come from ``mmap``
  and every first touch of a page faults).

    python tools/bench/profile_step.py --precision bf16 --threads 1
    python tools/bench/profile_step.py --step text --json > text.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from side_by_side import Parser
from train_step import CONFIGS, build_step

#: Bytes per element of the dtypes the profiler reports in ``input_types``.
_ITEMSIZE = {"float": 4, "c10::BFloat16": 2, "c10::Half": 2, "double": 8, "long int": 8}


def _numel(shape: list[int]) -> int:
    return math.prod(shape) if shape else 1


def copy_rows(events, op: str = "aten::copy_") -> list[dict[str, Any]]:
    """``op``'s averages by input shape: self time, calls, destination/source dtypes, MB moved."""
    rows = []
    for e in events:
        if e.key != op:
            continue
        shapes = [s for s in e.input_shapes if s]
        types = list(getattr(e, "input_types", []) or [])
        dst = shapes[0] if shapes else []
        dst_t = types[0] if types else ""
        src_t = types[1] if len(types) > 1 else ""
        moved = _numel(dst) * (_ITEMSIZE.get(dst_t, 4) + _ITEMSIZE.get(src_t, 4)) * e.count
        rows.append(
            {
                "shape": dst,
                "types": f"{src_t}->{dst_t}",
                "self_ms": e.self_cpu_time_total / 1e3,
                "calls": e.count,
                "mb_moved": moved / 2**20,
            }
        )
    rows.sort(key=lambda r: -r["self_ms"])
    return rows


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Profile ``args.steps`` steps after ``args.warmup``; the summary dict."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    built = build_step(args)
    step = built["step"]
    for _ in range(args.warmup):
        step()
    with torch_profile(
        activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True
    ) as prof:
        for _ in range(args.steps):
            step()
    # bytes allocated (an op's allocations net of what it freed, where positive)
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())
    by_op = [e for e in prof.key_averages() if e.key != "[memory]"]
    total = sum(e.self_cpu_time_total for e in by_op)
    ops = sorted(by_op, key=lambda e: -e.self_cpu_time_total)
    top = [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3 / args.steps,
            "share": e.self_cpu_time_total / total if total else 0.0,
            "calls": e.count // args.steps,
        }
        for e in ops
    ]
    copies = copy_rows(prof.key_averages(group_by_input_shape=True))
    for row in copies:
        row["self_ms"] /= args.steps
        row["calls"] //= args.steps
        row["mb_moved"] /= args.steps
    return {
        "step": args.step,
        "precision": args.precision,
        "threads": args.threads,
        "batch": args.batch,
        "torch": torch.__version__,
        "self_cpu_ms_per_step": total / 1e3 / args.steps,
        "ops": top,
        "copies": copies,
        "aten_calls": sum(e.count for e in by_op if e.key.startswith("aten::")) // args.steps,
        "allocated_mb": allocated / 2**20 / args.steps,
        "copy_calls": sum(r["calls"] for r in copies),
        "copy_mb": sum(r["mb_moved"] for r in copies),
    }


def print_summary(summary: dict[str, Any], top: int, copies: int) -> None:
    """The human-readable tables."""
    print(
        f"# {summary['step']} {summary['precision']}, {summary['threads']} thread(s), batch "
        f"{summary['batch']}: {summary['self_cpu_ms_per_step']:.0f} ms self CPU per step, "
        f"{summary['aten_calls']} aten calls, {summary['allocated_mb']:.0f} MB allocated"
    )
    print(f"{'op':<44}{'self ms':>10}{'share':>8}{'calls':>8}")
    for row in summary["ops"][:top]:
        print(f"{row['op'][:43]:<44}{row['self_ms']:>10.1f}{row['share']:>8.1%}{row['calls']:>8}")
    print(
        f"\n# aten::copy_ by shape: {summary['copy_calls']} calls, "
        f"{summary['copy_mb']:.0f} MB moved per step"
    )
    print(f"{'shape':<28}{'types':<34}{'self ms':>9}{'calls':>7}{'MB':>9}")
    for row in summary["copies"][:copies]:
        print(
            f"{str(row['shape'])[:27]:<28}{row['types'][:33]:<34}{row['self_ms']:>9.1f}"
            f"{row['calls']:>7}{row['mb_moved']:>9.0f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (user errors: one ``error: ...`` line, exit code 2)."""
    p = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--step", default="image_text", choices=["image_text", "text", "multi"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--config", default="small", choices=sorted(CONFIGS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="profiled steps (averaged)")
    p.add_argument("--backend", default=None, help="attention backend (default: auto)")
    p.add_argument("--no-staged", action="store_true", help="one backward of the summed loss")
    p.add_argument("--malloc", default="default", choices=["default", "keep"])
    p.add_argument("--top", type=int, default=25, help="ops printed")
    p.add_argument("--copies", type=int, default=20, help="copy shapes printed")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")
    args = p.parse_args(argv)
    for name in ("threads", "batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1; got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0; got {args.warmup}")
    args.device = "cpu"
    return args


def main(argv: list[str] | None = None) -> None:
    """Profile and print (or ``--json``)."""
    args = parse_args(argv)
    summary = profile(args)
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary, args.top, args.copies)


if __name__ == "__main__":
    main()

"""Benchmark: xfm BEiT-v2 encoder vs timm ``beitv2_base_patch16_224`` (same config).

Measures images/s of the forward pass (eval, no grad) and of forward+backward (train mode with
drop path and dropout at 0, loss = mean of the features), in float32 and in bfloat16 autocast,
with the SDPA and the eager attention backend (timm: its ``fused_attn`` switch; xfm:
``xfm.core.attention.use_backend``), plus the peak memory of each run. Every measurement runs in
its own subprocess, so the peak resident memory (CPU) is that run's alone; on CUDA the peak is
``torch.cuda.max_memory_allocated``.

Both models compute the same features (``output="cls"`` is timm's ``forward_features``; the
parity tests in packages/xfm-vision prove it), so the numbers compare implementations only.

Usage::

    python tools/bench/vision_encoder.py            # B=32, 224px, 1 warm-up + 3 timed steps
    python tools/bench/vision_encoder.py --quick    # B=8, 1 warm-up + 2 timed steps
    python tools/bench/vision_encoder.py --backends sdpa --dtypes fp32 --modes fwd
    python tools/bench/vision_encoder.py --rounds 2   # best of 2 sweeps (shared machines)

Never run it while tests run: on a 2-core machine the numbers would mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

MODELS = ("xfm", "timm")
DEFAULT_MODELS = ("xfm", "timm")
BACKENDS = ("sdpa", "eager")
DTYPES = ("fp32", "bf16")
MODES = ("fwd", "fwd+bwd")


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc), or 0 when unavailable."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build(model: str, image_size: int, backend: str):
    """``(callable, module, backend context factory)`` for one model."""
    if model == "timm":
        import timm

        net = timm.create_model(
            "beitv2_base_patch16_224", pretrained=False, num_classes=0, img_size=image_size
        )
        for m in net.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = backend == "sdpa"
        return net.forward_features, net, contextlib.nullcontext
    from xfm.core.attention import use_backend
    from xfm.vision import BEiTv2

    net = BEiTv2(image_size=image_size, output="cls", drop_path_rate=0.0)
    return net, net, lambda: use_backend(backend)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One (model, backend, dtype, mode) measurement in this process."""
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fn, net, backend_ctx = build(args.model, args.image_size, args.backend)
    net.to(device)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    train = args.mode == "fwd+bwd"
    net.train(train)

    def autocast() -> contextlib.AbstractContextManager:
        if args.dtype == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step() -> None:
        with backend_ctx(), autocast():
            if train:
                out = fn(images)
                out.float().mean().backward()
            else:
                with torch.no_grad():
                    fn(images)
        if train:
            net.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    base_rss = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        extra = peak
    else:
        peak = _peak_rss_mb()
        extra = peak - base_rss
    median = statistics.median(times)
    return {
        "model": args.model,
        "backend": args.backend,
        "dtype": args.dtype,
        "mode": args.mode,
        "batch": args.batch,
        "image_size": args.image_size,
        "images_per_s": args.batch / median,
        "step_s": median,
        "times_s": times,
        "peak_mb": peak,
        "peak_over_model_mb": extra,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "torch": torch.__version__,
    }


def run_child(args: argparse.Namespace, **what: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--single",
        "--batch", str(args.batch),
        "--image-size", str(args.image_size),
        "--warmup", str(args.warmup),
        "--reps", str(args.reps),
        "--device", args.device,
        "--threads", str(args.threads or 0),
    ]  # fmt: skip
    for key, value in what.items():
        cmd += [f"--{key}", value]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({what}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per (backend, dtype, mode), xfm vs timm side by side."""
    head = "| backend | dtype | mode | xfm img/s | timm img/s | xfm / timm |"
    rule = "|---|---|---|---:|---:|---:|"
    rows = [head + " xfm peak MiB | timm peak MiB |", rule + "---:|---:|"]
    by_key = {(r["backend"], r["dtype"], r["mode"], r["model"]): r for r in results}
    for dtype in DTYPES:
        for mode in MODES:
            for backend in BACKENDS:
                ours = by_key.get((backend, dtype, mode, "xfm"))
                ref = by_key.get((backend, dtype, mode, "timm"))
                if ours is None or ref is None:
                    continue
                ratio = ours["images_per_s"] / ref["images_per_s"]
                row = (
                    f"| {backend} | {dtype} | {mode} | {ours['images_per_s']:.2f} | "
                    f"{ref['images_per_s']:.2f} | {ratio:.3f} |"
                )
                rows.append(
                    row + f" {ours['peak_over_model_mb']:.0f} | {ref['peak_over_model_mb']:.0f} |"
                )
    return "\n".join(rows)


def _combos(args: argparse.Namespace) -> Iterator[dict[str, str]]:
    for dtype in args.dtypes:
        for mode in args.modes:
            for backend in args.backends:
                for model in args.models:  # xfm and timm back to back: same machine state
                    yield {"model": model, "backend": backend, "dtype": dtype, "mode": mode}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="B=8, 1 warm-up, 2 timed steps")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        choices=MODELS,
    )
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole sweep and keep each configuration's best round (noisy machines)",
    )
    parser.add_argument(
        "--json", help="also write every measurement to this file (one JSON line each, as run)"
    )
    parser.add_argument(
        "--table-from", help="only print the table of a --json file (e.g. of an unfinished run)"
    )
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batch = args.batch or (8 if args.quick else 32)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.reps = args.reps or (2 if args.quick else 3)

    if args.single:
        print(json.dumps(measure(args)))
        return
    if args.table_from:
        with open(args.table_from) as f:
            runs = [json.loads(line) for line in f if line.strip()]
        best_of: dict[tuple[str, ...], dict[str, Any]] = {}
        for r in runs:
            key = (r["model"], r["backend"], r["dtype"], r["mode"])
            if key not in best_of or r["images_per_s"] > best_of[key]["images_per_s"]:
                best_of[key] = r
        print(table(list(best_of.values())))
        return
    best: dict[tuple[str, ...], dict[str, Any]] = {}
    for round_ in range(args.rounds):
        for what in _combos(args):
            r = run_child(args, **what)
            key = tuple(what.values())
            if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
                best[key] = r
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
            print(
                f"[round {round_ + 1}/{args.rounds}] {r['model']:>4} {r['backend']:>5} "
                f"{r['dtype']:>4} {r['mode']:>7}: {r['images_per_s']:7.2f} img/s  "
                f"peak +{r['peak_over_model_mb']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    results = list(best.values())
    first = results[0]
    print(
        f"\nBEiT-v2 base/16, B={args.batch}, {args.image_size}px, device {first['device']}, "
        f"{first['threads']} threads, torch {first['torch']}, median of {args.reps} steps "
        f"after {args.warmup} warm-up, best of {args.rounds} round(s); peak = memory above "
        "the built model\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()

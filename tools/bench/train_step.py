"""Throughput and peak memory of one X-FM pretraining step, side by side with the official code.

Configs: ``small`` = BEiT-v2 width 384, 6 layers, 6 heads, 224 px, patch 16; text and fusion
width 384, 6 layers each, 6 heads, vocabulary 50265; ``base`` = the same at width 768, 12 heads,
12 + 12 + 12 layers (the published model size; the official GPU benchmark's ``base``).
Captions of 30 tokens; batch 16 by default.

Steps:
  image_text  ITC + ITM (hard negatives) + fusion MLM + MIM on one image-text batch: the step
              the official benchmark times (``bench_official.py``, ``bench_official_gpu.py``)
  text        text MLM on a text batch (128 tokens, 20 masks)
  multi       one batch of every source: text, image_text, region (ITC/ITM/MLM/bbox), image (MIM)

Side by side: a speed figure means something only as a ratio to the official X-FM code measured
on the same machine in the same run. With ``--official DIR`` (default ``../shared/official_bench``
beside the repository, when present; ``--no-official`` to skip) the ``image_text`` rows alternate
with the official benchmark, per repeat: xfm fp32, official fp32, xfm bf16, official bf16. On CPU
the official rows run ``DIR/bench_official.py [--bf16]`` (small config only); on CUDA
``DIR/bench_official_gpu.py --runs CONFIG:BATCH:PRECISION``. Both sides get the same threads,
batch, warm-up and timed steps. Each xfm row carries ``official_pairs_per_s`` (same precision,
same repeat), the ratio ``vs_official``, both peak RSS figures and their ratio (each
subprocess's own maximum resident set, from ``os.wait4``), and for low-precision rows also the
ratio to the official fp32 row. ``--repeats N`` repeats the whole alternation; a summary row per
(step, precision) then gives the medians.

Each (step, precision) runs in a fresh subprocess so that its peak RSS is its own. The FLOPs of
one step are counted once per (step, precision) with ``torch.utils.flop_counter`` (matmuls and
attention) in a process of its own; ``fraction_of_measured_gemm`` is the step's FLOP rate over
the rate of its largest GEMM (``[batch * 197, width] @ [width, 4 * width]``) measured in the same
process just before the step (what this machine delivers right now) through
``xfm.core.layers.cpu_gemm``, the path the step's layers take (fp32 on CPU: oneDNN where
``cpu_gemm_backend()`` picks it, e.g. AMD CPUs with AVX-512, where PyTorch's MKL runs an AVX2
path; the row also carries ``gemm_fp32_torch_mm_gflops``, ``torch.mm``'s own rate, and
``cpu_gemm_backend``); ``--peak-gflops`` adds a fraction of a nominal peak.

bf16 on CPU needs bf16 units (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``); without
them autocast runs bf16 GEMMs slower than fp32, and the bf16 rows (xfm and official) say so
instead of a number, unless ``--force-bf16``.

    python tools/bench/train_step.py                       # table, CPU, 2 threads, vs official
    python tools/bench/train_step.py --json --steps image_text --repeats 3
    python tools/bench/train_step.py --steps image_text --precisions fp32 --no-official
    python tools/bench/train_step.py --device cuda --config base --batch 128 --precisions bf16
    python tools/bench/train_step.py --steps image_text --malloc default   # glibc's default

``--malloc keep`` (the default, as the trainer: ``Engine.start`` on CPU) calls
:func:`xfm.core.cpu_memory.keep_freed_memory` in the xfm worker (a process-wide glibc setting);
``--malloc default`` leaves glibc as it is. The official rows always run with glibc's default,
as the official training does.

Run it on an otherwise idle machine: on a shared 2-core machine the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from side_by_side import (
    Parser,
    cpu_bf16_units,
    default_official_dir,
    fail,
    last_json,
    own_hwm_mb,
    run_measured,
)

SMALL = {
    "embed_dim": 256,
    "text": {
        "name": "roberta",
        "vocab_size": 50265,
        "width": 384,
        "layers": 6,
        "heads": 6,
        "ffn_dim": 1536,
        "max_positions": 514,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "layer_norm_eps": 1e-5,
    },
    "vision": {
        "name": "beit_v2",
        "image_size": 224,
        "patch_size": 16,
        "width": 384,
        "layers": 6,
        "heads": 6,
        "mlp_ratio": 4.0,
    },
    "fusion": {"name": "cross_attention", "layers": 6, "heads": 6, "ffn_dim": 1536},
}
BASE = {
    "embed_dim": 256,
    "text": {**SMALL["text"], "width": 768, "layers": 12, "heads": 12, "ffn_dim": 3072},
    "vision": {**SMALL["vision"], "width": 768, "layers": 12, "heads": 12},
    "fusion": {"name": "cross_attention", "layers": 12, "heads": 12, "ffn_dim": 3072},
}
CONFIGS = {"small": SMALL, "base": BASE}
#: Precisions the official benchmarks have (CPU: fp32 and ``--bf16``; GPU: fp32, tf32, bf16).
OFFICIAL_PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16")}


def _batches(step: str, batch: int, device, generator):
    """Synthetic typed batches (same shapes and masking budgets as the official recipe)."""
    import torch

    from xfm.train.data.batches import ImageBatch, ImageTextBatch, RegionBatch, TextBatch

    g = generator
    vocab, n_patch = SMALL["text"]["vocab_size"], (224 // 16) ** 2  # same in both configs

    def caption_fields(b: int, t: int = 30, m: int = 15) -> dict:
        ids = torch.randint(3, vocab, (b, t), generator=g)
        ids[:, 0], ids[:, -1] = 0, 2
        mask = torch.ones(b, t, dtype=torch.long)
        pos = torch.stack([torch.randperm(t - 2, generator=g)[:m] + 1 for _ in range(b)])
        labels = ids.gather(1, pos)
        masked = ids.clone().scatter_(1, pos, vocab - 1)
        image = torch.randn(b, 3, 224, 224, generator=g)
        image_mask = torch.zeros(b, n_patch, dtype=torch.bool)
        for i in range(b):
            image_mask[i, torch.randperm(n_patch, generator=g)[:75]] = True
        return {
            "index": torch.arange(b),
            "keys": [str(i) for i in range(b)],
            "image": image,
            "image_mask": image_mask,
            "text_ids": ids,
            "text_mask": mask,
            "masked_ids": masked,
            "masked_pos": pos,
            "masked_labels": labels,
        }

    def text_batch(b: int, t: int = 128, m: int = 20) -> TextBatch:
        ids = torch.randint(3, vocab, (b, t), generator=g)
        labels = torch.full_like(ids, -100)
        pos = torch.stack([torch.randperm(t - 2, generator=g)[:m] + 1 for _ in range(b)])
        labels.scatter_(1, pos, ids.gather(1, pos))
        masked = ids.clone().scatter_(1, pos, vocab - 1)
        return TextBatch(
            index=torch.arange(b),
            keys=[str(i) for i in range(b)],
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mlm_input_ids=masked,
            mlm_labels=labels,
        )

    out = {}
    if step in ("text", "multi"):
        out["text"] = text_batch(batch)
    if step in ("image_text", "multi"):
        out["image_text"] = ImageTextBatch(image_index=torch.arange(batch), **caption_fields(batch))
    if step == "multi":
        f = caption_fields(batch)
        region = torch.zeros(batch, n_patch, dtype=torch.bool)
        region[:, :40] = True
        box = torch.tensor([[0.3, 0.2, 0.5, 0.35]]).repeat(batch, 1)
        out["region"] = RegionBatch(
            box=box, region_patch_mask=region, image_index=torch.arange(batch), **f
        )
        f = caption_fields(batch)
        out["image"] = ImageBatch(
            index=f["index"],
            keys=f["keys"],
            image=f["image"],
            image_mask=f["image_mask"],
            label=torch.zeros(batch).long(),
        )
    return {k: v.to(device) for k, v in out.items()}


def gemm_rate(
    dtype, device, m: int, k: int, n: int, seconds: float = 1.0, torch_mm: bool = False
) -> float:
    """GFLOP/s of one ``[m, k] x [k, n]`` GEMM (the step's largest shape) right now, through
    xfm's :func:`xfm.core.layers.cpu_gemm` (the path the step's layers take: oneDNN for fp32 on
    CPUs where :func:`~xfm.core.layers.cpu_gemm_backend` picks it), or ``torch.mm`` itself
    (``torch_mm``: PyTorch's BLAS for fp32 on CPU)."""
    import torch

    from xfm.core.layers import linear

    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(n, k, device=device).to(dtype)
    run = (lambda: a @ b.t()) if torch_mm else (lambda: linear(a, b))
    flop = 2 * m * k * n
    with torch.no_grad():
        run()  # warm-up (oneDNN/MKL primitive creation, cuBLAS handles)
        if device.type == "cuda":
            torch.cuda.synchronize()
        count, t0 = 0, time.perf_counter()
        while True:
            run()
            count += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds or count >= 1000:
                return count * flop / elapsed / 1e9


def build_step(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model, loss, optimizer and batches of one (step, precision) in this process.

    Returns a dict with ``step`` (one optimizer step), ``forward_backward`` (forward and
    backward only), ``pairs`` (pairs per step), ``model`` and ``device``. Also used by
    ``profile_step.py``.
    """
    import contextlib

    import torch

    from xfm.core.attention import set_default_backend
    from xfm.fusion.model import XFM, XFMConfig
    from xfm.train.config import OptimSection, default_objectives
    from xfm.train.loss import PretrainLoss, build_objectives
    from xfm.train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    if getattr(args, "malloc", "default") == "keep":
        from xfm.core.cpu_memory import keep_freed_memory

        keep_freed_memory()
    device = torch.device(args.device)
    config = CONFIGS[args.config]
    if args.backend:
        set_default_backend(args.backend)
    torch.manual_seed(0)
    model = XFM(XFMConfig(**config)).to(device).train()
    sources = {
        "text": ["text"],
        "image_text": ["image_text"],
        "multi": ["text", "image_text", "region", "image"],
    }[args.step]
    objectives = {s: build_objectives(default_objectives(s), {}, s) for s in sources}
    gen = torch.Generator().manual_seed(1)
    loss_module = PretrainLoss(model, objectives, None, gen)
    opt = build_optimizer(model, OptimSection(), device)
    batches = _batches(args.step, args.batch, device, torch.Generator().manual_seed(2))
    pairs = sum(len(b) for b in batches.values())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def backward(loss):
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def forward_backward():
        if args.no_staged:  # one backward of the total (as DDP needs)
            with autocast():
                total, _ = loss_module(batches)
            backward(total)
        else:  # the trainer's single-process mode: backward per stage, graphs freed early
            stages = loss_module.stages(batches)
            while True:
                with autocast():  # a stage's forward runs when it is requested
                    stage = next(stages, None)
                if stage is None:
                    break
                backward(stage.loss)

    def step():
        model.clamp_temp()
        forward_backward()
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.grad is not None], 1.0, foreach=True
        )
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return {
        "step": step,
        "forward_backward": forward_backward,
        "pairs": pairs,
        "model": model,
        "device": device,
    }


def worker(args: argparse.Namespace) -> dict:
    """Measure one (step, precision) of xfm in this process; return the result row."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    width = CONFIGS[args.config]["vision"]["width"]
    gemm_shape = (args.batch * 197, width, 4 * width)
    measured: dict[str, Any] = {}
    if not args.flops_only:
        measured["gemm_fp32_gflops"] = gemm_rate(torch.float32, device, *gemm_shape)
        if device.type == "cpu":
            from xfm.core.layers import cpu_gemm_backend

            measured["cpu_gemm_backend"] = cpu_gemm_backend()
            measured["gemm_fp32_torch_mm_gflops"] = gemm_rate(
                torch.float32, device, *gemm_shape, torch_mm=True
            )
        if args.precision != "fp32":
            low = torch.bfloat16 if args.precision == "bf16" else torch.float16
            measured[f"gemm_{args.precision}_gflops"] = gemm_rate(low, device, *gemm_shape)
    built = build_step(args)
    step, forward_backward, pairs = built["step"], built["forward_backward"], built["pairs"]

    if args.flops_only:  # counted in its own process: the counter's tensors raise the peak RSS
        with FlopCounterMode(display=False) as counter:
            forward_backward()
        return {"flops": counter.get_total_flops()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    row = {
        "impl": "xfm",
        "config": args.config,
        "device": device.type,
        "threads": args.threads,
        "precision": args.precision,
        "step": args.step,
        "batch_pairs": pairs,
        "pairs_per_s": pairs / median,
        "step_s": median,
        "step_times_s": times,
        "malloc": args.malloc,
        "self_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        **measured,
    }
    if device.type == "cuda":
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["gpu"] = torch.cuda.get_device_name()
    return row


def official_command(args: argparse.Namespace, official: Path, precision: str) -> list[str]:
    """The official benchmark's command line for one row (same threads/batch/steps as ours)."""
    if args.device.startswith("cuda"):
        return [
            args.official_python,
            str(official / "bench_official_gpu.py"),
            "--runs",
            f"{args.config}:{args.batch}:{precision}",
            "--warmup",
            str(args.warmup),
            "--steps",
            str(args.iters),
        ]
    cmd = [
        args.official_python,
        str(official / "bench_official.py"),
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.iters),
    ]
    return [*cmd, "--bf16"] if precision == "bf16" else cmd


def official_row(args: argparse.Namespace, official: Path, precision: str, env) -> dict[str, Any]:
    """Run the official benchmark once; its row (``error`` set when it failed)."""
    res = run_measured(official_command(args, official, precision), env, args.timeout)
    row: dict[str, Any] = {
        "impl": "official",
        "config": args.config,
        "device": args.device.split(":")[0],
        "threads": args.threads,
        "precision": precision,
        "step": "image_text",
        "peak_rss_mb": res["peak_rss_mb"],
    }
    got = last_json(res["stdout"])
    if res["returncode"] != 0 or got is None or "error" in got or "pairs_per_s" not in got:
        detail = (got or {}).get("error") or res["stderr"].strip()[-1500:] or res["stdout"][-500:]
        row["error"] = f"exit {res['returncode']}: {detail}"
        return row
    row["pairs_per_s"] = float(got["pairs_per_s"])
    row["step_s"] = float(got.get("median_step_s", args.batch / row["pairs_per_s"]))
    if "peak_rss_mb" in got:
        row["reported_peak_rss_mb"] = float(got["peak_rss_mb"])
    if "peak_mem_gb" in got:
        row["peak_cuda_mb"] = float(got["peak_mem_gb"]) * 1024
    for key in ("torch", "gpu", "step_times_s"):
        if key in got:
            row[key] = got[key]
    return row


def xfm_command(args: argparse.Namespace, step: str, precision: str) -> list[str]:
    """The worker command line of one xfm (step, precision)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--step",
        step,
        "--precision",
        precision,
        "--config",
        args.config,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--warmup",
        str(args.warmup),
        "--iters",
        str(args.iters),
    ]
    if args.backend:
        cmd += ["--backend", args.backend]
    cmd += ["--malloc", args.malloc]
    if args.no_staged:
        cmd.append("--no-staged")
    return cmd


def xfm_row(args: argparse.Namespace, step: str, precision: str, env) -> dict[str, Any]:
    """Run one xfm worker; its row (``error`` set when it failed)."""
    res = run_measured(xfm_command(args, step, precision), env, args.timeout)
    row = last_json(res["stdout"]) if res["returncode"] == 0 else None
    if row is None:
        return {
            "impl": "xfm",
            "config": args.config,
            "step": step,
            "precision": precision,
            "error": f"exit {res['returncode']}: {res['stderr'].strip()[-1500:]}",
        }
    row["peak_rss_mb"] = res["peak_rss_mb"]
    return row


def count_flops(args: argparse.Namespace, step: str, precision: str, env) -> float | None:
    """GFLOP of one xfm step, counted in a process of its own (``None`` if that failed).

    Counted with the BLAS GEMM path (``XFM_CPU_GEMM=blas``): ``torch.utils.flop_counter`` does
    not see oneDNN's linear op, and the FLOPs are the same either way."""
    env = {**(env if env is not None else os.environ), "XFM_CPU_GEMM": "blas"}
    res = run_measured([*xfm_command(args, step, precision), "--flops-only"], env, args.timeout)
    got = last_json(res["stdout"]) if res["returncode"] == 0 else None
    return None if got is None else got["flops"] / 1e9


def compare(row: dict[str, Any], same: dict | None, fp32: dict | None) -> None:
    """Add the official figures measured beside ``row`` (same precision; official fp32) to it."""
    if same is not None and "pairs_per_s" in same:
        row["official_pairs_per_s"] = same["pairs_per_s"]
        row["vs_official"] = row["pairs_per_s"] / same["pairs_per_s"]
        row["official_peak_rss_mb"] = same["peak_rss_mb"]
        row["rss_vs_official"] = row["peak_rss_mb"] / same["peak_rss_mb"]
        if "peak_cuda_mb" in same and "peak_cuda_mb" in row:
            row["official_peak_cuda_mb"] = same["peak_cuda_mb"]
            row["cuda_mem_vs_official"] = row["peak_cuda_mb"] / same["peak_cuda_mb"]
    elif same is not None:
        row["official_error"] = same.get("error") or same.get("skipped")
    if row["precision"] != "fp32" and fp32 is not None and "pairs_per_s" in fp32:
        row["official_fp32_pairs_per_s"] = fp32["pairs_per_s"]
        row["vs_official_fp32"] = row["pairs_per_s"] / fp32["pairs_per_s"]


def add_flop_rates(row: dict[str, Any], gflop: float | None, peak: float | None) -> None:
    """The step's GFLOP/s and its fraction of the GEMM rate measured in its process."""
    row["gflop_per_step"] = gflop
    if gflop is None or "step_s" not in row:
        return
    row["gflops_per_s"] = gflop / row["step_s"]
    gemm = row.get(f"gemm_{row['precision']}_gflops")
    row["fraction_of_measured_gemm"] = row["gflops_per_s"] / gemm if gemm else None
    if peak:
        row["fraction_of_peak"] = row["gflops_per_s"] / peak


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


HEADER = (
    f"{'step':<11}{'prec':<6}{'impl':<9}{'rep':>4}{'pairs/s':>9}{'vs off':>8}{'vs f32':>8}"
    f"{'step s':>8}{'RSS MB':>8}{'RSS/off':>8}{'GFLOP':>7}{'GFLOP/s':>9}{'GEMM now':>9}"
    f"{'of GEMM':>8}"
)


def table_line(row: dict[str, Any]) -> str:
    """One printed table line of a row (an error or skip says why instead of numbers)."""
    head = (
        f"{row['step']:<11}{row['precision']:<6}{row['impl']:<9}{_fmt(row.get('repeat'), 'd'):>4}"
    )
    if "skipped" in row:
        return f"{head}  skipped: {row['skipped']}"
    if "error" in row:
        return f"{head}  failed: {row['error'].splitlines()[-1][:300]}"
    gemm = row.get(f"gemm_{row['precision']}_gflops")
    mem = row.get("peak_cuda_mb", row.get("peak_rss_mb"))
    mem_ratio = row.get("cuda_mem_vs_official", row.get("rss_vs_official"))
    return (
        f"{head}{row['pairs_per_s']:>9.2f}{_fmt(row.get('vs_official'), '.2f'):>8}"
        f"{_fmt(row.get('vs_official_fp32'), '.2f'):>8}{row['step_s']:>8.2f}"
        f"{_fmt(mem, '.0f'):>8}{_fmt(mem_ratio, '.2f'):>8}"
        f"{_fmt(row.get('gflop_per_step'), '.0f'):>7}{_fmt(row.get('gflops_per_s'), '.1f'):>9}"
        f"{_fmt(gemm, '.1f'):>9}{_fmt(row.get('fraction_of_measured_gemm'), '.0%'):>8}"
    )


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (step, precision): medians over the repeats of xfm and official pairs/s and RSS."""
    out = []
    keys = dict.fromkeys((r["step"], r["precision"]) for r in rows if r["impl"] == "xfm")
    for step, precision in keys:

        def ok(impl: str, s=step, p=precision) -> list[dict[str, Any]]:
            return [
                r
                for r in rows
                if r["impl"] == impl
                and r["step"] == s
                and r["precision"] == p
                and "pairs_per_s" in r
            ]

        ours, theirs = ok("xfm"), ok("official")
        if not ours:
            continue
        row: dict[str, Any] = {
            "impl": "summary",
            "step": step,
            "precision": precision,
            "repeats": len(ours),
            "pairs_per_s": statistics.median(r["pairs_per_s"] for r in ours),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ours),
            "step_s": statistics.median(r["step_s"] for r in ours),
        }
        fractions = [
            r["fraction_of_measured_gemm"] for r in ours if r.get("fraction_of_measured_gemm")
        ]
        if fractions:
            row["fraction_of_measured_gemm"] = statistics.median(fractions)
        if theirs:
            row["official_pairs_per_s"] = statistics.median(r["pairs_per_s"] for r in theirs)
            row["vs_official"] = row["pairs_per_s"] / row["official_pairs_per_s"]
            row["official_peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in theirs)
            row["rss_vs_official"] = row["peak_rss_mb"] / row["official_peak_rss_mb"]
        if all("peak_cuda_mb" in r for r in ours + theirs):
            row["peak_cuda_mb"] = statistics.median(r["peak_cuda_mb"] for r in ours)
            if theirs:
                off = statistics.median(r["peak_cuda_mb"] for r in theirs)
                row["official_peak_cuda_mb"] = off
                row["cuda_mem_vs_official"] = row["peak_cuda_mb"] / off
        fp32 = ok("official", step, "fp32")
        if precision != "fp32" and fp32:
            row["official_fp32_pairs_per_s"] = statistics.median(r["pairs_per_s"] for r in fp32)
            row["vs_official_fp32"] = row["pairs_per_s"] / row["official_fp32_pairs_per_s"]
        out.append(row)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (user errors: one ``error: ...`` line, exit code 2)."""
    p = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--steps",
        nargs="+",
        default=["image_text", "text", "multi"],
        choices=["image_text", "text", "multi"],
    )
    p.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"]
    )
    p.add_argument("--config", default="small", choices=sorted(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3, help="timed steps per row (median)")
    p.add_argument("--repeats", type=int, default=1, help="repeat the whole alternation N times")
    p.add_argument(
        "--official",
        type=Path,
        default=None,
        help="folder of the official benchmarks (default: ../shared/official_bench when present)",
    )
    p.add_argument("--no-official", action="store_true", help="xfm rows only")
    p.add_argument(
        "--official-python",
        default=sys.executable,
        help="interpreter for the official scripts (needs torch, transformers<5, timm)",
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    p.add_argument("--backend", default=None, help="attention backend (default: auto)")
    p.add_argument("--peak-gflops", type=float, default=None, help="nominal peak, for a fraction")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument(
        "--force-bf16", action="store_true", help="run bf16 on a CPU without bf16 units anyway"
    )
    p.add_argument("--no-staged", action="store_true", help="one backward of the summed loss")
    p.add_argument(
        "--malloc",
        default="keep",
        choices=["default", "keep"],
        help="keep: xfm.core.cpu_memory.keep_freed_memory() in the xfm worker (glibc reuses "
        "freed blocks instead of faulting fresh pages every step)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--step", default="image_text", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--flops-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    cuda = args.device.startswith("cuda")
    if not cuda and args.device != "cpu":
        fail(f"--device must be cpu or cuda[:N]; got {args.device!r}")
    if not cuda and "fp16" in args.precisions:
        fail("fp16 needs --device cuda (use bf16 on CPU)")
    for name in ("threads", "batch", "iters", "repeats"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be at least 1; got {getattr(args, name)}")
    if args.warmup < 0:
        fail(f"--warmup must be >= 0; got {args.warmup}")
    if args.no_official:
        args.official = None
    elif args.official is None:
        args.official = default_official_dir()
    else:
        script = "bench_official_gpu.py" if cuda else "bench_official.py"
        if not (args.official / script).is_file():
            fail(f"--official {args.official}: no {script} there")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the rows (xfm and official alternating), print a table or JSON lines."""
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    cuda = args.device.startswith("cuda")
    units = None if cuda else cpu_bf16_units()
    no_bf16 = (
        None
        if cuda or args.force_bf16 or units is None or units
        else "no bf16 units on this CPU (neither amx_bf16 nor avx512_bf16 in /proc/cpuinfo); "
        "bf16 autocast would run slower than fp32 (--force-bf16 measures it anyway)"
    )
    official = args.official
    official_note = None
    if official is not None and not cuda and args.config != "small":
        official, official_note = None, "the official CPU benchmark has the small config only"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    load = os.getloadavg()[0]
    header = {
        "impl": "header",
        "device": args.device,
        "config": args.config,
        "threads": args.threads,
        "batch": args.batch,
        "warmup": args.warmup,
        "iters": args.iters,
        "repeats": args.repeats,
        "cpu_bf16_units": units,
        "official_dir": None if official is None else str(official),
        "official_note": official_note,
        "load_avg": load,
        "cpu_count": os.cpu_count(),
        # a child's peak RSS includes this process's at spawn time (see run_measured)
        "parent_hwm_mb": own_hwm_mb(),
    }
    if args.json:
        print(json.dumps(header), flush=True)
    else:
        bf16 = (
            "n/a (CUDA)" if cuda else ("unknown" if units is None else ", ".join(units) or "none")
        )
        print(
            f"# device {args.device}, config {args.config}, {args.threads} threads, batch "
            f"{args.batch}, median of {args.iters} steps after {args.warmup} warm-up, "
            f"{args.repeats} repeat(s); load average {load:.2f} on {os.cpu_count()} CPUs"
        )
        print(f"# CPU bf16 units: {bf16}")
        print(
            "# official: "
            + (official_note or (str(official) if official else "not run (--official DIR)"))
        )
        print(HEADER, flush=True)

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row) if args.json else table_line(row), flush=True)

    rows: list[dict[str, Any]] = []
    flops: dict[tuple[str, str], float | None] = {}
    for repeat in range(args.repeats):
        for step in args.steps:
            official_fp32 = None
            for precision in args.precisions:
                base = {"config": args.config, "step": step, "precision": precision}
                if precision == "bf16" and no_bf16:
                    emit({"impl": "xfm", "repeat": repeat, **base, "skipped": no_bf16})
                    continue
                row = xfm_row(args, step, precision, env)
                row["repeat"] = repeat
                same = None
                device_kind = "cuda" if cuda else "cpu"
                if (
                    official is not None
                    and step == "image_text"
                    and precision in OFFICIAL_PRECISIONS[device_kind]
                ):
                    same = official_row(args, official, precision, env)
                    same["repeat"] = repeat
                    if precision == "fp32":
                        official_fp32 = same
                if "error" not in row:
                    key = (step, precision)
                    if key not in flops:
                        flops[key] = None if args.no_flops else count_flops(args, *key, env)
                    add_flop_rates(row, flops[key], args.peak_gflops)
                    compare(row, same, official_fp32)
                    row["load_avg_after"] = os.getloadavg()[0]
                rows.append(row)
                emit(row)
                if same is not None:
                    rows.append(same)
                    emit(same)
    if args.repeats > 1:
        if not args.json:
            print("# medians over the repeats")
        for row in summarize(rows):
            emit(row)


if __name__ == "__main__":
    main()

"""Throughput and peak memory of one X-FM pretraining step (forward + backward + AdamW).

Configuration "small": BEiT-v2 width 384, 6 layers, 6 heads, 224 px, patch 16; text and fusion
width 384, 6 layers each, 6 heads, vocabulary 50265; captions of 30 tokens; batch 16.

Steps:
  image_text  ITC + ITM (hard negatives) + fusion MLM + MIM on one image-text batch (the step
              the official implementation was measured on: 2.40 pairs/s, 4,986 MB peak RSS,
              fp32, 2 threads, this machine kind)
  text        text MLM on a text batch (128 tokens, 20 masks)
  multi       one batch of every source: text, image_text, region (ITC/ITM/MLM/bbox), image (MIM)

Each (step, precision) runs in a fresh subprocess so that its peak RSS is its own. The FLOPs of
one step are counted with ``torch.utils.flop_counter`` (matmuls and attention). Two fractions
are printed: of the nominal GEMM peak (--peak-gflops; default the issue's figures for this machine
kind on 2 threads, 195 fp32 / 840 bf16) and of the GEMM rate *measured in the same process just
before the step* (the step's largest GEMM, 3152x384 @ 384x1536): the second says how close the
step gets to what this particular machine delivers right now (shared CPUs vary by 2x).

bf16 autocast on a CPU without bf16 instructions (AVX2 only) runs its GEMMs many times *slower*
than fp32; the worker measures that and reports the row as skipped with both GEMM rates, unless
--force-bf16.

    python tools/bench/train_step.py                       # table, CPU, 2 threads
    python tools/bench/train_step.py --json --steps image_text --precisions fp32
    python tools/bench/train_step.py --device cuda --precisions fp32 bf16 fp16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

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
PEAK_GFLOPS = {"fp32": 195.0, "bf16": 840.0, "fp16": 840.0}
OFFICIAL = {"pairs_per_s": 2.40, "peak_rss_mb": 4986.0}


def _batches(step: str, batch: int, device, generator):
    """Synthetic typed batches (same shapes and masking budgets as the official recipe)."""
    import torch

    from xfm.train.data.batches import ImageBatch, ImageTextBatch, RegionBatch, TextBatch

    g = generator
    vocab, n_patch = SMALL["text"]["vocab_size"], (224 // 16) ** 2

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


def gemm_rate(dtype, device, seconds: float = 1.0) -> float:
    """GFLOP/s of the step's largest GEMM shape (``[3152, 384] @ [384, 1536]``) right now."""
    import torch

    a = torch.randn(3152, 384, device=device).to(dtype)
    b = torch.randn(384, 1536, device=device).to(dtype)
    flop = 2 * 3152 * 384 * 1536
    a @ b  # warm-up (oneDNN/MKL primitive creation)
    n, t0 = 0, time.perf_counter()
    while True:
        a @ b
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds or n >= 1000:
            return n * flop / elapsed / 1e9


def worker(args: argparse.Namespace) -> dict:
    """Measure one (step, precision) in this process; return the result row."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from xfm.core.attention import set_default_backend
    from xfm.fusion.model import XFM, XFMConfig
    from xfm.train.config import OptimSection, default_objectives
    from xfm.train.loss import PretrainLoss, build_objectives
    from xfm.train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    measured: dict[str, float] = {}
    if not args.flops_only:
        measured["gemm_fp32_gflops"] = gemm_rate(torch.float32, device)
        if args.precision != "fp32":
            low = torch.bfloat16 if args.precision == "bf16" else torch.float16
            measured[f"gemm_{args.precision}_gflops"] = gemm_rate(low, device)
            if (
                device.type == "cpu"
                and measured[f"gemm_{args.precision}_gflops"] < measured["gemm_fp32_gflops"]
                and not args.force_bf16
            ):
                return {
                    "config": "small",
                    "device": device.type,
                    "threads": args.threads,
                    "precision": args.precision,
                    "step": args.step,
                    "skipped": (
                        f"{args.precision} GEMMs run at "
                        f"{measured[f'gemm_{args.precision}_gflops']:.1f} GFLOP/s here vs fp32 "
                        f"{measured['gemm_fp32_gflops']:.1f} (CPU capability "
                        f"{torch.backends.cpu.get_cpu_capability()}: no bf16 instructions); "
                        "--force-bf16 to run it anyway"
                    ),
                    **measured,
                }
    if args.backend:
        set_default_backend(args.backend)
    torch.manual_seed(0)
    model = XFM(XFMConfig(**SMALL)).to(device).train()
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
            loss_module(batches, backward, autocast)

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

    if args.flops_only:  # counted in its own process: the counter's tensors raise the peak RSS
        with FlopCounterMode(display=False) as counter:
            forward_backward()
        return {"flops": counter.get_total_flops()}
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    best = sorted(times)[len(times) // 2]  # median
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    row = {
        "config": "small",
        "device": device.type,
        "threads": args.threads,
        "precision": args.precision,
        "step": args.step,
        "batch_pairs": pairs,
        "pairs_per_s": pairs / best,
        "step_s": best,
        "peak_rss_mb": rss,
        **measured,
    }
    if device.type == "cuda":
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--steps",
        nargs="+",
        default=["image_text", "text", "multi"],
        choices=["image_text", "text", "multi"],
    )
    p.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"]
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--backend", default=None, help="attention backend (default: auto)")
    p.add_argument("--peak-gflops", type=float, default=None)
    p.add_argument("--no-flops", action="store_true")
    p.add_argument(
        "--force-bf16", action="store_true", help="run bf16 even where its GEMMs are slower"
    )
    p.add_argument("--no-staged", action="store_true", help="one backward of the summed loss")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--step", default="image_text", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--flops-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.device.startswith("cuda") is False and "fp16" in args.precisions:
        p.error("fp16 needs --device cuda (use bf16 on CPU)")
    load = os.getloadavg()[0]
    if not args.json:
        print(
            f"# load average {load:.2f} on {os.cpu_count()} CPUs; device {args.device}, "
            f"{args.threads} threads, batch {args.batch}, median of {args.iters} steps"
        )
        print(
            f"# official X-FM, image_text step, fp32: {OFFICIAL['pairs_per_s']} pairs/s, "
            f"{OFFICIAL['peak_rss_mb']:.0f} MB peak RSS"
        )
        print(
            f"{'step':<11}{'precision':<10}{'pairs/s':>9}{'vs off.':>9}{'step s':>8}"
            f"{'peak RSS MB':>13}{'GFLOP':>8}{'GFLOP/s':>9}{'of peak':>9}{'GEMM now':>10}"
            f"{'of GEMM':>9}"
        )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for step in args.steps:
        for precision in args.precisions:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--step",
                step,
                "--precision",
                precision,
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
            if args.no_staged:
                cmd.append("--no-staged")
            if args.peak_gflops:
                cmd += ["--peak-gflops", str(args.peak_gflops)]
            if args.force_bf16:
                cmd.append("--force-bf16")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"# {step} {precision} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            if "skipped" in row:
                print(
                    json.dumps(row)
                    if args.json
                    else f"{step:<11}{precision:<10}skipped: {row['skipped']}",
                    flush=True,
                )
                continue
            row["gflop_per_step"] = None
            if not args.no_flops:
                fp = subprocess.run([*cmd, "--flops-only"], env=env, capture_output=True, text=True)
                if fp.returncode == 0:
                    flops = json.loads(fp.stdout.strip().splitlines()[-1])["flops"]
                    row["gflop_per_step"] = flops / 1e9
                    row["gflops_per_s"] = flops / row["step_s"] / 1e9
                    peak = args.peak_gflops or PEAK_GFLOPS[precision]
                    row["fraction_of_peak"] = (
                        row["gflops_per_s"] / peak if args.device == "cpu" else None
                    )
                    gemm = row.get(f"gemm_{precision}_gflops")
                    row["fraction_of_measured_gemm"] = row["gflops_per_s"] / gemm if gemm else None
            row["load_avg"] = load
            row["load_avg_after"] = os.getloadavg()[0]
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            vs = (
                f"{row['pairs_per_s'] / OFFICIAL['pairs_per_s']:.2f}x"
                if step == "image_text"
                else ""
            )
            gf = row.get("gflop_per_step")
            frac = row.get("fraction_of_peak")
            gflop = "" if gf is None else f"{gf:.0f}"
            rate = "" if gf is None else f"{row['gflops_per_s']:.1f}"
            of_peak = "" if frac is None else f"{frac:.0%}"
            gemm = row.get(f"gemm_{precision}_gflops")
            of_gemm = row.get("fraction_of_measured_gemm")
            print(
                f"{step:<11}{precision:<10}{row['pairs_per_s']:>9.2f}{vs:>9}"
                f"{row['step_s']:>8.2f}{row['peak_rss_mb']:>13.0f}"
                f"{gflop:>8}{rate:>9}{of_peak:>9}"
                f"{'' if gemm is None else f'{gemm:.1f}':>10}"
                f"{'' if of_gemm is None else f'{of_gemm:.0%}':>9}",
                flush=True,
            )


if __name__ == "__main__":
    main()

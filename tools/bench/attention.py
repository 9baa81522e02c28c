"""Benchmark every attention backend this machine runs.

Shapes: B=32, H=12, Dh=64; self-attention with T in {30, 197, 577} and cross-attention with 30
queries over 197 keys; with and without a learned additive bias ``[H, Tq, Tk]`` (requires grad,
as BEiT's relative position bias); forward and forward+backward; fp32 and bf16.
Prints one table: milliseconds per call and the ratio to ``eager`` (lower is faster).

    python tools/bench/attention.py [--quick] [--reps N] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from xfm.core.attention import attention, runnable_backends


def _time(fn, reps: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _make_step(name, mode, q, k, v, mask, bias):
    qq, kk, vv = (t.detach().requires_grad_(mode != "fwd") for t in (q, k, v))

    def step():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "fwd":
                with torch.no_grad():
                    return attention(qq, kk, vv, key_mask=mask, bias=bias, backend=name)
            out = attention(qq, kk, vv, key_mask=mask, bias=bias, backend=name)
            out.sum().backward()
            return out

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="B=8 and one repetition")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.reps = 8, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backends = runnable_backends(device)
    if device.type == "cuda":
        backends.append("auto")
    h, dh, b = 12, 64, args.batch
    shapes = [("self", 30, 30), ("self", 197, 197), ("self", 577, 577), ("cross", 30, 197)]
    print(
        f"device={device} threads={torch.get_num_threads()} B={b} H={h} Dh={dh} backends={backends}"
    )
    header = f"{'dtype':<5} {'kind':<5} {'Tq':>4} {'Tk':>4} {'bias':<4} {'pass':<8}"
    print(header + "".join(f" {n + ' ms':>12} {'x eager':>8}" for n in backends))
    g = torch.Generator(device="cpu").manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for kind, tq, tk in shapes:
            for with_bias in (False, True):
                q = torch.randn(b, h, tq, dh, generator=g).to(device, dtype)
                k = torch.randn(b, h, tk, dh, generator=g).to(device, dtype)
                v = torch.randn(b, h, tk, dh, generator=g).to(device, dtype)
                mask = torch.ones(b, tk, dtype=torch.bool, device=device)
                mask[: b // 2, tk - tk // 4 :] = False  # half the batch padded
                bias = None
                if with_bias:
                    bias = torch.randn(h, tq, tk, generator=g).to(device, dtype).requires_grad_()
                for mode in ("fwd", "fwd+bwd"):
                    row = (
                        f"{str(dtype)[6:]:<5} {kind:<5} {tq:>4} {tk:>4} {with_bias!s:<4} {mode:<8}"
                    )
                    base = None
                    for name in backends:
                        step = _make_step(name, mode, q, k, v, mask, bias)
                        ms = _time(step, args.reps, device)
                        base = ms if name == "eager" else base
                        row += f" {ms:>12.2f} {ms / base:>8.2f}"
                    print(row, flush=True)


if __name__ == "__main__":
    main()

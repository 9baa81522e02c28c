"""Throughput of the xfm text encoder against Hugging Face ``BertModel`` at the same config.

Both models have the bert-base shape (12 layers, width 768, 12 heads, FFN 3072) and the same
weights; each runs with the same attention kernel (``sdpa`` or ``eager``), in float32 and under
bfloat16 autocast, on a padded batch (lengths between ``T/2`` and ``T``). ``forward`` is eval
mode without autograd; ``fwd+bwd`` is train mode (dropout on) with a backward pass of
``hidden.float().square().mean()``. The two models are timed alternately, one repetition each,
and the median time per repetition is reported as tokens (``B * T``) per second. The model
that runs first alternates between repetitions and configurations. ``--clock cpu`` measures the
CPU time of the process instead of elapsed time, for a CPU shared with other jobs.

Usage::

    python tools/bench/text_encoder.py --quick                # T=30 and 128, 1 warm-up, 2 reps
    python tools/bench/text_encoder.py --warmup 0 --reps 2    # slow CPUs
    python tools/bench/text_encoder.py --threads 1 --clock cpu  # a CPU busy with other jobs
    python tools/bench/text_encoder.py --device cuda --reps 20
    python tools/bench/text_encoder.py --lengths 30 --backends sdpa --precisions fp32

Needs ``transformers`` (the ``xfm-text[hf]`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from xfm.text import BertEncoder, from_hf


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch(batch: int, length: int, vocab: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids[:, 0] = 101
    ids[mask == 0] = 0
    return ids.to(device), mask.to(device)


def _step(model: torch.nn.Module, hf: bool, ids, mask, mode: str, precision: str, device):
    def run() -> None:
        if mode == "forward":
            with torch.inference_mode(), _autocast(device, precision):
                out = model(input_ids=ids, attention_mask=mask)
                if hf:
                    out = out.last_hidden_state
        else:
            model.zero_grad(set_to_none=True)
            with _autocast(device, precision):
                out = model(input_ids=ids, attention_mask=mask)
                if hf:
                    out = out.last_hidden_state
            out.float().square().mean().backward()
        _sync(device)

    return run


@contextlib.contextmanager
def _mode(models: list[torch.nn.Module], mode: str) -> Iterator[None]:
    for m in models:
        m.train(mode != "forward")
    yield


def _time_pair(
    ours: Callable[[], None],
    theirs: Callable[[], None],
    warmup: int,
    reps: int,
    tiny: tuple[Callable[[], None], Callable[[], None]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    ours_first: bool = True,
) -> tuple[float, float]:
    """Median seconds per call of ``ours`` and ``theirs``, run alternately; the model that
    runs first switches every repetition (and starts as ``ours_first`` says), so that costs
    paid by whichever runs first (fresh memory, caches) do not favour one of them."""
    if tiny is not None:  # first-call costs (thread pools, allocator) on a tiny batch
        for fn in tiny:
            fn()
    for _ in range(warmup):
        ours()
        theirs()
    times: dict[int, list[float]] = {0: [], 1: []}
    fns = (ours, theirs)
    for rep in range(reps):
        order = (0, 1) if (rep % 2 == 0) == ours_first else (1, 0)
        for i in order:
            start = clock()
            fns[i]()
            times[i].append(clock() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[30, 128])
    parser.add_argument("--backends", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--modes", nargs="+", default=["forward", "fwd+bwd"])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="full-size warm-up runs per configuration (a tiny-batch warm-up always runs)",
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 2 repetitions")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: CPU time of this process (for a CPU shared with other "
        "jobs; use with --threads 1)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.reps = 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu measures CPU time: use it with --device cpu")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(
        f"device={device} torch={torch.__version__} transformers={transformers.__version__} "
        f"threads={torch.get_num_threads()} B={args.batch} layers={args.layers} width=768 "
        f"warmup={args.warmup} reps={args.reps} (median) clock={args.clock}"
    )
    header = (
        f"{'T':>4} {'attention':>9} {'precision':>9} {'mode':>8} "
        f"{'xfm tok/s':>11} {'HF tok/s':>11} {'xfm/HF':>7}"
    )
    print(header)
    print("-" * len(header), flush=True)
    start = time.perf_counter()
    config_index = 0
    for backend in args.backends:
        cfg = transformers.BertConfig(num_hidden_layers=args.layers)
        cfg._attn_implementation = backend
        torch.manual_seed(0)
        hf = transformers.BertModel(cfg, add_pooling_layer=False).to(device)
        ours, _ = from_hf(hf, backend=backend)
        assert isinstance(ours, BertEncoder)
        ours.to(device)
        tiny_batch = _batch(2, 8, cfg.vocab_size, device)
        for length in args.lengths:
            ids, mask = _batch(args.batch, length, cfg.vocab_size, device)
            tokens = ids.numel()
            for precision in args.precisions:
                for mode in args.modes:
                    with _mode([hf, ours], mode):
                        t_ours, t_hf = _time_pair(
                            _step(ours, False, ids, mask, mode, precision, device),
                            _step(hf, True, ids, mask, mode, precision, device),
                            args.warmup,
                            args.reps,
                            tiny=(
                                _step(ours, False, *tiny_batch, mode, precision, device),
                                _step(hf, True, *tiny_batch, mode, precision, device),
                            ),
                            clock=clock,
                            ours_first=config_index % 2 == 0,
                        )
                    config_index += 1
                    print(
                        f"{length:>4} {backend:>9} {precision:>9} {mode:>8} "
                        f"{tokens / t_ours:>11.0f} {tokens / t_hf:>11.0f} {t_hf / t_ours:>7.2f}",
                        flush=True,
                    )
        del hf, ours
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

"""Retrieval evaluation speed: xfm's evaluation beside the official loop, same machine, same run.

    python tools/bench/retrieval_eval.py [--preset tiny|small|base] [--images 16] [--k 16]
        [--device cpu|cuda] [--precision fp32 bf16] [--official DIR | --no-official] [--json]

A randomly initialised retrieval model of the preset's dimensions evaluates N images x 5N
captions (random token ids; lengths drawn uniformly in ``--lengths``, default 8 to ``--max-len``
= 40, padded to ``--max-len``: the official benchmark's inputs). Presets: ``tiny`` = the
synthetic-task model (width 96, 32 px); ``small`` = the official ``bench_official_retrieval.py
--config small --res 224`` (widths 384, 6 vision, 6 text and 6 fusion layers, 6 heads, 224 px,
40 tokens); ``base`` = the official base task model (dims read off ``golden/keys/retrieval.txt``:
768 wide, 12 + 12 + 12 layers, 384 px; the official ``--config base``, res 384).

Printed (``--json``: one JSON line per precision as it is measured, ``"partial": "xfm"``, then
the whole report as the last line), per precision:

* xfm's :func:`xfm.tasks.retrieval.retrieval_scores`: encoding, ITC ranking and ITM re-ranking
  seconds, re-ranked pairs/s, and ``coco5k_estimate_s``: COCO 5k (5000 images, 25010 captions)
  at the run's k extrapolated as the official script does (encoding per item, every candidate
  pair of both directions at the measured pairs/s, no credit for pairs shared by the two
  directions); ``--k 256`` is the official COCO setting (and needs ``--images`` >= 256 for the
  official script, whose text-to-image top-k runs over the images);
* a check against the official *algorithm* run in this process on xfm's own weights (one fusion
  call per image with its k candidates and one per text, image states repeated per candidate,
  fp32), on ``--reference-sample`` images and texts: whether the candidate sets are identical,
  the share of the sample's candidates xfm also re-ranked (bf16 ITC can reorder near-ties) and
  the max |score difference| on those (fp32: within 1e-5);
* with the official code (``--official DIR``, default ``../shared/official_bench`` beside the
  repository when present): its own ``bench_official_retrieval.py`` at the preset's config and
  resolution, the same ``--images``, ``--k``, ``--max-len``, threads and encoding batch,
  re-ranking ``--reference-sample`` queries per direction (it extrapolates), run as a subprocess
  right after xfm's rows, and the ratio ``official coco5k_estimate_s / xfm coco5k_estimate_s``
  (> 1: xfm is faster). The official script prints timings only, never its scores, and builds
  its own random weights, so candidates and scores cannot be compared with it; the in-process
  check above covers them.

Run it on an otherwise idle machine: on a shared 2-core machine the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from side_by_side import Parser, default_official_dir, fail, last_json, run_measured

from xfm.tasks.retrieval import RetrievalModel, candidate_pairs, retrieval_scores

PRESETS = {
    "tiny": {
        "embed_dim": 64,
        "text": {
            "name": "roberta",
            "vocab_size": 1000,
            "width": 96,
            "layers": 2,
            "heads": 4,
            "ffn_dim": 256,
            "max_positions": 64,
            "dropout": 0.0,
            "attn_dropout": 0.0,
        },
        "vision": {
            "name": "beit_v2",
            "image_size": 32,
            "patch_size": 8,
            "width": 96,
            "layers": 3,
            "heads": 4,
            "mlp_ratio": 2.0,
        },
        "fusion": {
            "name": "cross_attention",
            "layers": 2,
            "heads": 4,
            "ffn_dim": 256,
            "dropout": 0.0,
            "attn_dropout": 0.0,
        },
    },
    # = the official ``bench_official_retrieval.py --config small --res 224``: widths 384,
    # 6 vision + 6 text + 6 fusion layers, 6 heads, RoBERTa vocabulary, 224 px
    "small": {
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
    },
}
#: The official script's ``--config`` and ``--res`` for a preset (``tiny`` has no counterpart).
OFFICIAL_PRESET = {"small": ("small", 224), "base": ("base", 384)}
#: COCO 5k test split (Karpathy): images, captions.
COCO_IMAGES, COCO_TEXTS = 5000, 25010

KEYS = Path(__file__).resolve().parents[2] / "packages/xfm-tasks/tests/data/keys/retrieval.txt"


def base_config() -> dict:
    from xfm.core.config import to_dict
    from xfm.fusion.official import infer_official_config
    from xfm.tasks.official import read_key_list

    state = {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in read_key_list(KEYS).items()}
    return to_dict(infer_official_config(state))


@torch.no_grad()
def official_loop(model, image_states, text_states, text_mask, sims, k, image_rows, text_rows):
    """The official evaluation loop on the given rows: one fusion call per image (its k texts)
    and per text (its k images), image states repeated per candidate (K/V recomputed)."""
    n_i, n_t = sims.shape
    out_i2t, out_t2i = {}, {}
    for i in image_rows:
        top = sims[i].topk(min(k, n_t)).indices
        enc = image_states[i].unsqueeze(0).repeat(len(top), 1, 1)
        fused = model.fuse(text_states[top], text_mask[top], enc)
        out_i2t[i] = (top, model.itm_logits(fused)[:, 1].float())
    for t in text_rows:
        top = sims[:, t].topk(min(k, n_i)).indices
        fused = model.fuse(
            text_states[t].unsqueeze(0).repeat(len(top), 1, 1),
            text_mask[t].unsqueeze(0).repeat(len(top), 1),
            image_states[top],
        )
        out_t2i[t] = (top, model.itm_logits(fused)[:, 1].float())
    return out_i2t, out_t2i


def official_run(args: argparse.Namespace, official: Path, threads: int) -> dict[str, Any]:
    """The official ``bench_official_retrieval.py`` at the preset's config; its JSON line plus
    ``peak_rss_mb`` (or ``error``)."""
    config, res = OFFICIAL_PRESET[args.preset]
    if args.k > args.images:  # its text-to-image top-k runs over the images
        return {"skipped": f"the official script needs --images >= --k ({args.k})"}
    cmd = [
        args.official_python,
        str(official / "bench_official_retrieval.py"),
        "--device", args.device,
        "--config", config,
        "--res", str(res),
        "--images", str(args.images),
        "--k", str(args.k),
        "--max_tokens", str(args.max_len),
        "--bs", str(args.batch),
        "--threads", str(threads),
        "--i2t_queries", str(min(args.reference_sample, args.images)),
        "--t2i_queries", str(min(args.reference_sample, 5 * args.images)),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    res_ = run_measured(cmd, env, args.timeout)
    got = last_json(res_["stdout"])
    if res_["returncode"] != 0 or got is None or "coco5k_estimate_s" not in got:
        return {"error": f"exit {res_['returncode']}: {res_['stderr'].strip()[-1500:]}"}
    # (its peak RSS is at least this process's, which Linux carries into a child: see run_measured)
    return {
        **got,
        "peak_rss_mb": res_["peak_rss_mb"],
        "parent_peak_rss_mb": res_["parent_peak_rss_mb"],
    }


def make_inputs(args: argparse.Namespace, size: int, vocab: int):
    """Images ``[N, 3, S, S]``, token ids and masks ``[5N, max_len]`` (official-like lengths)."""
    n_i, n_t = args.images, 5 * args.images
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randn(n_i, 3, size, size, generator=gen)
    ids = torch.randint(3, vocab - 1, (n_t, args.max_len), generator=gen)
    mask = torch.zeros(n_t, args.max_len, dtype=torch.long)
    lengths = torch.randint(args.lengths[0], args.lengths[1] + 1, (n_t,), generator=gen)
    for t, n in enumerate(lengths.tolist()):
        ids[t, 0], ids[t, n - 1], ids[t, n:] = 0, 2, 1
        mask[t, :n] = 1
    return images, ids, mask


def coco5k_estimate(encode_s: float, n_items: int, pairs: int, rerank_s: float, k: int) -> float:
    """COCO 5k seconds, extrapolated as the official script does: encoding per item, and every
    candidate pair of both directions (``(5000 + 25010) * k``, no credit for shared pairs) at
    the measured pairs/s. ``k`` is the run's (the official COCO setting is 256)."""
    rate = pairs / rerank_s
    encode = encode_s / n_items * (COCO_IMAGES + COCO_TEXTS)
    return encode + (COCO_IMAGES + COCO_TEXTS) * k / rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (user errors: one ``error: ...`` line, exit code 2)."""
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=40, help="official max_tokens (padding)")
    ap.add_argument(
        "--lengths",
        type=int,
        nargs=2,
        default=None,
        help="caption token counts drawn uniformly in this range (default 8 to --max-len, as "
        "the official benchmark)",
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument(
        "--reference-sample",
        "--official-sample",
        type=int,
        default=16,
        help="queries per direction re-ranked by the official algorithm (check and official run)",
    )
    ap.add_argument("--official", type=Path, default=None, help="official benchmark folder")
    ap.add_argument("--no-official", action="store_true")
    ap.add_argument("--official-python", default=sys.executable)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for the official run")
    ap.add_argument("--itm-batch", type=int, default=256)
    ap.add_argument("--kv-chunk", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64, help="encoding batch size")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings")
    ap.add_argument(
        "--malloc",
        default="keep",
        choices=["default", "keep"],
        help="keep (default, as xfm's CPU engine does for training and evaluation): "
        "xfm.core.cpu_memory.keep_freed_memory() in this process; the official script runs in "
        "its own process with glibc's defaults",
    )
    ap.add_argument("--json", action="store_true", help="JSON lines; the last is the report")
    args = ap.parse_args(argv)
    for name in ("images", "k", "max_len", "reference_sample", "batch", "repeats"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}")
    if args.max_len < 3:
        fail(f"--max-len must be at least 3; got {args.max_len}")
    args.lengths = args.lengths or [min(8, args.max_len), args.max_len]
    if not 3 <= args.lengths[0] <= args.lengths[1] <= args.max_len:
        fail(f"--lengths must satisfy 3 <= low <= high <= --max-len; got {args.lengths}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda: no CUDA device here")
    if args.no_official or args.preset not in OFFICIAL_PRESET:
        args.official = None
    elif args.official is None:
        args.official = default_official_dir()
    elif not (args.official / "bench_official_retrieval.py").is_file():
        fail(f"--official {args.official}: no bench_official_retrieval.py there")
    return args


def main(argv: list[str] | None = None) -> None:
    """Time xfm's evaluation (and the official script), check it, print or emit JSON."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    say = (lambda *a: None) if args.json else print
    device = torch.device(args.device)
    if device.type == "cpu" and args.malloc == "keep":
        from xfm.core.cpu_memory import keep_freed_memory

        keep_freed_memory()
    cfg = base_config() if args.preset == "base" else PRESETS[args.preset]
    torch.manual_seed(args.seed)
    model = RetrievalModel(cfg).to(device).eval()
    size = cfg["vision"]["image_size"]
    size = size if isinstance(size, int) else size[0]
    images, ids, mask = make_inputs(args, size, cfg["text"]["vocab_size"])
    n_i, n_t = images.shape[0], ids.shape[0]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    report: dict[str, Any] = {
        "preset": args.preset,
        "params_m": round(params, 1),
        "image_size": size,
        "device": str(device),
        "threads": threads,
        "images": n_i,
        "texts": n_t,
        "k": args.k,
        "max_len": args.max_len,
        "lengths": args.lengths,
        "malloc": args.malloc,
        "torch": torch.__version__,
        "xfm": {},
    }
    say(
        f"preset {args.preset} ({params:.1f}M params, {size}px), device {device}, "
        f"threads {threads}, {n_i} images x {n_t} texts, k={args.k}"
    )

    results = {}
    for precision in args.precision:
        if precision == "bf16":
            autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
        else:
            autocast = contextlib.nullcontext
        img_batches = [b.to(device) for b in images.split(args.batch)]
        txt_batches = list(zip(ids.split(args.batch), mask.split(args.batch)))
        retrieval_scores(
            model, img_batches[:1], txt_batches[:1], args.k, device=device, autocast=autocast
        )  # warm-up
        res = None
        for _ in range(args.repeats):  # best of N (shared machines)
            r = retrieval_scores(
                model,
                img_batches,
                txt_batches,
                args.k,
                device=device,
                autocast=autocast,
                itm_batch_size=args.itm_batch,
                kv_chunk=args.kv_chunk,
            )
            if res is None or sum(r.timings.values()) < sum(res.timings.values()):
                res = r
        results[precision] = res
        t = res.timings
        row = {
            "encode_s": t["encode"],
            "itc_rank_s": t["itc_rank"],
            "itm_rerank_s": t["itm_rerank"],
            "pairs": res.pairs,
            "pairs_per_s": res.pairs / t["itm_rerank"],
            "coco5k_estimate_s": coco5k_estimate(
                t["encode"], n_i + n_t, res.pairs, t["itm_rerank"], args.k
            ),
        }
        report["xfm"][precision] = row
        if args.json:  # progress (kept if a later part runs out of time); the report comes last
            print(json.dumps({"partial": "xfm", "precision": precision, **row}), flush=True)
        say(
            f"[xfm {precision}] encode {t['encode']:.2f}s  itc-rank {t['itc_rank']:.3f}s  "
            f"itm-rerank {t['itm_rerank']:.2f}s ({res.pairs} pairs, "
            f"{row['pairs_per_s']:.0f} pairs/s)  COCO 5k estimate "
            f"{row['coco5k_estimate_s'] / 60:.1f} min"
        )

    # the official algorithm, fp32, on a sample of rows, in this process on xfm's weights
    with torch.no_grad():
        v = torch.cat([model.encode_image(b.to(device)) for b in images.split(args.batch)])
        tx = torch.cat(
            [
                model.encode_text(a.to(device), m.to(device))
                for a, m in zip(ids.split(args.batch), mask.split(args.batch))
            ]
        )
        fi, ft = model.itc_features(v, tx)
        sims = fi @ ft.t()
    m = mask.to(device)
    rows_i = list(range(min(args.reference_sample, n_i)))
    rows_t = list(range(min(args.reference_sample, n_t)))
    official_loop(model, v, tx, m, sims, args.k, rows_i[:1], rows_t[:1])  # warm-up
    sync()
    t0 = time.perf_counter()
    o_i2t, o_t2i = official_loop(model, v, tx, m, sims, args.k, rows_i, rows_t)
    sync()
    ref_pairs = len(rows_i) * min(args.k, n_t) + len(rows_t) * min(args.k, n_i)
    report["reference_loop"] = {
        "queries": len(rows_i) + len(rows_t),
        "pairs_per_s": ref_pairs / (time.perf_counter() - t0),
    }
    i2t_mask, t2i_mask = candidate_pairs(sims.float(), args.k)
    for precision, res in results.items():
        same = torch.equal(res.score_i2t != -100.0, i2t_mask) and torch.equal(
            res.score_t2i.t() != -100.0, t2i_mask
        )
        diff, shared, total = 0.0, 0, 0
        for got_row, ref in ((res.score_i2t, o_i2t), (res.score_t2i, o_t2i)):
            for q, (top, s) in ref.items():
                got = got_row[q, top]
                both = got != -100.0  # candidates of the sample that xfm also re-ranked
                shared += int(both.sum())
                total += len(top)
                if both.any():
                    diff = max(diff, float((got[both] - s[both]).abs().max()))
        row = report["xfm"][precision]
        row["same_candidates"] = bool(same)
        row["candidate_overlap"] = shared / total
        row["max_score_diff"] = diff
        say(
            f"[xfm {precision} vs the official algorithm on xfm's weights] same candidates: "
            f"{same} ({shared / total:.1%} of the sample's); max |score diff| on shared "
            f"candidates {diff:.2e}"
        )

    first = args.precision[0]
    report["coco5k_estimate_s"] = report["xfm"][first]["coco5k_estimate_s"]
    if args.official is None:
        why = (
            "no official counterpart of this preset"
            if args.preset not in OFFICIAL_PRESET
            else "not run (--official DIR)"
        )
        report["official"] = {"skipped": why}
        say(f"[official] {why}")
    else:
        off = official_run(args, args.official, threads)
        report["official"] = off
        if "skipped" in off:
            say(f"[official] skipped: {off['skipped']}")
        elif "error" in off:
            say(f"[official] failed: {off['error'].splitlines()[-1][:300]}")
        else:
            report["official_coco5k_estimate_s"] = off["coco5k_estimate_s"]
            say(
                f"[official fp32] {off['fusion_pairs_per_s']:.0f} fusion pairs/s, COCO 5k "
                f"estimate {off['coco5k_estimate_s'] / 60:.1f} min"
            )
            for precision, row in report["xfm"].items():
                row["vs_official"] = off["coco5k_estimate_s"] / row["coco5k_estimate_s"]
                say(f"  xfm {precision}: {row['vs_official']:.2f}x the official loop's speed")
            report["vs_official"] = report["xfm"][first]["vs_official"]
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Zero-shot text-to-image search over a folder, with ``xfm search`` and from Python.

What it shows: a pretrained X-FM ranks the images of a folder for a text query in two stages,
the ITC similarity of every image, then the top ``--rerank`` images re-scored by the ITM head.
The example runs the command line (``xfm search --images DIR --checkpoint CKPT "query"``), then
the same search from Python (``xfm.tasks.search.search_images`` on the model loaded from the
checkpoint), and checks that both give the same ranking.

Without ``--run`` it uses ``runs/tiny`` of the README's first command, pretraining it first
when it holds no weights (``configs/pretrain/tiny.yaml``: it builds the synthetic shapes world
in ``data/synth`` on first use, then one to three minutes on a CPU); ``--quick`` pretrains 3
steps on a small synthetic set instead (seconds; a model that has learnt nothing, for CI)::

    pip install ./packages/xfm-core ./packages/xfm-text ./packages/xfm-vision \
        ./packages/xfm-fusion ./packages/xfm-train ./packages/xfm-tasks
    python examples/zero_shot_search.py "a small red circle"
    python examples/zero_shot_search.py --run runs/retrieval_tiny "a large blue square"
    python examples/zero_shot_search.py --quick

``--run`` takes a run folder (a retrieval run, or a pretraining run whose weights are in
``checkpoints/model.safetensors``) or a weights file; ``--tokenizer`` defaults to the
synthetic tokenizer (``data/synth/tokenizer``, or the quick set's).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pretrain" / "tiny.yaml"
XFM = [sys.executable, "-m", "xfm.core.cli"]  # the `xfm` command of this interpreter

#: Overrides of tiny.yaml for --quick: 3 steps on 48 images of 32 px.
QUICK = [
    "steps=3",
    "device=cpu",
    "data.synth.image_size=32",
    "data.synth.num_train=48",
    "data.synth.num_test=16",
    "data.synth.num_text=64",
    "data.synth.vocab_size=300",
    "data.process.image_size=32",
    "data.loader.num_workers=0",
    "eval.at_end=false",
    "log.progress=false",
    "log.tensorboard=false",
    "log.plot=false",
]


def run(cmd: list[str]) -> str:
    """Run ``cmd``, echo it as an ``xfm`` command line, return its stdout (raise on failure)."""
    shown = ["xfm", *cmd[len(XFM) :]] if cmd[: len(XFM)] == XFM else cmd
    print("$ " + " ".join(f"'{c}'" if " " in c else c for c in shown), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(proc.returncode)
    return proc.stdout


def weights_of(run_path: Path) -> Path:
    """The weights file of a run folder (retrieval or pretraining run) or the file itself."""
    for candidate in (
        run_path / "model.safetensors",
        run_path / "checkpoints" / "model.safetensors",
    ):
        if candidate.is_file():
            return candidate
    return run_path


def python_search(weights: Path, tokenizer_dir: Path, images: Path, query: str, rerank: int):
    """The same search from Python: load the model, rank every image of ``images``."""
    from xfm.tasks.base import get_task
    from xfm.tasks.cli import build_eval_model
    from xfm.tasks.search import IMAGE_SUFFIXES, search_images
    from xfm.text import load_tokenizer

    model, _spec = build_eval_model(get_task("retrieval"), str(weights), None)  # any xfm weights
    model = model.eval()
    paths = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    size = model.vision_encoder.config.image_size
    size = size if isinstance(size, int) else int(size[0])
    tokenizer = load_tokenizer(tokenizer_dir)
    return search_images(model, tokenizer, paths, query, image_size=size, rerank=rerank)


def main(argv: list[str] | None = None) -> int:
    """Pretrain if needed, search with the CLI and from Python, compare the rankings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("query", nargs="?", default="a small red circle")
    parser.add_argument("--run", type=Path, default=None, help="run folder or weights file")
    parser.add_argument("--images", type=Path, default=None, help="folder of images")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder")
    parser.add_argument("--top", type=int, default=5, help="results printed (default: 5)")
    parser.add_argument("--rerank", type=int, default=16, help="images re-ranked by ITM")
    parser.add_argument("--quick", action="store_true", help="pretrain 3 steps on a small set")
    parser.add_argument("--work", type=Path, default=None, help="folder for the quick run")
    args = parser.parse_args(argv)

    synth = ROOT / "data" / "synth"
    if args.run is None:  # pretrain first: the README's command (or a 3-step version)
        if args.quick:
            work = args.work or Path(tempfile.mkdtemp(prefix="xfm-search-"))
            synth, run_dir = work / "synth", work / "run"
            extra = [*QUICK, f"data.synth.out={synth}", f"run_dir={run_dir}", "--overwrite"]
        else:  # the README's run; an earlier one is reused, never overwritten
            run_dir = ROOT / "runs" / "tiny"
            extra = [f"data.synth.out={synth}", f"run_dir={run_dir}"]
        if (run_dir / "checkpoints" / "model.safetensors").is_file() and not args.quick:
            print(f"using the pretrained run {run_dir}")
        else:
            run([*XFM, "pretrain", "--config", str(TINY), *extra])
        args.run = run_dir
    weights = weights_of(args.run)
    images = args.images or synth / "images" / "test"
    tokenizer = args.tokenizer or synth / "tokenizer"
    for what, path in (("--run", weights), ("--images", images), ("--tokenizer", tokenizer)):
        if not path.exists():
            print(f"error: {what} {path} does not exist", file=sys.stderr)
            return 2

    # 1. the command line (on the CPU, as the Python search below)
    out = run(
        [*XFM, "search", "--images", str(images), "--checkpoint", str(weights), "--tokenizer",
         str(tokenizer), "--top", str(args.top), "--rerank", str(args.rerank), "--device", "cpu",
         args.query]
    )  # fmt: skip
    print(out, end="")
    cli_ranking = [m.group(1) for m in re.finditer(r"^\s*\d+\.\s.*?\s{2}(\S.*)$", out, re.M)]

    # 2. the same from Python
    hits = python_search(weights, tokenizer, images, args.query, args.rerank)
    print(f">>> search_images(model, tokenizer, paths, {args.query!r}, ...)")
    for rank, hit in enumerate(hits[: args.top], 1):
        itm = "" if hit.itm is None else f"itm={hit.itm:+.3f} "
        print(f"{rank:>3}. {itm}itc={hit.itc:+.3f}  {hit.path}")
    py_ranking = [hit.path for hit in hits[: args.top]]

    same = cli_ranking == py_ranking and len(py_ranking) == min(args.top, len(hits))
    print(
        f"same top-{len(py_ranking)} ranking from xfm search and from Python: {'yes' if same else 'NO'}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

"""Golden sets with OTHER dimensions, computed by RUNNING the official X-FM code.

Writes, per set, the files of ``../shared/golden`` / ``../shared/golden_tasks/<task>`` (same
``config.json`` keys, same tensor names) so that ``xfm check-official DIR`` reads them, but with
vision width 36 != text width 24 and other depths / heads / grid / vocabulary (see
``other_dims.py`` and ``packages/xfm-tasks/tests/data/golden_other/README.md``)::

    python tools/golden/make_official_golden.py --out packages/xfm-tasks/tests/data/golden_other            # every set
    python tools/golden/make_official_golden.py --out DIR --set retrieval --set vqa
    python tools/golden/make_official_golden.py --out packages/xfm-tasks/tests/data/golden_other --verify   # reload, recompute

Needs: torch, ``transformers<5`` (the official ``xroberta.py`` imports its internals; xfm-text's
``[hf]`` extra), timm (xfm-tasks), torchvision (xfm-train), numpy, scipy, six, safetensors (the
repository's dev environment ``.venv`` has them all), and the official code (patched copy of commit 62f5cf7) given by ``--official`` (default
``../shared/official_bench/official`` relative to the repository root). The official code is
imported and run, never copied. CPU, one thread (two runs give byte-identical files; another
thread count changes float reduction order, hence the last bits), float32, eval mode; a run of
every set takes a few seconds.

``--verify`` rebuilds each official model, loads ``model.safetensors`` with ``strict=True``,
recomputes every output from ``inputs.safetensors`` and prints the max abs difference (must be
0.0; exit 1 otherwise). Every user error ends in one ``error:`` line and exit 2.
``crosscheck_shared.py`` runs this harness on the shared sets' dimensions and inputs and compares
with the shared outputs (validates the harness, in particular the retrieval / VQA evaluation).

Modules: ``other_dims`` (dimensions, seeds), ``official_harness`` (path, json files, stubs,
re-randomisation, determinism patches, writing), ``golden_set`` (generate / verify one set),
``pretrain_set``, ``retrieval_set``, ``vqa_set``, ``task_sets`` (NLVR2, grounding, GLUE, ImageNet
and the registry), ``task_descriptions`` (task ``config.json``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OFFICIAL = REPO.parent / "shared" / "official_bench" / "official"
SET_NAMES = (
    "pretrain",
    "retrieval",
    "nlvr",
    "grounding",
    "vqa",
    "classification_glue",
    "classification_imagenet",
)


def load_sets(names: list[str]) -> list:
    """The :class:`golden_set.GoldenSet` objects for ``names`` (imports the official code)."""
    import pretrain_set

    table = {"pretrain": pretrain_set.SET}
    if any(n != "pretrain" for n in names):
        import task_sets

        table.update(task_sets.SETS)
    return [table[n] for n in names]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out", required=True, type=Path, help="output folder (one sub-folder per set)"
    )
    ap.add_argument(
        "--set",
        action="append",
        choices=SET_NAMES,
        dest="sets",
        help="set to make (repeatable; default: all)",
    )
    ap.add_argument(
        "--official",
        type=Path,
        default=DEFAULT_OFFICIAL,
        help="official X-FM code (default: %(default)s)",
    )
    ap.add_argument("--verify", action="store_true", help="reload the written sets and recompute")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    try:
        from official_harness import add_official_to_path

        add_official_to_path(args.official)
        import torch

        torch.set_num_threads(1)  # byte-identical files need a fixed op order
        from golden_set import generate, verify

        sets = load_sets(args.sets or list(SET_NAMES))
    except (FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = False
    for spec in sets:
        if args.verify:
            if not (args.out / spec.name / "model.safetensors").is_file():
                print(f"error: {args.out / spec.name} holds no golden set", file=sys.stderr)
                return 2
            diff = verify(spec, args.out)
            failed |= diff != 0.0
            print(f"{spec.name}: strict reload + recompute, max |diff| = {diff}")
        else:
            target = generate(spec, args.out)
            size = sum(f.stat().st_size for f in target.iterdir())
            print(f"{spec.name}: wrote {target} ({size / 1024:.0f} KiB)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``xfm data``: build the synthetic dataset, convert official datasets, inspect shards.

xfm data synth --out DIR [--seed 0 --image-size 64 --num-train 2000 ...]
xfm data prepare xvlm --ann pretrain.json --image-root IMAGES --out s3://bucket/cc3m
xfm data prepare coco-karpathy --ann dataset_coco.json --image-root COCO --out DIR
xfm data prepare vg-regions --ann region_descriptions.json --image-root VG --out DIR
xfm data prepare coco-regions --ann instances_train2014.json --image-root train2014 --out DIR
xfm data prepare imagefolder --root imagenet/train --out DIR
xfm data prepare text --files a.txt b.txt --out DIR
xfm data inspect URL --source image_text
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xfm.core.cli import Command

__all__ = ["DataCommand"]

_USAGE = __doc__
_FORMATS = ("xvlm", "coco-karpathy", "vg-regions", "coco-regions", "imagefolder", "text")


class DataCommand(Command):
    """``xfm data {synth,prepare,inspect}``."""

    help = "Build the synthetic dataset, convert datasets to MDS shards, inspect shards."
    description = _USAGE

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the ``synth``, ``prepare`` and ``inspect`` actions."""
        sub = parser.add_subparsers(dest="data_action", required=True, metavar="<action>")
        s = sub.add_parser("synth", help="write the shapes-world dataset (no downloads)")
        s.add_argument("--out", required=True, help="local folder, s3://... or gs://...")
        s.add_argument("--seed", type=int, default=0, help="world seed (default: %(default)s)")
        s.add_argument(
            "--image-size", type=int, default=64, help="image side in pixels (default: 64)"
        )
        s.add_argument("--num-train", type=int, default=2000, help="train images (default: 2000)")
        s.add_argument("--num-test", type=int, default=200, help="test images (default: 200)")
        s.add_argument(
            "--captions-per-image",
            type=int,
            default=2,
            help="train captions per image (default: 2)",
        )
        s.add_argument(
            "--num-text", type=int, default=4000, help="text-only documents (default: 4000)"
        )
        s.add_argument(
            "--vocab-size", type=int, default=1000, help="BPE vocabulary (default: 1000)"
        )
        s.add_argument(
            "--compression", default=None, help="MDS compression, e.g. zstd (default: none)"
        )
        s.add_argument("--quiet", action="store_true", help="no progress bar")

        p = sub.add_parser("prepare", help="convert an official dataset format to MDS shards")
        p.add_argument("format", choices=_FORMATS, help="the dataset's format")
        p.add_argument("--out", required=True, help="local folder, s3://... or gs://...")
        p.add_argument("--ann", help="annotation file (xvlm, coco-karpathy, *-regions)")
        p.add_argument("--image-root", help="folder the annotation's image paths are relative to")
        p.add_argument("--root", help="ImageFolder root (imagefolder)")
        p.add_argument("--files", nargs="+", help="text files, one document per line (text)")
        p.add_argument(
            "--splits", default="train,restval", help="Karpathy splits to keep (coco-karpathy)"
        )
        p.add_argument("--compression", default="zstd", help="MDS compression (default: zstd)")
        p.add_argument("--shard-size", default="64mb", help="shard size limit, e.g. 64mb")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

        i = sub.add_parser("inspect", help="print the size and first samples of a dataset")
        i.add_argument("url", help="dataset folder or s3:// / gs:// URL (holds index.json)")
        i.add_argument(
            "--source",
            required=True,
            choices=("text", "image_text", "region", "image"),
            help="the schema of the dataset",
        )
        i.add_argument("--num", type=int, default=3, help="samples printed (default: 3)")

    def run(self, args: argparse.Namespace) -> int:
        """Run the chosen action; returns 0 on success, 1 on a data error."""
        from xfm.train.data.errors import DataError

        try:
            return getattr(self, "_" + args.data_action)(args)
        except (DataError, FileNotFoundError, ValueError) as exc:
            print(f"xfm data {args.data_action}: error: {exc}", file=sys.stderr)
            return 1

    def _synth(self, args: argparse.Namespace) -> int:
        from xfm.train.data.synth import SynthConfig, build_synthetic

        cfg = SynthConfig(
            seed=args.seed,
            image_size=args.image_size,
            num_train=args.num_train,
            num_test=args.num_test,
            captions_per_image=args.captions_per_image,
            num_text=args.num_text,
            vocab_size=args.vocab_size,
            compression=args.compression,
        )
        manifest = build_synthetic(args.out, cfg, progress=not args.quiet)
        for key, s in manifest["summaries"].items():
            print(f"{key}: {s['written']} written, {sum(s['skipped'].values())} skipped")
        print(f"wrote {args.out}/synth.json")
        return 0

    def _prepare(self, args: argparse.Namespace) -> int:
        from xfm.train.data import prepare as P

        def need(*names: str) -> None:
            missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n)]
            if missing:
                raise ValueError(f"format {args.format!r} needs {' and '.join(missing)}")

        records: Any
        extra = ""
        if args.format == "xvlm":
            need("ann", "image_root")
            source, records = "image_text", P.read_xvlm_json(args.ann, args.image_root)
        elif args.format == "coco-karpathy":
            need("ann", "image_root")
            splits = tuple(s for s in args.splits.split(",") if s)
            source, records = "image_text", P.read_coco_karpathy(args.ann, args.image_root, splits)
        elif args.format == "vg-regions":
            need("ann", "image_root")
            source, records = "region", P.read_vg_regions(args.ann, args.image_root)
        elif args.format == "coco-regions":
            need("ann", "image_root")
            source, records = "region", P.read_coco_regions(args.ann, args.image_root)
        elif args.format == "imagefolder":
            need("root")
            classes, records = P.read_image_folder(args.root)
            source = "image"
            extra = f"classes ({len(classes)}): {json.dumps(classes[:20])}"
        else:
            need("files")
            source, records = "text", P.read_text_files(args.files)
        summary = P.write_all(
            source,
            records,
            args.out,
            progress=not args.quiet,
            desc=args.format,
            compression=args.compression or None,
            size_limit=args.shard_size,
        )
        print(summary.format())
        if extra:
            print(extra)
        return 0

    def _inspect(self, args: argparse.Namespace) -> int:
        from xfm.train.data.dataset import SourceDataset

        ds = SourceDataset(args.source, args.url, shuffle=False, batch_size=1)
        print(f"{args.url}: {ds.num_samples} {args.source} samples in {len(ds.shards)} shard(s)")
        for n in range(min(args.num, ds.num_samples)):
            row = {
                k: (f"<{len(v)} bytes>" if isinstance(v, bytes) else v) for k, v in ds[n].items()
            }
            print(json.dumps(row))
        return 0

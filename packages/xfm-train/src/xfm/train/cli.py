"""``xfm pretrain`` and ``xfm plot`` subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from xfm.core.cli import Command

__all__ = ["PlotCommand", "PretrainCommand"]


class PretrainCommand(Command):
    """``xfm pretrain --config configs/pretrain/tiny.yaml [key=value ...] [--resume [CKPT]]``."""

    help = "pretrain X-FM (multi-objective, multi-source; CPU, GPU, torchrun)"
    description = (
        "Pretrain X-FM from a YAML config. Overrides are dotted keys, e.g. steps=200 "
        "optim.lr=3e-4 model.stop_gradient=false. Multi-GPU / multi-node: launch the same "
        "command under torchrun (python -m torch.distributed.run --nproc_per_node N -m "
        "xfm.core.cli pretrain ...)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help="YAML file (local path or URL)")
        parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
        parser.add_argument(
            "--resume",
            nargs="?",
            const=True,
            default=False,
            help="continue from the run's newest checkpoint, or from the given checkpoint URL",
        )
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an earlier run in run_dir (its outputs and checkpoints are deleted)",
        )
        parser.add_argument("--json", action="store_true", help="print the summary as JSON last")

    def run(self, args: argparse.Namespace) -> int:
        from xfm.core.checkpoint import CheckpointError
        from xfm.core.config import ConfigError
        from xfm.train.config import load_pretrain_config
        from xfm.train.trainer import Trainer

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            cfg = load_pretrain_config(args.config, args.overrides)
        except (ConfigError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
        try:
            trainer.setup()
            summary = trainer.fit()
        except (CheckpointError, FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        finally:
            trainer.close()
        if args.json:
            print(json.dumps(summary, default=str))
        return 0


class PlotCommand(Command):
    """``xfm plot RUN_DIR``: loss curves of a pretraining run as PNG."""

    help = "plot the loss curves of an xfm pretrain run (metrics.csv -> PNG)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", help="the run folder (holds metrics.csv)")
        parser.add_argument(
            "--out", default=None, help="PNG path (default RUN_DIR/loss_curves.png)"
        )
        parser.add_argument("--smooth", type=int, default=0, help="moving-average window")

    def run(self, args: argparse.Namespace) -> int:
        from xfm.train.plot import plot_run

        try:
            path = plot_run(args.run_dir, args.out, args.smooth)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(path)
        return 0

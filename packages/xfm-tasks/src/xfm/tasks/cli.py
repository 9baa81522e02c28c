"""``xfm finetune TASK`` and ``xfm eval TASK`` (tasks from the ``xfm.task`` registry).

* ``xfm finetune retrieval --config configs/tasks/retrieval_synth.yaml [train.steps=300 ...]``
* ``xfm eval retrieval --checkpoint RUN_DIR_OR_FILE [--config CFG] [overrides] [--split test]``

``--checkpoint`` takes a fine-tuning run dir or its ``model.safetensors`` (model config and
task read from its metadata, data config from the run's ``config.yaml``), an xfm pretraining
checkpoint (zero-shot; needs ``--config``), or an official checkpoint: a golden-format
directory (``config.json`` + ``model.safetensors``) or an official ``.pth`` / ``.safetensors``
whose dimensions are read off its shapes.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from xfm.core.cli import Command

__all__ = ["EvalCommand", "FinetuneCommand"]


#: A ``dotted.key=value`` override (what ``--resume`` must not swallow as its checkpoint).
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _task_names() -> list[str]:
    from xfm.core.registry import available

    return available("task")


def _with_overrides(parser: argparse.ArgumentParser, options: Any, usage: str = "") -> None:
    """``TASK`` then options and ``key=value`` overrides in any order (options may also come
    before ``TASK``). ``usage``: the usage line, with the required options shown as such
    (argparse would show them in brackets: they are checked after ``TASK``)."""
    if usage:
        parser.usage = usage
    options(parser)
    parser.add_argument("task", help="registered task name (xfm.task entry point)")
    parser.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="options above and dotted.key=value config overrides, in any order",
    )


def _parse_rest(args: argparse.Namespace, options: Any, required: tuple[str, ...]) -> bool:
    """Parse what follows ``TASK`` into ``args`` (options + ``args.overrides``)."""
    sub = argparse.ArgumentParser(prog=f"xfm ... {args.task}", add_help=False)
    options(sub)
    sub.add_argument("overrides", nargs="*")
    try:
        extra = sub.parse_intermixed_args(args.rest)
    except SystemExit:
        return False
    for key, value in vars(extra).items():
        if key == "overrides" or value not in (None, False):
            setattr(args, key, value)
    missing = [f"--{r}" for r in required if getattr(args, r, None) in (None, "")]
    if missing:
        print(f"error: {', '.join(missing)} is required", file=sys.stderr)
        return False
    return True


class FinetuneCommand(Command):
    """``xfm finetune TASK --config FILE [key=value ...]``."""

    help = "fine-tune X-FM on a downstream task (retrieval, nlvr, grounding, ...)"
    description = (
        "Fine-tune a task model from a YAML config (xfm.tasks.base.FinetuneConfig). Overrides "
        "are dotted keys, e.g. train.steps=300 optim.lr=1e-4 options.k_test=16. Under torchrun "
        "the same command trains with DDP."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _with_overrides(
            parser,
            self.options,
            "xfm finetune TASK --config FILE [--resume [CKPT]] [--overwrite] [--json] "
            "[key=value ...]",
        )

    @staticmethod
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", default=None, help="YAML file (required)")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON last")
        parser.add_argument(
            "--resume",
            nargs="?",
            const=True,
            default=None,
            metavar="CKPT",
            help="continue exactly from the run's newest checkpoint, or from CKPT",
        )
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an earlier run in run_dir (its outputs and checkpoints are deleted)",
        )

    def run(self, args: argparse.Namespace) -> int:
        if not _parse_rest(args, self.options, required=("config",)):
            return 2
        from xfm.core.checkpoint import CheckpointError
        from xfm.core.config import ConfigError, load_config
        from xfm.core.registry import RegistryError
        from xfm.tasks.base import FinetuneConfig
        from xfm.tasks.finetune import Finetuner

        resume = args.resume or False
        if isinstance(resume, str) and _OVERRIDE.match(resume):  # `--resume key=value`
            args.overrides = [resume, *args.overrides]
            resume = True
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        tuner = None
        try:
            cfg = load_config(FinetuneConfig, args.config, [*args.overrides, f"task={args.task}"])
            tuner = Finetuner(cfg, resume=resume, overwrite=bool(getattr(args, "overwrite", False)))
            tuner.setup()
            summary = tuner.fit()
        except (ConfigError, CheckpointError, FileNotFoundError, ValueError, RegistryError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        finally:
            if tuner is not None:
                tuner.close()
        if args.json:
            print(json.dumps(summary, default=str))
        return 0


def build_eval_model(task: Any, checkpoint: str, spec: dict[str, Any] | None) -> tuple[Any, dict]:
    """The task model of ``checkpoint`` (see the module docstring) and its config dict."""
    from xfm.core.checkpoint import load_state_dict
    from xfm.core.config import to_dict
    from xfm.tasks.official import (
        is_official_state,
        load_golden_dir,
        load_task_weights,
        resolve_checkpoint,
    )
    from xfm.tasks.official.xfm_layout import infer_config

    weights, info = resolve_checkpoint(checkpoint)
    if "golden" in info:
        model = load_golden_dir(Path(checkpoint), task.name)
        return model, {}
    if "model" in info:
        model = task.build_model(info["model"])
        load_task_weights(model, weights, strict=info.get("task") == task.name)
        return model, info["model"]
    state = load_state_dict(weights)
    if is_official_state(state) and not spec:
        config = infer_config(state)
        model = task.build_model(config)
        load_task_weights(model, state, strict=True)
        return model, to_dict(config)
    if not spec:
        raise ValueError(f"{weights} carries no model config: give --config with a model section")
    model = task.build_model(spec)
    load_task_weights(model, state, strict=False)
    return model, spec


class EvalCommand(Command):
    """``xfm eval TASK --checkpoint PATH [--config FILE] [key=value ...]``."""

    help = "evaluate a task model (fine-tuned, pretrained zero-shot, or official checkpoint)"
    description = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        _with_overrides(
            parser,
            self.options,
            "xfm eval TASK --checkpoint PATH [--config FILE] [--split SPLIT] [--json] "
            "[key=value ...]",
        )

    @staticmethod
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--checkpoint", default=None, help="run dir, weights file or golden dir (required)"
        )
        parser.add_argument(
            "--config", default=None, help="YAML (data section; default: the run's)"
        )
        parser.add_argument("--split", action="append", default=None, help="split(s) to evaluate")
        parser.add_argument("--json", action="store_true", help="print the metrics as JSON last")

    def run(self, args: argparse.Namespace) -> int:
        if not _parse_rest(args, self.options, required=("checkpoint",)):
            return 2
        from xfm.core.config import ConfigError, load_config
        from xfm.core.registry import RegistryError
        from xfm.tasks.base import FinetuneConfig, get_task
        from xfm.tasks.finetune import evaluate_splits, load_tokenizer_for, model_spec
        from xfm.train.engine import autocast_factory, resolve_device
        from xfm.train.synthetic import ensure_synthetic

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            config_path = args.config
            ckpt = Path(args.checkpoint)
            if config_path is None and (ckpt / "config.yaml").is_file():
                config_path = str(ckpt / "config.yaml")
            elif config_path is None and (ckpt.parent / "config.yaml").is_file():
                config_path = str(ckpt.parent / "config.yaml")
            if config_path is None:
                raise ValueError("no --config given and the checkpoint has no run config.yaml")
            cfg = load_config(FinetuneConfig, config_path, [*args.overrides, f"task={args.task}"])
            ensure_synthetic(cfg.data.synth)
            task = get_task(args.task, cfg.options)
            tokenizer = load_tokenizer_for(cfg)
            spec = model_spec(cfg, tokenizer) if cfg.model else None
            model, _ = build_eval_model(task, args.checkpoint, spec)
            device = resolve_device(cfg.device)
            from xfm.train.distributed import init_distributed, is_main_process

            init_distributed(device)
            model = model.to(device)
            result = evaluate_splits(
                task,
                model,
                cfg,
                tokenizer,
                args.split,
                device,
                autocast_factory(device, cfg.precision),
                progress=True,
            )
        except (ConfigError, FileNotFoundError, ValueError, RegistryError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if is_main_process():
            for k, v in result.items():
                print(f"{k:<24} {v:8.2f}")
            if args.json:
                print(json.dumps(result))
        return 0

"""``xfm export-official`` and ``xfm import-official``: our weights <-> the official layouts.

* ``xfm export-official SRC --out FILE [--task T] [--overwrite]``: SRC is a run folder
  (pretraining or fine-tuning: its config and final ``model.safetensors``) or one of our
  weights files (safetensors with our config in its metadata). Writes the official layout of
  the model: ``FILE.pth`` as ``{"model": state_dict}`` (loadable with
  ``torch.load(weights_only=True)``) or ``FILE.safetensors``, by extension.
* ``xfm import-official FILE --out OUT.safetensors [--task T] [--config JSON]``: an official
  ``.pth`` / ``.safetensors`` -> our safetensors, with our config (and the golden config) in its
  metadata and the official tensors our model does not use kept beside the weights, so that
  ``xfm eval`` / ``init_from`` read it and ``export-official`` gives the official file back,
  bit-exact. The layout is read off the names (``--task`` to insist on one); the dimensions
  from ``--config`` (a golden-format ``config.json``, or a folder holding one) or, for the
  pretraining / retrieval / NLVR2 / grounding layouts, from the shapes (head counts
  ``width // 64``).

``--task`` takes a layout name: ``pretrain``, ``retrieval``, ``nlvr``, ``grounding``, ``vqa``,
``glue``, ``imagenet``. Every user error is one ``error:`` line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xfm.core.checkpoint import CheckpointError, load_into, load_state_dict, save_state_dict
from xfm.core.cli import Command
from xfm.core.config import to_dict
from xfm.tasks.official.layout import OfficialLayout, detect_layout, get_layout, layout_names
from xfm.tasks.official.unused import pack_extras, unpack_extras
from xfm.tasks.official.weights import resolve_checkpoint

__all__ = [
    "ExportOfficialCommand",
    "ImportOfficialCommand",
    "export_golden_dir",
    "export_official",
    "import_official",
]

_SUFFIXES = (".pth", ".safetensors")


def _check_out(out: Path, overwrite: bool, suffixes: tuple[str, ...]) -> None:
    if out.suffix not in suffixes:
        raise ValueError(f"--out {out}: the name must end in {' or '.join(suffixes)}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; give --overwrite to replace it")


def _layout_of_task(task: str) -> OfficialLayout:
    for name in layout_names():
        layout = get_layout(name)
        if task in (layout.name, layout.task):
            return layout
    raise ValueError(f"--task {task!r}: no official layout; known: {', '.join(layout_names())}")


def _read_ours(src: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Our weights file of a run folder / weights file, and what its metadata says."""
    weights, info = resolve_checkpoint(src)
    if "golden" in info:
        raise ValueError(
            f"{src} is a golden-format folder (official weights already); export takes a run "
            "folder or one of our weights files"
        )
    if "model" not in info:
        raise ValueError(
            f"{weights} carries no model config in its metadata (xfm_model_config): not a "
            "weights file written by xfm (xfm pretrain / finetune / import-official)"
        )
    state = load_state_dict(weights)
    if any(k.startswith(("text_encoder.roberta.", "fusion_encoder.roberta.")) for k in state):
        raise ValueError(f"{weights} uses the official names already; nothing to export")
    return state, info, weights


def export_official(
    src: str | Path, task: str | None = None
) -> tuple[dict[str, torch.Tensor], OfficialLayout]:
    """The official state dict of our model in ``src`` (run folder or weights file)."""
    state, info, label = _read_ours(src)
    found = info.get("task") or "pretrain"
    layout = _layout_of_task(task or found)
    if task is not None and _layout_of_task(found).name != layout.name:
        raise ValueError(
            f"{label} holds a {found} model; --task {task} expects a {layout.name} model"
        )
    weights, extras = unpack_extras(state)
    model = layout.model_from_config(info["model"], weights)
    load_into(model, weights, strict=True, source=label)
    if extras:
        model.official_extras = extras
    if info.get("official_config"):
        model.official_config = info["official_config"]
    model.eval()
    return layout.export_state(model), layout


def _read_golden(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"--config {path}: no such golden config.json")
    return json.loads(p.read_text())


def import_official(
    file: str | Path, task: str | None = None, config: str | Path | None = None
) -> tuple[nn.Module, OfficialLayout]:
    """Our model of an official checkpoint file (strict import; unused tensors kept)."""
    label = str(file)
    state = load_state_dict(file)
    layout = _layout_of_task(task) if task else detect_layout(state, label)
    layout.check_family(state, label)
    if config is not None:
        golden = _read_golden(config)
        return layout.load_golden(golden, state, source=label), layout
    if layout.name not in ("pretrain", "retrieval", "nlvr", "grounding"):
        raise ValueError(
            f"{label}: the dimensions of an official {layout.name} model are not all in its "
            "shapes; give --config with its golden-format config.json"
        )
    from xfm.tasks.official.xfm_layout import infer_config

    model = layout.model_from_config(to_dict(infer_config(state)), state)
    layout.import_state(model, state, strict=True, source=label)
    return model.eval(), layout


def save_ours(model: nn.Module, layout: OfficialLayout, out: str | Path) -> None:
    """``model``'s weights (plus its kept official tensors) as our safetensors."""
    config = layout.model_config(model)
    meta = {
        "xfm_model_config": json.dumps(
            config if layout.task is None else {"task": layout.task, "model": config}
        )
    }
    golden = getattr(model, "official_config", None)
    if golden:
        meta["xfm_official_config"] = json.dumps(golden)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    state.update(pack_extras(model))
    save_state_dict(state, str(out), metadata=meta)


def save_official(state: dict[str, torch.Tensor], out: str | Path) -> None:
    """``{"model": state}`` with ``torch.save`` (``.pth``) or flat safetensors."""
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if str(out).endswith(".safetensors"):
        save_state_dict(state, str(out))
        return
    from xfm.core.checkpoint import atomic_write

    with atomic_write(str(out), "wb") as fh:
        torch.save({"model": state}, fh)


class ExportOfficialCommand(Command):
    """``xfm export-official SRC --out FILE [--task T] [--overwrite]``."""

    help = "write a model of ours in the official X-FM checkpoint layout"
    description = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("src", help="run folder or our weights file (.safetensors)")
        parser.add_argument("--out", required=True, help="official file: .pth or .safetensors")
        parser.add_argument("--task", default=None, help="layout expected (default: the file's)")
        parser.add_argument("--overwrite", action="store_true", help="replace --out")

    def run(self, args: argparse.Namespace) -> int:
        try:
            out = Path(args.out)
            _check_out(out, args.overwrite, _SUFFIXES)
            state, layout = export_official(args.src, args.task)
            out.parent.mkdir(parents=True, exist_ok=True)
            save_official(state, out)
        except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(
            f"wrote {out}: official {layout.name} layout ({layout.official_class}), "
            f"{len(state)} tensors"
        )
        return 0


class ImportOfficialCommand(Command):
    """``xfm import-official FILE --out OUT.safetensors [--task T] [--config JSON]``."""

    help = "convert an official X-FM checkpoint into our safetensors"
    description = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", help="official checkpoint (.pth / .safetensors)")
        parser.add_argument("--out", required=True, help="our weights file (.safetensors)")
        parser.add_argument("--task", default=None, help="layout expected (default: detected)")
        parser.add_argument("--config", default=None, help="golden-format config.json (or dir)")
        parser.add_argument("--overwrite", action="store_true", help="replace --out")

    def run(self, args: argparse.Namespace) -> int:
        try:
            out = Path(args.out)
            _check_out(out, args.overwrite, (".safetensors",))
            model, layout = import_official(args.file, args.task, args.config)
            out.parent.mkdir(parents=True, exist_ok=True)
            save_ours(model, layout, out)
        except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {out}: {layout.name} model ({type(model).__name__})")
        return 0


def export_golden_dir(
    model: nn.Module, out: str | Path, official_spec: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` as a golden-format directory: ``model.safetensors`` (official names) and
    ``config.json`` (official dimensions); ``xfm eval TASK --checkpoint DIR`` and
    :func:`~xfm.tasks.official.weights.load_golden_dir` read it back.

    ``official_spec``: specs of the official encoders the model lacks (VQA / GLUE / ImageNet
    models never imported; see :meth:`ComposedLayout.export_state`).
    """
    from xfm.core.checkpoint import atomic_write
    from xfm.tasks.official.composed import ComposedLayout
    from xfm.tasks.official.layout import layout_of_model

    layout = layout_of_model(model)
    if isinstance(layout, ComposedLayout):
        state = layout.export_state(model, official_spec)
        config = layout.golden_config(model, official_spec)
    else:
        state, config = layout.export_state(model), layout.golden_config(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict({k: v.detach().cpu() for k, v in state.items()}, str(out / "model.safetensors"))
    with atomic_write(str(out / "config.json"), "w") as fh:
        json.dump(config, fh, indent=1)
    return out

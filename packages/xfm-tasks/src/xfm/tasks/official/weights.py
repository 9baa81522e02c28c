"""Loading any weights into a task model: official layouts (any of them), our own files.

* :func:`resolve_checkpoint`: a run dir, a weights file or a golden directory -> the weights
  file and what is known about it (task, our model config, the golden ``config.json``);
* :func:`load_golden_dir`: the model of a golden-format directory (its layout from
  ``config.json``), loaded strictly;
* :func:`load_task_weights` / :func:`init_task_model`: weights of any layout into a task model
  (fine-tuning ``init_from``, ``xfm eval``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xfm.core.checkpoint import (
    LoadReport,
    load_into,
    load_state_dict,
    read_safetensors_metadata,
)
from xfm.tasks.official.layout import layout_for_golden, layout_of_model
from xfm.tasks.official.unused import unpack_extras

__all__ = [
    "init_task_model",
    "is_official_state",
    "load_golden_dir",
    "load_task_weights",
    "read_weights",
    "resolve_checkpoint",
]

#: Keys of an xfm pretraining checkpoint that a task model may not have (dropped heads).
_OPTIONAL_HEADS = (
    r"^(?:text_mlm_head|fusion_mlm_head|vision_proj|text_proj|itm_head|bbox_head)\.|^temp$"
)


def is_official_state(keys: Any) -> bool:
    """Whether state-dict keys use the official X-FM names (``*.roberta.*`` or a bare
    ``RobertaModel``'s ``text_encoder.embeddings.word_embeddings``)."""
    for k in keys:
        if k.startswith(("text_encoder.roberta.", "fusion_encoder.roberta.")):
            return True
        if k.startswith("text_encoder.embeddings.word_embeddings."):
            return True
    return False


def resolve_checkpoint(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """A checkpoint path and what is known about it.

    ``path`` may be a safetensors / torch file, an xfm run dir (``model.safetensors``;
    ``checkpoints/model.safetensors`` for pretraining) or a golden-format directory (``config.json`` + ``model.safetensors``). Returns ``(weights file,
    info)`` where ``info`` may hold ``task``, ``model`` (our config dict), ``golden`` (a
    golden ``config.json`` dict, from the directory or the file's metadata).
    """
    p = Path(path)
    info: dict[str, Any] = {}
    if p.is_dir():
        if (p / "config.json").is_file():
            info["golden"] = json.loads((p / "config.json").read_text())
            info["task"] = info["golden"].get("task")
        candidates = [
            p / "model.safetensors",  # fine-tuning run, golden folder
            p / "checkpoints" / "model.safetensors",  # pretraining run
            p / "model.pth",
            p / "checkpoint_best.pth",
        ]
        found = [c for c in candidates if c.is_file()]
        if not found:
            names = [str(c.relative_to(p)) for c in candidates]
            raise FileNotFoundError(f"{p} holds none of {names}")
        p = found[0]
    elif not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        meta = read_safetensors_metadata(p)
        if "xfm_model_config" in meta:
            extra = json.loads(meta["xfm_model_config"])
            if isinstance(extra, dict) and "model" in extra:
                info.setdefault("task", extra.get("task"))
                info["model"] = extra["model"]
            else:
                info["model"] = extra
        if "xfm_official_config" in meta and "golden" not in info:
            info["official_config"] = json.loads(meta["xfm_official_config"])
    return str(p), info


def read_weights(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """``(weights, kept official extras, label)`` of a path or a state dict."""
    if isinstance(source, Mapping):
        state, label = dict(source), "<state dict>"
    else:
        label, _ = resolve_checkpoint(source)
        state = load_state_dict(label)
    weights, extras = unpack_extras(state)
    return weights, extras, label


def load_golden_dir(directory: str | os.PathLike[str], task: str | None = None) -> nn.Module:
    """The model of a golden-format directory (``config.json`` + official weights), loaded
    strictly, in ``eval()`` mode. ``task``: the registered task the caller expects."""
    weights, info = resolve_checkpoint(directory)
    if "golden" not in info:
        raise FileNotFoundError(f"{directory} has no config.json describing the official model")
    layout = layout_for_golden(info["golden"])
    if task is not None and layout.task != task:
        raise ValueError(
            f"{directory} holds an official {layout.name} model ({layout.official_class}); "
            f"the task is {task!r}"
        )
    return layout.load_golden(info["golden"], load_state_dict(weights), source=weights)


def load_task_weights(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    strict: bool = False,
) -> LoadReport:
    """Load weights of any supported layout into a task model.

    * official names (pretraining or task checkpoint): through ``model``'s official layout
      (pretraining names load into any X-FM task model);
    * our names (a pretraining or task model of this library): :func:`load_into`; heads the
      task model does not have are ignored. Official tensors kept beside them
      (``import-official``) go back to ``model.official_extras``.

    With ``strict=False`` (initialising a fine-tuning run) keys that do not fit are reported,
    not fatal: new task heads stay freshly initialised.
    """
    state, extras, label = read_weights(source)
    return _load(model, state, extras, label, strict)


def _load(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    extras: dict[str, torch.Tensor],
    label: str,
    strict: bool,
) -> LoadReport:
    if is_official_state(state):
        from xfm.fusion.official import load_official_state

        try:
            layout = layout_of_model(model)
        except TypeError:  # a model with no official layout of its own (captioning)
            layout = None
        if layout is None or "text_encoder.roberta.embeddings.word_embeddings.weight" in state:
            return load_official_state(model, state, strict=strict, source=label)
        return layout.import_state(model, state, strict=strict, source=label)
    report = load_into(model, state, strict=strict, allow_unexpected=_OPTIONAL_HEADS, source=label)
    if extras:
        model.official_extras = extras
    return report


def init_task_model(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    decoder_init: str = "fusion",
    log: Any = None,
) -> LoadReport:
    """Initialise a task model for fine-tuning (``init_from``), non-strictly.

    Models with a decoder (:class:`~xfm.tasks.vqa_model.VQAModel`, the captioning model) given
    a *pretraining* checkpoint (xfm or official names: no ``text_decoder.*`` keys) and
    ``decoder_init="fusion"`` (the official recipe) go through their ``init_from_pretrained``:
    the decoder starts from the pretrained fusion encoder. ``log`` (a callable taking a line)
    then gets which decoder tensors were copied and which stay new. Anything else:
    :func:`load_task_weights`.
    """
    if decoder_init not in ("fusion", "none"):
        raise ValueError(f"options.decoder_init must be 'fusion' or 'none'; got {decoder_init!r}")
    state, extras, label = read_weights(source)
    has_decoder = any(k.startswith("text_decoder.") for k in state)
    init = getattr(model, "init_from_pretrained", None)
    if init is None or has_decoder or decoder_init == "none":
        return _load(model, state, extras, label, strict=False)
    if is_official_state(state):
        from xfm.fusion.official import from_official, infer_official_config

        heads = model.text_decoder.config.heads  # the head counts are not in the shapes
        config = infer_official_config(state, text_heads=heads, fusion_heads=heads)
        state = from_official(state, config, strict=False).state_dict()
    report = init(state)
    if log is not None:
        copied = sorted(k for k in report.loaded if k.startswith("text_decoder."))
        skipped = {m.key for m in report.shape_mismatches}
        fresh = sorted(
            k for k in model.state_dict() if k.startswith("text_decoder.") and k not in set(copied)
        )
        log(
            f"decoder initialised from the fusion encoder of {label}: {len(copied)} tensors "
            f"copied, {len(fresh)} left new"
        )
        for k in copied:
            log(f"  copied  {k}")
        for k in fresh:
            why = " (shape differs)" if k in skipped else ""
            log(f"  new     {k}{why}")
    return report

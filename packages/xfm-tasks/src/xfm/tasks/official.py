"""Official X-FM task checkpoints <-> xfm task models, and loading any weights into a task model.

The official task models (``XFMForRetrieval``, ``XFMForNLVR``, ``XFMForGrounding``...) use the
pretraining names of :mod:`xfm.fusion.official` with three differences (golden_tasks/README.md):

* the text encoder is a ``RobertaModel``: ``text_encoder.embeddings.*`` /
  ``text_encoder.encoder.*`` (no ``roberta.`` infix) and no ``text_encoder.lm_head`` /
  ``lm_cap_head``;
* each task keeps only its heads (retrieval: ``vision_proj``, ``text_proj``, ``temp``,
  ``itm_head``; NLVR2: ``cls_head``; grounding: ``bbox_head``) and adds its own under the same
  names as ours;
* the fusion encoder still carries its (unused) embeddings and MLM / captioning heads.

Import goes through :func:`xfm.fusion.official.load_official_state` (which detects the text
prefix); export is :func:`xfm.fusion.official.to_official` with the task text prefix, minus
the text MLM heads a ``RobertaModel`` does not have.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xfm.core.checkpoint import (
    CheckpointError,
    LoadReport,
    load_into,
    load_state_dict,
    read_safetensors_metadata,
)
from xfm.fusion.model import XFMConfig
from xfm.fusion.official import load_official_state, to_official, xfm_config_from_golden

__all__ = [
    "TASK_TEXT_PREFIX",
    "export_official_task_dir",
    "golden_config_of",
    "init_task_model",
    "is_official_state",
    "load_official_task",
    "load_task_weights",
    "read_key_list",
    "resolve_checkpoint",
    "task_config_from_golden",
    "to_official_task",
]

#: Text-encoder prefix of the official task checkpoints.
TASK_TEXT_PREFIX = "text_encoder."

#: Official names a task checkpoint never has (its text encoder is a ``RobertaModel``).
_NOT_IN_TASKS = re.compile(r"^text_encoder\.(?:lm_head|lm_cap_head)\.")

#: Keys of an xfm pretraining checkpoint that a task model may not have (dropped heads).
_OPTIONAL_HEADS = (
    r"^(?:text_mlm_head|fusion_mlm_head|vision_proj|text_proj|itm_head|bbox_head)\.|^temp$"
)


def is_official_state(keys: Any) -> bool:
    """Whether state-dict keys use the official X-FM names (``*.roberta.*`` / ``embeddings.
    word_embeddings`` / ``blocks.N.attn.relative_position_bias_table``)."""
    for k in keys:
        if k.startswith(("text_encoder.roberta.", "fusion_encoder.roberta.")):
            return True
        if k.startswith("text_encoder.embeddings.word_embeddings."):
            return True
    return False


def to_official_task(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights under the official task names (loads ``strict=True`` into the
    official task class of the same dimensions)."""
    out = to_official(model, text_prefix=TASK_TEXT_PREFIX)
    return {k: v for k, v in out.items() if not _NOT_IN_TASKS.search(k)}


def task_config_from_golden(config: Mapping[str, Any]) -> XFMConfig:
    """:class:`XFMConfig` of a golden-format task ``config.json``.

    Task directories describe the fusion encoder by its RoBERTa json (``text_config_json``): the
    fusion ``intermediate_size`` / ``layer_norm_eps`` default to the text ones, ``embed_dim`` to
    the fine-tuning config's (or 256: it is unused by tasks without ITC).
    """
    cfg = copy.deepcopy(dict(config))
    text, fusion = cfg.get("text", {}), cfg.setdefault("fusion", {})
    rob = cfg.get("text_config_json", {})
    fusion.setdefault(
        "intermediate_size", text.get("intermediate_size", rob.get("intermediate_size"))
    )
    fusion.setdefault("layer_norm_eps", text.get("layer_norm_eps", rob.get("layer_norm_eps", 1e-5)))
    used = cfg.get("official_config_used", {})
    cfg.setdefault("embed_dim", used.get("embed_dim", 256))
    cfg.setdefault("temp", used.get("temp", 0.07))
    if int(fusion.get("cross_attention_layers") or fusion.get("layers") or 0) == 0:
        fusion["layers"] = 0
        fusion["cross_attention_layers"] = 0
    out = xfm_config_from_golden(cfg)
    out.fusion.setdefault("heads", text.get("heads"))
    return out


def read_key_list(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``golden/keys/<task>.txt`` -> ``{name: (shape, dtype)}`` (``#`` lines are comments)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, shape, dtype = line.split("\t")
        dims = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
        out[name] = (dims, getattr(torch, dtype))
    return out


def resolve_checkpoint(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """A checkpoint path and what is known about it.

    ``path`` may be a safetensors / torch file, an xfm run dir (``model.safetensors``) or a
    golden-format directory (``config.json`` + ``model.safetensors``). Returns ``(weights file,
    info)`` where ``info`` may hold ``task``, ``model`` (xfm config dict) or ``golden`` (the
    ``config.json`` dict).
    """
    p = Path(path)
    info: dict[str, Any] = {}
    if p.is_dir():
        if (p / "config.json").is_file():
            info["golden"] = json.loads((p / "config.json").read_text())
            info["task"] = info["golden"].get("task")
        candidates = [p / "model.safetensors", p / "model.pth", p / "checkpoint_best.pth"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"{p} holds none of {[c.name for c in candidates]}")
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
    return str(p), info


def load_task_weights(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    strict: bool = False,
) -> LoadReport:
    """Load weights of any supported layout into a task model.

    * official names (pretraining or task checkpoint): :func:`load_official_state`;
    * xfm names (a pretraining or task model of this library): :func:`load_into`; heads the task
      model does not have are ignored.

    With ``strict=False`` (initialising a fine-tuning run) keys that do not fit are reported,
    not fatal: new task heads stay freshly initialised.
    """
    if isinstance(source, Mapping):
        state, label = dict(source), "<state dict>"
    else:
        label, _ = resolve_checkpoint(source)
        state = load_state_dict(label)
    if is_official_state(state):
        return load_official_state(model, state, strict=strict, source=label)
    return load_into(model, state, strict=strict, allow_unexpected=_OPTIONAL_HEADS, source=label)


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
    if isinstance(source, Mapping):
        state, label = dict(source), "<state dict>"
    else:
        label, _ = resolve_checkpoint(source)
        state = load_state_dict(label)
    has_decoder = any(k.startswith("text_decoder.") for k in state)
    init = getattr(model, "init_from_pretrained", None)
    if has_decoder and is_official_state(state) and hasattr(model, "text_decoder"):
        from xfm.tasks.vqa_model import VQAModel, official_key_mapper

        if isinstance(model, VQAModel):  # an official VQA task checkpoint
            return load_into(
                model, state, mapper=official_key_mapper(model), strict=False, source=label
            )
    if init is None or has_decoder or decoder_init == "none":
        return load_task_weights(model, state)
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


def load_official_task(task: Any, directory: str | os.PathLike[str]) -> nn.Module:
    """The task model of a golden-format directory (``config.json`` + official weights),
    loaded strictly, in ``eval()`` mode."""
    # issue 10 tasks (VQA, GLUE, ImageNet) import their official checkpoints themselves
    if hasattr(task, "load_official"):
        return task.load_official(directory)
    weights, info = resolve_checkpoint(directory)
    if "golden" not in info:
        raise FileNotFoundError(f"{directory} has no config.json describing the official model")
    model = task.build_model(task_config_from_golden(info["golden"]))
    state = load_state_dict(weights)
    if not is_official_state(state):
        raise CheckpointError(f"{weights} does not use the official X-FM names")
    load_official_state(model, state, strict=True, source=weights)
    return model.eval()


def golden_config_of(model: nn.Module, task: str) -> dict[str, Any]:
    """A golden-format ``config.json`` dict describing ``model`` (BEiT-v2 vision + RoBERTa text
    encoders), readable by :func:`task_config_from_golden`."""
    v, t = model.vision_encoder.config, model.text_encoder.config
    f = model.fusion_encoder.config
    size = v.image_size if isinstance(v.image_size, int) else v.image_size[0]
    grid = size // v.patch_size
    return {
        "task": task,
        "official_class": f"exported by xfm.tasks from {type(model).__name__}",
        "vision": {
            "image_size": size,
            "patch_size": v.patch_size,
            "num_patches": grid * grid,
            "width": v.width,
            "layers": v.layers,
            "heads": v.heads,
            "mlp_hidden": round(v.mlp_ratio * v.width),
            "layer_norm_eps": v.layer_norm_eps,
            "layer_scale_init_values": v.layer_scale_init,
            "use_shared_rel_pos_bias": v.rel_pos == "shared",
        },
        "text": {
            "vocab_size": t.vocab_size,
            "width": t.width,
            "layers": t.layers,
            "heads": t.heads,
            "intermediate_size": t.ffn_dim,
            "max_position_embeddings": t.max_positions,
            "type_vocab_size": t.type_vocab_size,
            "pad_token_id": t.pad_token_id,
            "layer_norm_eps": t.layer_norm_eps,
        },
        "fusion": {
            "layers": f.layers,
            "cross_attention_layers": f.layers,
            "heads": f.heads,
            "intermediate_size": f.ffn_dim,
            "layer_norm_eps": f.layer_norm_eps,
            "width": f.width,
        },
        "embed_dim": int(model.config.embed_dim),
        "temp": float(model.config.temp),
        "has_fusion_proj": v.width != t.width,
    }


def export_official_task_dir(model: nn.Module, task: str, out: str | os.PathLike[str]) -> Path:
    """Write ``model`` as an official task checkpoint directory: ``model.safetensors`` (official
    names, :func:`to_official_task`) and a golden-format ``config.json``; ``xfm eval TASK
    --checkpoint DIR`` and :func:`load_official_task` read it back."""
    from xfm.core.checkpoint import atomic_write, save_state_dict
    from xfm.tasks.official_export import export_official_classification_dir, official_layout_of

    try:
        official_layout_of(model)
    except TypeError:
        pass
    else:  # VQA / GLUE / ImageNet models (issue 10): their own layouts
        return export_official_classification_dir(model, out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(to_official_task(model), str(out / "model.safetensors"))
    with atomic_write(str(out / "config.json"), "w") as fh:
        json.dump(golden_config_of(model, task), fh, indent=1)
    return out

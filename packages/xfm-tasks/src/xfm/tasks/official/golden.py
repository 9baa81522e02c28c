"""Golden-format ``config.json`` <-> our model configs (every layout).

A golden directory (``../shared/golden``, ``../shared/golden_tasks/*``, the copies under
``packages/*/tests/data``) describes the official model by ``vision`` / ``text`` / ``fusion``
(/ ``decoder``) sections. These helpers turn the sections into our registry options and back.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xfm.fusion.model import XFMConfig
from xfm.fusion.official import xfm_config_from_golden

__all__ = [
    "decoder_options",
    "fusion_options",
    "golden_config_of",
    "read_golden_config",
    "read_key_list",
    "task_config_from_golden",
    "text_options",
    "vision_options",
]


def read_golden_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a golden-format directory (``FileNotFoundError`` naming it)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a golden directory needs config.json")
    return json.loads(path.read_text())


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


def _need(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ValueError(f"golden config section {where!r} lacks {key!r}; has {sorted(section)}")
    return section[key]


def vision_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``beit_v2`` registry options from the ``vision`` section of a golden ``config.json``."""
    v = cfg["vision"]
    width = int(_need(v, "width", "vision"))
    ratio = v.get("mlp_ratio", v.get("mlp_hidden", 4 * width) / width)
    return {
        "name": "beit_v2",
        "image_size": int(_need(v, "image_size", "vision")),
        "patch_size": int(_need(v, "patch_size", "vision")),
        "width": width,
        "layers": int(_need(v, "layers", "vision")),
        "heads": int(_need(v, "heads", "vision")),
        "mlp_ratio": float(ratio),
        "layer_norm_eps": float(v.get("layer_norm_eps", 1e-6)),
        "rel_pos": "per_block" if not v.get("use_shared_rel_pos_bias", False) else "shared",
    }


def text_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``roberta`` registry options from the ``text`` section (RoBERTa json for the rest)."""
    t = cfg["text"]
    j = cfg.get("text_config_json", {})
    return {
        "name": "roberta",
        "vocab_size": int(_need(t, "vocab_size", "text")),
        "width": int(_need(t, "width", "text")),
        "layers": int(_need(t, "layers", "text")),
        "heads": int(_need(t, "heads", "text")),
        "ffn_dim": int(t.get("intermediate_size", j.get("intermediate_size", 4 * t["width"]))),
        "max_positions": int(t.get("max_position_embeddings", j.get("max_position_embeddings"))),
        "pad_token_id": int(t.get("pad_token_id", 1)),
        "type_vocab_size": int(t.get("type_vocab_size", 1)),
        "layer_norm_eps": float(t.get("layer_norm_eps", 1e-5)),
        "position_style": "roberta",
    }


def fusion_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cross_attention`` fusion-encoder options from the ``fusion`` + ``text`` sections."""
    f, t = cfg["fusion"], text_options(cfg)
    return {
        "name": "cross_attention",
        "width": int(f.get("width", t["width"])),
        "layers": int(_need(f, "layers", "fusion")),
        "heads": int(f.get("heads", t["heads"])),
        "ffn_dim": int(f.get("intermediate_size", t["ffn_dim"])),
        "vision_width": int(f.get("encoder_width", cfg["vision"]["width"])),
        "layer_norm_eps": t["layer_norm_eps"],
    }


def decoder_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~xfm.tasks.decoder.DecoderConfig` fields from the ``decoder`` section."""
    d, t = cfg["decoder"], text_options(cfg)
    return {
        "vocab_size": int(d.get("vocab_size", t["vocab_size"])),
        "width": int(d.get("width", t["width"])),
        "layers": int(_need(d, "layers", "decoder")),
        "heads": int(d.get("heads", t["heads"])),
        "ffn_dim": int(d.get("intermediate_size", t["ffn_dim"])),
        "max_positions": t["max_positions"],
        "type_vocab_size": t["type_vocab_size"],
        "pad_token_id": t["pad_token_id"],
        "bos_token_id": int(cfg["text"].get("bos_token_id", 0)),
        "eos_token_id": int(cfg["text"].get("eos_token_id", 2)),
        "layer_norm_eps": t["layer_norm_eps"],
        "context_width": int(d.get("encoder_width", t["width"])),
    }


def task_config_from_golden(config: Mapping[str, Any]) -> XFMConfig:
    """:class:`XFMConfig` of a golden-format task ``config.json`` (retrieval, NLVR2, grounding).

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


def golden_config_of(model: nn.Module, task: str) -> dict[str, Any]:
    """A golden-format ``config.json`` dict describing an X-FM ``model`` (BEiT-v2 vision +
    RoBERTa text encoders), readable by :func:`task_config_from_golden`."""
    v, t = model.vision_encoder.config, model.text_encoder.config
    f = model.fusion_encoder.config
    size = v.image_size if isinstance(v.image_size, int) else v.image_size[0]
    grid = size // v.patch_size
    out: dict[str, Any] = {
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
        "has_fusion_proj": v.width != t.width,
    }
    config = getattr(model, "config", None)
    if hasattr(config, "embed_dim"):
        out["embed_dim"] = int(config.embed_dim)
        out["temp"] = float(config.temp)
    return out

"""Official X-FM checkpoints <-> :class:`~xfm.fusion.model.XFM`.

:func:`from_official` loads the authors' pretraining checkpoint (a torch pickle with the weights
under ``model``, read with ``weights_only=True``, or safetensors) into our model;
:func:`to_official` exports back to the official names. The round trip is bit-exact.

How the names map (``official -> ours``):

* ``vision_encoder.*`` -> ``vision_encoder.*`` (``attn.relative_position_bias_table`` ->
  ``rel_pos.table``, resized when the checkpoint's resolution differs; the
  ``relative_position_index`` buffers are recomputed from the patch grid on export);
* ``text_encoder.roberta.*`` (``text_encoder.*`` in task checkpoints) -> ``text_encoder.*`` and
  ``text_encoder.lm_head.*`` -> ``text_mlm_head.*`` (the decoder is tied to the word embeddings
  in both models);
* ``fusion_encoder.roberta.encoder.*`` -> ``fusion_encoder.layers.*``,
  ``fusion_encoder.lm_head.*`` -> ``fusion_mlm_head.*``, and the fusion word embeddings (tied to
  the fusion decoder in the official model; the fusion encoder never reads them otherwise) ->
  ``fusion_mlm_head.decoder.weight``;
* ``vision_proj``, ``text_proj``, ``temp``, ``itm_head``, ``bbox_head``: same names.

Tensors that the official model carries but never uses are listed in :data:`UNUSED_OFFICIAL`.
They are kept aside on import (``model.official_extras``) and written back on export; a model
that was not imported gets freshly initialised tensors of the official shapes there instead.
Second names of tied tensors (:data:`TIED_ALIASES`) are checked to be equal on import and
written back as the same tensor on export.

This module is the pretraining key mapping, kept beside the model. The task layouts, the
golden-output check (``xfm check-official``) and the conversion commands build on it in
xfm-tasks (:mod:`xfm.tasks.official`); nothing here imports a package above xfm-fusion.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from xfm.core.checkpoint import (
    CheckpointError,
    KeyMapper,
    LoadReport,
    Rename,
    load_into,
    load_state_dict,
)
from xfm.fusion.model import XFM, XFMConfig
from xfm.text.hf import encoder_key_rules, mlm_head_key_rules
from xfm.vision.convert import beit_rules, fit_rules
from xfm.vision.rel_pos import NUM_EXTRA_REL_POS, relative_position_index

__all__ = [
    "TIED_ALIASES",
    "UNUSED_OFFICIAL",
    "from_official",
    "infer_official_config",
    "load_official_state",
    "official_key_mapper",
    "to_official",
    "xfm_config_from_golden",
]

#: Official tensors that the official model never reads, with the reason. Kept aside on import
#: and written back on export (so the round trip is exact); they have no counterpart in XFM.
UNUSED_OFFICIAL: dict[str, str] = {
    r"^(?:text|fusion)_encoder\.lm_cap_head\.": (
        "captioning head that RobertaForMaskedLM builds but pretraining never calls"
    ),
    r"^fusion_proj\.": "Linear(text width -> vision width), built when the widths differ, unused",
    r"^fusion_encoder\.(?:roberta\.)?embeddings\.(?:position_embeddings|token_type_embeddings"
    r"|LayerNorm)\.": "the fusion encoder is fed the text states, its embedding layer is unused",
    r"\.embeddings\.position_ids$": "position-id buffer (arange), recomputed on the fly",
}

#: ``alias: canonical`` — second names of tied tensors in the official state dict (pretraining
#: layout, text prefix ``text_encoder.roberta.``). On import the alias must equal its canonical
#: tensor and is dropped; on export it is written back as the same tensor.
TIED_ALIASES: dict[str, str] = {
    "text_encoder.lm_head.decoder.bias": "text_encoder.lm_head.bias",
    "fusion_encoder.lm_head.decoder.weight": (
        "fusion_encoder.roberta.embeddings.word_embeddings.weight"
    ),
    "fusion_encoder.lm_head.decoder.bias": "fusion_encoder.lm_head.bias",
}

_FAMILY_PREFIXES = ("vision_encoder.", "text_encoder.", "fusion_encoder.")


def _is_unused(key: str) -> bool:
    return any(re.search(p, key) for p in UNUSED_OFFICIAL)


def _text_prefix(keys: Any) -> str:
    """``text_encoder.roberta.`` (pretraining checkpoints) or ``text_encoder.`` (task ones)."""
    keys = list(keys)
    if any(k.startswith("text_encoder.roberta.") for k in keys):
        return "text_encoder.roberta."
    return "text_encoder."


# ----------------------------------------------------------------------------- key mapping
def official_key_mapper(model: XFM, *, text_prefix: str = "text_encoder.roberta.") -> KeyMapper:
    """The :class:`KeyMapper` from official names (unused tensors and tied aliases removed) to
    ``model``'s state dict. Its :meth:`~KeyMapper.inverse` renames back (no resize).

    Args:
        model: the target; its vision grid decides how relative position tables are resized.
        text_prefix: ``text_encoder.roberta.`` (pretraining) or ``text_encoder.`` (tasks).
    """
    layers = model.vision_encoder.config.layers
    rel_pos = model.vision_encoder.config.rel_pos
    rules = [
        Rename(
            r"^fusion_encoder\.roberta\.embeddings\.word_embeddings\.weight$",
            "fusion_mlm_head.decoder.weight",
        ),
        *encoder_key_rules("fusion_encoder.roberta.", "fusion_encoder."),
        *mlm_head_key_rules("roberta", "fusion_encoder.lm_head.", "fusion_mlm_head."),
        *encoder_key_rules(text_prefix, "text_encoder."),
        *mlm_head_key_rules("roberta", "text_encoder.lm_head.", "text_mlm_head."),
        *beit_rules("vision_encoder.", layers=layers if rel_pos == "per_block" else None),
        *fit_rules(model.vision_encoder, "vision_encoder."),
    ]
    return KeyMapper(rules, name="xfm-official")


def _export_mapper(model: XFM, text_prefix: str) -> KeyMapper:
    """ours -> official names (the inverse of the renames; resizing does not apply).

    The fusion decoder weight is exported under its canonical official name, the fusion word
    embeddings; :func:`to_official` adds the ``lm_head.decoder.weight`` alias.
    """
    renames = [
        r for r in official_key_mapper(model, text_prefix=text_prefix).rules if type(r) is Rename
    ]
    decoder = Rename(
        r"^fusion_mlm_head\.decoder\.weight$",
        "fusion_encoder.roberta.embeddings.word_embeddings.weight",
    )
    return KeyMapper([decoder]) + KeyMapper(renames[1:], name="xfm-official").inverse()


def _check_tied(state: Mapping[str, torch.Tensor], aliases: Mapping[str, str]) -> None:
    for alias, canonical in aliases.items():
        if alias in state and canonical in state:
            a, c = state[alias], state[canonical]
            if a.shape != c.shape or not torch.equal(a, c):
                raise CheckpointError(
                    f"{alias} and {canonical} are one tied tensor in X-FM but differ in this "
                    f"checkpoint (shapes {list(a.shape)} vs {list(c.shape)}); it was not saved "
                    "from an X-FM model"
                )


def _aliases(text_prefix: str) -> dict[str, str]:
    out = dict(TIED_ALIASES)
    out["text_encoder.lm_head.decoder.weight"] = f"{text_prefix}embeddings.word_embeddings.weight"
    return out


def check_official_family(keys: Any, source: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` unless ``keys`` look like an official X-FM state dict."""
    keys = list(keys)
    missing = [p for p in _FAMILY_PREFIXES if not any(k.startswith(p) for k in keys)]
    if missing:
        tops = sorted({k.split(".", 1)[0] for k in keys})
        raise CheckpointError(
            f"{source} is not an official X-FM checkpoint: expected keys under "
            f"{', '.join(_FAMILY_PREFIXES)}; none under {', '.join(missing)}. Top-level names "
            f"found: {tops[:12]}{' ...' if len(tops) > 12 else ''}"
        )


def load_official_state(
    model: XFM,
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "<official state dict>",
) -> LoadReport:
    """Load an official state dict into ``model``; unused tensors go to ``model.official_extras``.

    Raises:
        CheckpointError: not an X-FM checkpoint, or tied tensors that differ.
        CheckpointMismatchError: (``strict``) missing, unexpected or mis-shaped keys, grouped.
    """
    check_official_family(state.keys(), source)
    text_prefix = _text_prefix(state.keys())
    aliases = _aliases(text_prefix)
    _check_tied(state, aliases)
    extras = {k: v for k, v in state.items() if _is_unused(k)}
    kept = {
        k: v
        for k, v in state.items()
        if k not in extras and (k not in aliases or k == "text_encoder.lm_head.decoder.weight")
    }
    report = load_into(
        model,
        kept,
        mapper=official_key_mapper(model, text_prefix=text_prefix),
        strict=strict,
        source=source,
    )
    model.official_extras = {k: v.detach().clone() for k, v in extras.items()}
    return report


# ------------------------------------------------------------------------------- export
def _fresh_unused(model: XFM, text_prefix: str) -> dict[str, torch.Tensor]:
    """Official-shaped stand-ins for :data:`UNUSED_OFFICIAL` (for a model never imported)."""
    tcfg = model.text_encoder.config
    d, v = tcfg.width, tcfg.vocab_size
    device = next(model.parameters()).device
    out: dict[str, torch.Tensor] = {}
    for owner in ("text_encoder", "fusion_encoder"):
        head = f"{owner}.lm_cap_head."
        out[head + "bias"] = torch.zeros(v, device=device)
        out[head + "dense.weight"] = torch.empty(d, d, device=device).normal_(0, 0.02)
        out[head + "dense.bias"] = torch.zeros(d, device=device)
        out[head + "layer_norm.weight"] = torch.ones(d, device=device)
        out[head + "layer_norm.bias"] = torch.zeros(d, device=device)
        out[head + "decoder.weight"] = torch.empty(v, d, device=device).normal_(0, 0.02)
        out[head + "decoder.bias"] = out[head + "bias"]
    emb = "fusion_encoder.roberta.embeddings."
    out[emb + "position_embeddings.weight"] = torch.empty(
        tcfg.max_positions, d, device=device
    ).normal_(0, 0.02)
    if tcfg.type_vocab_size:
        out[emb + "token_type_embeddings.weight"] = torch.empty(
            tcfg.type_vocab_size, d, device=device
        ).normal_(0, 0.02)
    out[emb + "LayerNorm.weight"] = torch.ones(d, device=device)
    out[emb + "LayerNorm.bias"] = torch.zeros(d, device=device)
    ids = torch.arange(tcfg.max_positions, device=device).unsqueeze(0)
    out[f"{text_prefix}embeddings.position_ids"] = ids
    out[emb + "position_ids"] = ids.clone()
    dv = model.vision_encoder.width
    if dv != d:
        out["fusion_proj.weight"] = torch.empty(dv, d, device=device).normal_(0, 1 / math.sqrt(d))
        out["fusion_proj.bias"] = torch.zeros(dv, device=device)
    return out


def to_official(
    model: XFM, *, text_prefix: str = "text_encoder.roberta."
) -> dict[str, torch.Tensor]:
    """``model``'s weights under the official names, in a state dict the official ``XFM`` loads
    with ``strict=True`` (tied tensors appear under both names as one tensor)."""
    ours = model.state_dict()
    out = _export_mapper(model, text_prefix).apply(ours).state
    vcfg = model.vision_encoder.config
    if vcfg.rel_pos == "per_block":
        index = relative_position_index(model.vision_encoder.grid).to(
            model.vision_encoder.cls_token.device
        )
        for i in range(vcfg.layers):
            out[f"vision_encoder.blocks.{i}.attn.relative_position_index"] = index
    extras = getattr(model, "official_extras", None) or {}
    for key, value in _fresh_unused(model, text_prefix).items():
        out[key] = extras.get(key, value)
    for key, value in extras.items():
        out.setdefault(key, value)
    for alias, canonical in _aliases(text_prefix).items():
        if canonical in out:
            out[alias] = out[canonical]
    return out


# ------------------------------------------------------------------------------- configs
def xfm_config_from_golden(config: Mapping[str, Any]) -> XFMConfig:
    """The :class:`XFMConfig` of a golden-format ``config.json`` (its ``vision``, ``text``,
    ``fusion``, ``embed_dim``, ``temp`` and ``flags`` entries)."""
    try:
        v, t, f = config["vision"], config["text"], config["fusion"]
        vision = {
            "name": "beit_v2",
            "image_size": v["image_size"],
            "patch_size": v["patch_size"],
            "width": v["width"],
            "layers": v["layers"],
            "heads": v["heads"],
            "mlp_ratio": v.get("mlp_hidden", v.get("mlp_ratio", 4) * v["width"]) / v["width"],
            "layer_norm_eps": v.get("layer_norm_eps", 1e-6),
            "layer_scale_init": v.get("layer_scale_init_values", 0.1),
            "rel_pos": "shared" if v.get("use_shared_rel_pos_bias") else "per_block",
        }
        text = {
            "name": "roberta",
            "vocab_size": t["vocab_size"],
            "width": t["width"],
            "layers": t["layers"],
            "heads": t["heads"],
            "ffn_dim": t["intermediate_size"],
            "max_positions": t["max_position_embeddings"],
            "type_vocab_size": t.get("type_vocab_size", 1),
            "pad_token_id": t.get("pad_token_id", 1),
            "layer_norm_eps": t.get("layer_norm_eps", 1e-5),
        }
        fusion = {
            "name": "cross_attention",
            "layers": f.get("cross_attention_layers") or f["layers"],
            "heads": f["heads"],
            "ffn_dim": f["intermediate_size"],
            "layer_norm_eps": f.get("layer_norm_eps", 1e-5),
        }
    except KeyError as e:
        raise ValueError(f"golden config.json lacks the entry {e}; see golden/README.md") from e
    flags = config.get("flags", {})
    return XFMConfig(
        text=text,
        vision=vision,
        fusion=fusion,
        embed_dim=config["embed_dim"],
        temp=config.get("temp", 0.07),
        min_temp=config.get("min_temp", 0.001),
        max_temp=config.get("max_temp", 0.5),
        stop_gradient=bool(flags.get("detach_text_forMLM", True)),
    )


def _layer_count(keys: Any, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_official_config(
    state: Mapping[str, torch.Tensor],
    *,
    text_heads: int | None = None,
    fusion_heads: int | None = None,
    embed_dim: int | None = None,
) -> XFMConfig:
    """Read an :class:`XFMConfig` off an official state dict's names and shapes.

    Everything is in the shapes except the text and fusion head counts: they default to
    ``width // 64`` (12 for base, 16 for large), as in every published X-FM model.
    """
    check_official_family(state.keys())
    keys = list(state)
    tp = _text_prefix(keys)

    def get(name: str) -> torch.Tensor:
        if name not in state:
            raise CheckpointError(f"official checkpoint lacks {name!r}; cannot infer the config")
        return state[name]

    patch = get("vision_encoder.patch_embed.proj.weight")
    dv = patch.shape[0]
    vlayers = _layer_count(keys, r"^vision_encoder\.blocks\.(\d+)\.")
    table_key = "vision_encoder.blocks.0.attn.relative_position_bias_table"
    shared = table_key not in state
    table = state.get(
        table_key, state.get("vision_encoder.rel_pos_bias.relative_position_bias_table")
    )
    if table is None:
        raise CheckpointError("official checkpoint has no relative position bias table")
    side = math.isqrt(table.shape[0] - NUM_EXTRA_REL_POS)
    grid = (side + 1) // 2
    word = get(f"{tp}embeddings.word_embeddings.weight")
    dt = word.shape[1]
    ffn = get(f"{tp}encoder.layer.0.intermediate.dense.weight").shape[0]
    pos = get(f"{tp}embeddings.position_embeddings.weight")
    types = state.get(f"{tp}embeddings.token_type_embeddings.weight")
    text = {
        "name": "roberta",
        "vocab_size": word.shape[0],
        "width": dt,
        "layers": _layer_count(keys, rf"^{re.escape(tp)}encoder\.layer\.(\d+)\."),
        "heads": text_heads or max(dt // 64, 1),
        "ffn_dim": ffn,
        "max_positions": pos.shape[0],
        "type_vocab_size": 0 if types is None else types.shape[0],
    }
    fusion = {
        "name": "cross_attention",
        "layers": _layer_count(keys, r"^fusion_encoder\.roberta\.encoder\.layer\.(\d+)\."),
        "heads": fusion_heads or max(dt // 64, 1),
        "ffn_dim": get("fusion_encoder.roberta.encoder.layer.0.intermediate.dense.weight").shape[0],
    }
    vision = {
        "name": "beit_v2",
        "image_size": grid * patch.shape[-1],
        "patch_size": patch.shape[-1],
        "width": dv,
        "layers": vlayers,
        "heads": table.shape[1],
        "mlp_ratio": get("vision_encoder.blocks.0.mlp.fc1.weight").shape[0] / dv,
        "rel_pos": "shared" if shared else "per_block",
    }
    proj = get("vision_proj.weight")
    return XFMConfig(text=text, vision=vision, fusion=fusion, embed_dim=embed_dim or proj.shape[0])


def _check_config_matches(model: XFM, state: Mapping[str, torch.Tensor], source: str) -> None:
    """One clear error naming each dimension where the config and the checkpoint disagree."""
    tp = _text_prefix(state.keys())
    checks: list[tuple[str, str, int, Any]] = []  # (what, key, dim, ours)
    tcfg, vcfg = model.text_encoder.config, model.vision_encoder.config
    checks += [
        ("text width", f"{tp}embeddings.word_embeddings.weight", 1, tcfg.width),
        ("text vocab_size", f"{tp}embeddings.word_embeddings.weight", 0, tcfg.vocab_size),
        ("text max_positions", f"{tp}embeddings.position_embeddings.weight", 0, tcfg.max_positions),
        ("vision width", "vision_encoder.cls_token", 2, model.vision_encoder.width),
        ("vision patch size", "vision_encoder.patch_embed.proj.weight", 3, vcfg.patch_size),
        ("embed_dim", "vision_proj.weight", 0, model.config.embed_dim),
    ]
    problems = []
    for what, key, dim, ours in checks:
        t = state.get(key)
        if t is not None and t.dim() > dim and t.shape[dim] != ours:
            problems.append(f"{what}: checkpoint {t.shape[dim]} ({key}), config {ours}")
    keys = list(state)
    for what, pattern, ours in (
        ("text layers", rf"^{re.escape(tp)}encoder\.layer\.(\d+)\.", tcfg.layers),
        (
            "fusion layers",
            r"^fusion_encoder\.roberta\.encoder\.layer\.(\d+)\.",
            len(model.fusion_encoder.layers),
        ),
        ("vision layers", r"^vision_encoder\.blocks\.(\d+)\.", vcfg.layers),
    ):
        n = _layer_count(keys, pattern)
        if n and n != ours:
            problems.append(f"{what}: checkpoint {n}, config {ours}")
    if problems:
        raise CheckpointError(f"the config does not match {source}:\n  " + "\n  ".join(problems))


def from_official(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    config: XFMConfig | Mapping[str, Any] | None = None,
    *,
    strict: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    **config_overrides: Any,
) -> XFM:
    """Build an :class:`XFM` and load an official X-FM pretraining checkpoint into it.

    Args:
        source: a path or URL (torch pickle with the weights under ``model``, or safetensors),
            or a state dict with official names.
        config: the model config; ``None`` reads it off the checkpoint
            (:func:`infer_official_config`). A golden-format ``config.json`` dict works too.
        strict: fail on any missing, unexpected or mis-shaped key (grouped report).
        config_overrides: fields of :class:`XFMConfig` to replace (e.g. ``stop_gradient=False``).

    Raises:
        CheckpointError: not an X-FM checkpoint, or the config does not fit it (each mismatch
            named), or tied tensors that differ.
        CheckpointMismatchError: keys that do not fit, grouped by pattern.
    """
    if isinstance(source, Mapping):
        state, label = dict(source), "<official state dict>"
    else:
        label = os.fspath(source)
        state = load_state_dict(source, storage_options=storage_options)
    check_official_family(state.keys(), label)
    if config is None:
        config = infer_official_config(state)
    elif isinstance(config, Mapping):
        config = (
            xfm_config_from_golden(config)
            if "vision" in config and "flags" in config
            else (XFMConfig(**config))
        )
    model = XFM(config, **config_overrides)
    _check_config_matches(model, state, label)
    load_official_state(model, state, strict=strict, source=label)
    if not model.config.vision_guidance:
        model.reset_mim_teacher()  # the frozen MIM teacher = the imported vision encoder
    return model

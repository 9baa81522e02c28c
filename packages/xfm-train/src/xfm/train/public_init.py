"""The official recipe's initialisation from public weights (the ``init:`` config section).

The official X-FM pretraining starts its language encoder (and MLM head) from a Hugging Face
RoBERTa / BERT and its vision encoder from BEiT-v2; projections, ITM/bbox heads, the temperature
and the fusion encoder start from scratch. :func:`apply_init` does the same for an
:class:`~xfm.fusion.XFM`:

* ``init.text``: ``config.json`` is checked against ``model.text`` (width, heads, FFN,
  vocabulary, positions, token types, activation, BERT vs RoBERTa), the requested layers are
  selected (:func:`select_layers`: all, a list, or ``every_other`` as the official code takes 12 of
  24) and loaded with :mod:`xfm.text.hf`'s key rules; the MLM head too when the checkpoint has one.
* ``init.vision``: a BEiT-v2 checkpoint in timm's or the official layout, mapped with
  :mod:`xfm.vision.convert` (a shared relative position table copied into every block,
  tables resized to the model's grid, the patch size checked).
* ``init.fusion`` (optional; the official code does not do it): the fusion encoder's
  self-attention / FFN from the text checkpoint's (upper) layers, cross-attention new.

Every source is checked in full before anything is loaded; a source that does not fit raises
:class:`InitError` (one line naming the config key). The model parameters no source filled are
*new*: :class:`InitResult` lists them grouped by module, and the optimizer gives them
``optim.new_param_lr_mult``. The record is written beside the checkpoints (``init.json``) so that
a resumed run, which loads its checkpoint and never runs init again, builds the same groups.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xfm.core.checkpoint import CheckpointError, KeyMapper, load_state_dict
from xfm.core.checkpoint.report import group_keys
from xfm.train.config import FusionInitSection, InitSection, TextInitSection, VisionInitSection

__all__ = [
    "INIT_RECORD",
    "InitError",
    "InitResult",
    "apply_init",
    "format_new",
    "read_init_record",
    "select_layers",
    "write_init_record",
]

#: File name of the init record beside the checkpoints.
INIT_RECORD = "init.json"

#: :class:`~xfm.text.config.TextEncoderConfig` fields a checkpoint must match, and the config
#: key of each in the pretraining config.
_TEXT_FIELDS = {
    "width": "width",
    "heads": "heads",
    "ffn_dim": "ffn_dim",
    "vocab_size": "vocab_size",
    "max_positions": "max_positions",
    "type_vocab_size": "type_vocab_size",
    "act": "act",
    "position_style": "name",
    "layer_norm_eps": "layer_norm_eps",
}


class InitError(CheckpointError):
    """An ``init:`` source that is missing or does not fit the configured model (one line)."""


@dataclass
class InitResult:
    """What :func:`apply_init` did.

    Attributes:
        sources: one line per source (what was loaded from where).
        filled: model parameter / buffer names loaded from a source.
        new: model parameter names no source filled (each tensor once).
    """

    sources: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    def lines(self, lr_mult: float | None = None) -> list[str]:
        """Log lines: one per source, then the grouped new parameters."""
        lr = f", lr x{lr_mult:g}" if lr_mult is not None else ""
        return [*self.sources, f"init: new (from scratch{lr}): {format_new(self.new)}"]


# -------------------------------------------------------------------------- layer selection
def select_layers(
    available: int, wanted: int, layers: Sequence[int] | str | None, key: str
) -> list[int]:
    """The source layer of each model layer.

    Args:
        available: layers of the checkpoint.
        wanted: layers of the model.
        layers: ``None`` (all, the counts must match), ``"every_other"`` (source layers 1, 3,
            5, ... of a checkpoint with ``2 * wanted`` layers: the official 24 -> 12) or an
            explicit list of ``wanted`` source layers.
        key: the config key, for messages.

    Raises:
        InitError: the selection does not fit the checkpoint or the model.
    """
    if layers is None:
        if available != wanted:
            raise InitError(
                f"{key}: the checkpoint has {available} layers but the model {wanted}; set {key} "
                f"to a list of {wanted} checkpoint layers (or every_other), or change the model's "
                f"layers"
            )
        return list(range(wanted))
    if layers == "every_other":
        if available != 2 * wanted:
            raise InitError(
                f"{key}=every_other takes layers 1, 3, 5... of a checkpoint with twice the "
                f"model's layers ({2 * wanted}); the checkpoint has {available}"
            )
        return list(range(1, available, 2))
    chosen = [int(i) for i in layers]
    if len(chosen) != wanted:
        raise InitError(
            f"{key} lists {len(chosen)} checkpoint layers but the model has {wanted} layers; "
            f"list one checkpoint layer per model layer"
        )
    bad = [i for i in chosen if not 0 <= i < available]
    if bad:
        raise InitError(
            f"{key}: layer(s) {bad} do not exist: the checkpoint has {available} layers "
            f"(0-{available - 1})"
        )
    return chosen


def _pick_layers(
    state: Mapping[str, torch.Tensor], layer_prefix: str, chosen: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Keys ``{layer_prefix}{src}.*`` renamed to ``{layer_prefix}{dst}.*`` for
    ``dst, src in enumerate(chosen)``; other layers dropped, other keys kept."""
    pattern = re.compile(rf"^{re.escape(layer_prefix)}(\d+)\.(.*)$")
    targets: dict[int, list[int]] = {}
    for dst, src in enumerate(chosen):
        targets.setdefault(src, []).append(dst)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        m = pattern.match(k)
        if m is None:
            out[k] = v
            continue
        for dst in targets.get(int(m.group(1)), []):
            out[f"{layer_prefix}{dst}.{m.group(2)}"] = v
    return out


# ------------------------------------------------------------------------------- sources
@dataclass
class _Source:
    """Tensors of one source already in model names, and what to say about them."""

    key: str  # config key, e.g. "init.text"
    state: dict[str, torch.Tensor]
    prefixes: tuple[str, ...]  # model prefixes this source is meant to fill
    required: tuple[str, ...]  # model key patterns that must all be filled
    label: str
    hint: str  # what to change when shapes differ


def _text_config_mismatch(hf_config: dict[str, Any], model_cfg: Any, path: str) -> None:
    from xfm.text.hf import config_from_hf

    try:
        ckpt = config_from_hf(hf_config)
    except (ValueError, KeyError) as e:
        raise InitError(f"init.text.path: {path}: {e}") from None
    diffs = []
    for name, cfg_key in _TEXT_FIELDS.items():
        have, want = getattr(ckpt, name), getattr(model_cfg, name)
        if have != want:
            if name == "position_style":
                arch = "bert" if have == "absolute" else "roberta"
                ours = "bert" if want == "absolute" else "roberta"
                diffs.append(f"architecture {arch} (model.text.name is {ours}, use {arch})")
            else:
                diffs.append(f"{name} {have} (model.text.{cfg_key}: {want})")
    if diffs:
        raise InitError(
            f"init.text.path: {path} does not fit model.text: the checkpoint has "
            + ", ".join(diffs)
            + "; make model.text match the checkpoint"
        )


def _fusion_config_mismatch(hf_config: dict[str, Any], encoder: nn.Module, path: str) -> None:
    """Heads and FFN of the fusion layers against the text checkpoint's (shapes do not show
    the heads)."""
    cfg = getattr(encoder, "config", None)
    diffs = [
        f"{name} {hf_config[hf]} (model.fusion.{name}: {getattr(cfg, name)})"
        for name, hf in (("heads", "num_attention_heads"), ("ffn_dim", "intermediate_size"))
        if cfg is not None and hasattr(cfg, name) and getattr(cfg, name) != hf_config[hf]
    ]
    if diffs:
        raise InitError(
            f"init.fusion: the layers of {path} do not fit model.fusion: the checkpoint has "
            + ", ".join(diffs)
            + "; make model.fusion match the checkpoint"
        )


def _text_sources(model: nn.Module, text: TextInitSection, fusion: FusionInitSection | None):
    from xfm.text.hf import (
        encoder_drop_patterns,
        encoder_key_rules,
        hf_key_mapper,
        hf_layout,
        mlm_head_drop_patterns,
        mlm_head_key_rules,
        read_hf_checkpoint,
    )

    path = text.path
    if not os.path.isdir(path):
        what = "is a file" if os.path.exists(path) else "does not exist"
        raise InitError(
            f"init.text.path: {path!r} {what}; expected a Hugging Face BERT/RoBERTa folder "
            f"(config.json + model.safetensors or pytorch_model.bin)"
        )
    try:
        hf_config, state = read_hf_checkpoint(path)
        enc_prefix, head = hf_layout(list(state), path)
    except (FileNotFoundError, ValueError) as e:
        raise InitError(f"init.text.path: {e}") from None
    assert hf_config is not None  # a folder always has its config.json
    encoder = model.text_encoder
    _text_config_mismatch(hf_config, encoder.config, path)
    available = int(hf_config["num_hidden_layers"])
    chosen = select_layers(available, encoder.config.layers, text.layers, "init.text.layers")
    layer_prefix = f"{enc_prefix}encoder.layer."
    style = (
        head[0] if head else ("roberta" if encoder.config.position_style == "roberta" else "bert")
    )
    head_src = head[1] if head else None
    want_head = text.mlm_head and head is not None
    mapper = hf_key_mapper(
        style,
        encoder_prefix=enc_prefix,
        head_prefix=head_src,
        with_head=want_head,
        encoder_dst="text_encoder.",
        head_dst="text_mlm_head.",
    )
    mapped = dict(mapper.apply(_pick_layers(state, layer_prefix, chosen)).state)
    # the text MLM decoder is tied to the word embeddings (SPEC section 1): not loaded twice
    decoder = mapped.pop("text_mlm_head.decoder.weight", None)
    word = mapped.get("text_encoder.embeddings.word.weight")
    untied = decoder is not None and word is not None and not torch.equal(decoder, word)
    which = (
        "all layers"
        if text.layers is None
        else f"layers {','.join(map(str, chosen))} of {available}"
    )
    heads = " + text_mlm_head.*" if want_head else ""
    sources = [
        _Source(
            "init.text",
            mapped,
            ("text_encoder.", "text_mlm_head."),
            (r"^text_encoder\.",),
            f"text_encoder.*{heads} from {path} ({hf_config.get('model_type', 'bert')}, {which}"
            + (
                "; its MLM decoder differs from the word embeddings, which the model ties to it: "
                "the word embeddings are used"
                if untied
                else ""
            )
            + ")",
            "make model.text match the checkpoint",
        )
    ]
    if fusion is not None:
        _fusion_config_mismatch(hf_config, model.fusion_encoder, path)
        n_fusion = len(model.fusion_encoder.layers)
        fchosen = (
            list(range(available - n_fusion, available))
            if fusion.layers is None and n_fusion <= available
            else select_layers(available, n_fusion, fusion.layers, "init.fusion.layers")
        )
        rules = encoder_key_rules(enc_prefix, "fusion_encoder.")
        drops = [rf"^{re.escape(enc_prefix)}embeddings\.", *encoder_drop_patterns(enc_prefix)]
        fusion_head = fusion.mlm_head and head is not None
        if fusion_head:
            rules += mlm_head_key_rules(style, head_src, "fusion_mlm_head.")
            drops += mlm_head_drop_patterns(style, head_src)
        fmapper = KeyMapper(rules, drop=drops, passthrough=False, name="init.fusion")
        fstate = dict(fmapper.apply(_pick_layers(state, layer_prefix, fchosen)).state)
        fheads = " + fusion_mlm_head.*" if fusion_head else ""
        sources.append(
            _Source(
                "init.fusion",
                fstate,
                ("fusion_encoder.", "fusion_mlm_head."),
                (),
                f"fusion_encoder.* self-attention/FFN{fheads} from {path} "
                f"(layers {','.join(map(str, fchosen))} of {available}; cross-attention new)",
                "make model.fusion (ffn_dim) match the checkpoint",
            )
        )
    return sources


def _vision_format(keys: Sequence[str], fmt: str) -> tuple[str, str]:
    """``(format, prefix)`` of a vision checkpoint."""
    prefix = "vision_encoder." if any(k.startswith("vision_encoder.") for k in keys) else ""
    if fmt == "auto":
        official = prefix or any(k.startswith(("cls_pt_layers.", "lm_head.")) for k in keys)
        fmt = "official" if official else "timm"
    return fmt, prefix if fmt == "official" else ""


def _vision_source(model: nn.Module, vision: VisionInitSection) -> _Source:
    from xfm.vision.convert import official_vision_key_mapper, timm_key_mapper

    path = vision.path
    try:
        state = load_state_dict(path)
    except (FileNotFoundError, CheckpointError) as e:
        raise InitError(f"init.vision.path: {e}") from None
    encoder = model.vision_encoder
    keys = list(state)
    fmt, prefix = _vision_format(keys, vision.format)
    if fmt == "official":
        mapper = official_vision_key_mapper(encoder, prefix)
        # the BEiT-v2 pretraining release also holds its pretraining-only modules
        mapper = mapper + KeyMapper(drop=[r"^cls_pt_layers\.", r"^norm\.", r"^head\."])
    else:
        mapper = timm_key_mapper(encoder)
    try:
        mapped = mapper.apply(state).state
    except ValueError as e:
        raise InitError(f"init.vision.path: {path}: {e}") from None
    if not any(k.startswith("blocks.") for k in mapped):
        raise InitError(
            f"init.vision.path: {path} is not a BEiT-v2 / ViT checkpoint in the {fmt} layout "
            f"(no 'blocks.N.*' keys; first keys: {keys[:4]}); check the file or init.vision.format"
        )
    blocks = {int(k.split(".")[1]) for k in mapped if k.startswith("blocks.")}
    layers = encoder.config.layers
    if len(blocks) != layers:
        raise InitError(
            f"init.vision.path: {path} has {len(blocks)} blocks but model.vision.layers is "
            f"{layers}; make model.vision match the checkpoint"
        )
    size = encoder.config.image_size
    return _Source(
        "init.vision",
        {f"vision_encoder.{k}": v for k, v in mapped.items()},
        ("vision_encoder.",),
        (r"^vision_encoder\.(blocks|patch_embed)\.",),
        f"vision_encoder.* from {path} ({fmt} layout, at the model's {size}px: relative "
        f"position tables resized when needed)",
        "make model.vision (width, heads, mlp_ratio, patch_size) match the checkpoint",
    )


def _shape(t: torch.Tensor | Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in (t.shape if isinstance(t, torch.Tensor) else t)) + "]"


def _check(source: _Source, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``source`` to load; raises :class:`InitError` when it does not fit."""
    loadable: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for k, v in source.state.items():
        if not k.startswith(source.prefixes):
            continue  # parts of the checkpoint the model does not use (pooler...)
        ref = expected.get(k)
        if ref is None:
            unexpected.append(k)
        elif ref.shape != v.shape:
            mismatched.append(f"{k} {_shape(v)} vs {_shape(ref)}")
        else:
            loadable[k] = v
    if mismatched:
        more = f" (and {len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise InitError(
            f"{source.key}: {len(mismatched)} checkpoint tensor(s) do not fit the model "
            f"(checkpoint vs model): {'; '.join(mismatched[:3])}{more}; {source.hint}"
        )
    if unexpected:
        groups = ", ".join(g.pattern for g in group_keys(unexpected)[:4])
        raise InitError(
            f"{source.key}: {len(unexpected)} checkpoint tensor(s) have no place in the model: "
            f"{groups}; {source.hint}"
        )
    missing = [
        k for k in expected if any(re.search(p, k) for p in source.required) and k not in loadable
    ]
    if missing:
        groups = ", ".join(g.pattern for g in group_keys(missing)[:4])
        raise InitError(
            f"{source.key}: the checkpoint lacks {len(missing)} tensor(s) of the model: {groups}; "
            f"{source.hint}"
        )
    return loadable


def _parameter_names(model: nn.Module) -> list[str]:
    """Each parameter once (a tied weight under its first name)."""
    return [n for n, _ in model.named_parameters()]


def _filled_parameters(model: nn.Module, filled: Collection[str]) -> set[str]:
    """Parameter names whose tensor was loaded under any of its names (tied weights)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    done = set(filled)
    return {names[0] for names in by_id.values() if any(n in done for n in names)}


def apply_init(model: nn.Module, init: InitSection) -> InitResult:
    """Fill ``model``'s encoders from the public weights of ``init`` (all checked first).

    Args:
        model: an :class:`~xfm.fusion.XFM` (``text_encoder``, ``vision_encoder``,
            ``fusion_encoder``, ``text_mlm_head``, ``fusion_mlm_head``).
        init: the ``init:`` section.

    Returns:
        The :class:`InitResult` (sources, loaded names, new parameter names).

    Raises:
        InitError: a source is missing or does not fit the model (nothing is loaded then).
    """
    sources: list[_Source] = []
    if init.text is not None:
        sources += _text_sources(model, init.text, init.fusion)
    if init.vision is not None:
        sources.append(_vision_source(model, init.vision))
    expected = model.state_dict()
    result = InitResult()
    to_load: dict[str, torch.Tensor] = {}
    for source in sources:
        part = _check(source, expected)
        to_load.update(part)
        result.sources.append(f"init: {source.label}: {len(part)} tensors")
    with torch.no_grad():
        model.load_state_dict(to_load, strict=False)
    result.filled = sorted(to_load)
    filled = _filled_parameters(model, to_load)
    result.new = [n for n in _parameter_names(model) if n not in filled]
    return result


# ------------------------------------------------------------------------------- reporting
def format_new(names: Sequence[str]) -> str:
    """``names`` grouped by top-level module: a module whose parameters are all listed is
    ``module.* (N)``, others are the grouped patterns (``vision_encoder.mask_token``)."""
    if not names:
        return "none"
    by_module: dict[str, list[str]] = {}
    for n in names:
        by_module.setdefault(n.split(".", 1)[0], []).append(n)
    parts = []
    for module, members in by_module.items():
        if len(members) == 1 and members[0] == module:
            parts.append(module)
        elif all("." in m for m in members) and len(members) > 3:
            parts.append(f"{module}.* ({len(members)})")
        else:
            parts.extend(g.pattern for g in group_keys(members))
    return ", ".join(parts)


def write_init_record(directory: str, result: InitResult, init: InitSection) -> str:
    """Write ``init.json`` (sources, new parameter names) into ``directory`` (local or URL)."""
    from dataclasses import asdict

    from xfm.core.checkpoint import atomic_write
    from xfm.train.checkpointing import join_url

    url = join_url(directory, INIT_RECORD)
    record = {"init": asdict(init), "sources": result.sources, "new": result.new}
    with atomic_write(url, "w") as f:
        f.write(json.dumps(record, indent=1))
    return url


def read_init_record(directory: str) -> list[str]:
    """The new parameter names recorded in ``directory``'s ``init.json``.

    Raises:
        InitError: no record (the run did not start with ``init:``, or the file was removed).
    """
    from xfm.core.checkpoint import open_file
    from xfm.train.checkpointing import join_url

    url = join_url(directory, INIT_RECORD)
    try:
        with open_file(url, "r") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise InitError(
            f"--resume with init: {url} (the parameters init left new, written when the run "
            f"started) is missing; copy it beside the checkpoint you resume from"
        ) from None
    return list(record["new"])

"""Import and export of Hugging Face BERT / RoBERTa weights (``transformers`` is not needed).

Everything goes through :class:`xfm.core.checkpoint.KeyMapper`. The rename rules are public so
that other packages reuse them for checkpoints that embed a BERT/RoBERTa, such as the official
X-FM checkpoint (``text_encoder.roberta.*``, ``text_encoder.lm_head.*``, and fusion layers with
``crossattention.*``)::

    from xfm.core.checkpoint import KeyMapper
    from xfm.text.hf import encoder_drop_patterns, encoder_key_rules, mlm_head_key_rules

    mapper = KeyMapper(
        [
            *encoder_key_rules("fusion_encoder.roberta.", "fusion."),
            *mlm_head_key_rules("roberta", "fusion_encoder.lm_head.", "fusion_mlm_head."),
        ],
        drop=encoder_drop_patterns("fusion_encoder.roberta."),
    )

Name correspondence (``{s}`` = source prefix, ``{d}`` = destination prefix, ``N`` = layer)::

    {s}embeddings.word_embeddings            {d}embeddings.word
    {s}embeddings.position_embeddings        {d}embeddings.position
    {s}embeddings.token_type_embeddings      {d}embeddings.token_type
    {s}embeddings.LayerNorm                  {d}embeddings.norm
    {s}encoder.layer.N.attention.self.{query,key,value}   {d}layers.N.self_attn.{query,key,value}
    {s}encoder.layer.N.attention.output.dense             {d}layers.N.self_attn.out
    {s}encoder.layer.N.attention.output.LayerNorm         {d}layers.N.self_norm
    {s}encoder.layer.N.crossattention.self.{query,key,value}  {d}layers.N.cross_attn.{...}
    {s}encoder.layer.N.crossattention.output.dense        {d}layers.N.cross_attn.out
    {s}encoder.layer.N.crossattention.output.LayerNorm    {d}layers.N.cross_norm
    {s}encoder.layer.N.intermediate.dense                 {d}layers.N.ffn.fc1
    {s}encoder.layer.N.output.dense                       {d}layers.N.ffn.fc2
    {s}encoder.layer.N.output.LayerNorm                   {d}layers.N.ffn_norm
    RoBERTa head  lm_head.{dense,layer_norm,decoder,bias}      {h}{dense,layer_norm,decoder,bias}
    BERT head     cls.predictions.transform.{dense,LayerNorm},
                  cls.predictions.{decoder,bias}               {h}{dense,layer_norm,decoder,bias}

The head names are those of :class:`xfm.core.layers.MLMHead` (which :class:`xfm.text.MLMHead`
extends), so the head rules also fit heads built directly from the core class.

Dropped on import: ``embeddings.position_ids`` / ``embeddings.token_type_ids`` buffers, the
``pooler`` (X-FM does not use it), BERT's next-sentence head ``cls.seq_relationship`` and the
decoder bias copy (``*.decoder.bias`` is the same tensor as the head's ``bias``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from xfm.core.checkpoint import (
    KeyMapper,
    LoadReport,
    Rename,
    Rule,
    load_into,
    load_state_dict,
    save_state_dict,
)
from xfm.text.config import TextEncoderConfig
from xfm.text.encoder import BertEncoder, RobertaEncoder, TextEncoder
from xfm.text.mlm_head import MLMHead

HeadStyle = Literal["bert", "roberta"]

_HEAD_SRC = {"bert": "cls.predictions.", "roberta": "lm_head."}
_MODEL_PREFIX = {"bert": "bert.", "roberta": "roberta."}
_ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert", "xlm_roberta")
_ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


# --------------------------------------------------------------------------------------------
# Key rules
# --------------------------------------------------------------------------------------------


def _lit(prefix: str) -> str:
    """A prefix as literal regex text (only ``.`` and other specials escaped)."""
    return "".join("\\" + c if not (c.isalnum() or c == "_") else c for c in prefix)


def encoder_key_rules(src_prefix: str = "", dst_prefix: str = "") -> list[Rule]:
    """Rename rules: Hugging Face BERT/RoBERTa encoder names -> :class:`TextEncoder` names.

    Covers embeddings, self-attention, cross-attention (``crossattention.*``, for the fusion
    encoder built on the same :class:`xfm.core.layers.PostLNLayer`) and feed-forward blocks.
    Every rule is invertible (:meth:`KeyMapper.inverse` gives the export mapping).

    Args:
        src_prefix: prefix of the encoder in the source, e.g. ``""`` (``BertModel``),
            ``"roberta."`` (``RobertaForMaskedLM``), ``"text_encoder.roberta."`` (X-FM).
        dst_prefix: prefix of the encoder in the destination module, e.g. ``"encoder."``.
    """
    s, d = _lit(src_prefix), dst_prefix
    layer = rf"^{s}encoder\.layer\.(\d+)\."
    return [
        Rename(rf"^{s}embeddings\.word_embeddings\.", f"{d}embeddings.word."),
        Rename(rf"^{s}embeddings\.position_embeddings\.", f"{d}embeddings.position."),
        Rename(rf"^{s}embeddings\.token_type_embeddings\.", f"{d}embeddings.token_type."),
        Rename(rf"^{s}embeddings\.LayerNorm\.", f"{d}embeddings.norm."),
        Rename(layer + r"attention\.self\.(query|key|value)\.", rf"{d}layers.\1.self_attn.\2."),
        Rename(layer + r"attention\.output\.dense\.", rf"{d}layers.\1.self_attn.out."),
        Rename(layer + r"attention\.output\.LayerNorm\.", rf"{d}layers.\1.self_norm."),
        Rename(
            layer + r"crossattention\.self\.(query|key|value)\.", rf"{d}layers.\1.cross_attn.\2."
        ),
        Rename(layer + r"crossattention\.output\.dense\.", rf"{d}layers.\1.cross_attn.out."),
        Rename(layer + r"crossattention\.output\.LayerNorm\.", rf"{d}layers.\1.cross_norm."),
        Rename(layer + r"intermediate\.dense\.", rf"{d}layers.\1.ffn.fc1."),
        Rename(layer + r"output\.dense\.", rf"{d}layers.\1.ffn.fc2."),
        Rename(layer + r"output\.LayerNorm\.", rf"{d}layers.\1.ffn_norm."),
    ]


def encoder_drop_patterns(src_prefix: str = "") -> list[str]:
    """Source keys of a Hugging Face encoder that xfm deliberately ignores: the
    ``position_ids`` / ``token_type_ids`` buffers and the ``pooler``."""
    s = _lit(src_prefix)
    return [rf"^{s}embeddings\.(position_ids|token_type_ids)$", rf"^{s}pooler\."]


def mlm_head_key_rules(
    style: HeadStyle, src_prefix: str | None = None, dst_prefix: str = "mlm_head."
) -> list[Rule]:
    """Rename rules: Hugging Face MLM head -> :class:`xfm.core.layers.MLMHead` names.

    Args:
        style: ``"roberta"`` (``lm_head.{dense,layer_norm,decoder,bias}``) or ``"bert"``
            (``cls.predictions.{transform.dense,transform.LayerNorm,decoder,bias}``).
        src_prefix: prefix of the head in the source (default ``lm_head.`` /
            ``cls.predictions.``; X-FM: ``text_encoder.lm_head.``).
        dst_prefix: prefix of the head in the destination module.

    The source's ``decoder.bias`` (a second name of ``bias``) is not covered: drop it on import
    (:func:`mlm_head_drop_patterns`) and add it on export (:func:`to_hf_state_dict` does).
    """
    if style not in _HEAD_SRC:
        raise ValueError(f"MLM head style must be 'bert' or 'roberta'; got {style!r}")
    s = _lit(_HEAD_SRC[style] if src_prefix is None else src_prefix)
    d = dst_prefix
    if style == "roberta":
        dense, norm = rf"^{s}dense\.", rf"^{s}layer_norm\."
    else:
        dense, norm = rf"^{s}transform\.dense\.", rf"^{s}transform\.LayerNorm\."
    return [
        Rename(dense, f"{d}dense."),
        Rename(norm, f"{d}layer_norm."),
        Rename(rf"^{s}decoder\.weight$", f"{d}decoder.weight"),
        Rename(rf"^{s}bias$", f"{d}bias"),
    ]


def mlm_head_drop_patterns(style: HeadStyle, src_prefix: str | None = None) -> list[str]:
    """Source keys of a Hugging Face MLM head that are dropped on import: the decoder bias
    (same tensor as the head bias) and, for BERT, the next-sentence head."""
    s = _lit(_HEAD_SRC[style] if src_prefix is None else src_prefix)
    drops = [rf"^{s}decoder\.bias$"]
    if style == "bert":
        drops.append(r"^cls\.seq_relationship\.")
    return drops


def hf_key_mapper(
    style: HeadStyle,
    *,
    encoder_prefix: str = "",
    head_prefix: str | None = None,
    with_head: bool = True,
    encoder_dst: str = "encoder.",
    head_dst: str = "mlm_head.",
) -> KeyMapper:
    """The :class:`KeyMapper` from a Hugging Face BERT/RoBERTa state dict to
    ``{encoder_dst}<TextEncoder keys>`` + ``{head_dst}<MLMHead keys>``.

    With ``with_head=False`` the head's keys are dropped (loading an encoder from a
    ``*ForMaskedLM`` checkpoint).
    """
    head_src = _HEAD_SRC[style] if head_prefix is None else head_prefix
    drops = [*encoder_drop_patterns(encoder_prefix), *mlm_head_drop_patterns(style, head_src)]
    rules = encoder_key_rules(encoder_prefix, encoder_dst)
    if with_head:
        rules += mlm_head_key_rules(style, head_src, head_dst)
    else:
        drops.append(rf"^{_lit(head_src)}")
    return KeyMapper(rules, drop=drops, name=f"hf-{style}")


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def _hf_config_dict(hf_config: Any) -> dict[str, Any]:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    to_dict = getattr(hf_config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    raise TypeError(
        f"expected a Hugging Face config (a transformers PretrainedConfig or its dict); got "
        f"{type(hf_config).__name__}"
    )


def config_from_hf(hf_config: Any, **overrides: Any) -> TextEncoderConfig:
    """A :class:`TextEncoderConfig` from a Hugging Face BERT/RoBERTa config (object or dict,
    e.g. the content of ``config.json``); ``overrides`` replace fields afterwards.

    Raises:
        ValueError: for a model type or option xfm does not implement (relative position
            embeddings, an unknown activation).
    """
    c = _hf_config_dict(hf_config)
    model_type = str(c.get("model_type", "bert"))
    if model_type not in ("bert", *_ROBERTA_TYPES):
        raise ValueError(
            f"cannot import a Hugging Face {model_type!r} model: expected a BERT or RoBERTa "
            "config (model_type 'bert' or 'roberta')"
        )
    pos_type = c.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ValueError(
            f"Hugging Face position_embedding_type={pos_type!r} is not supported: xfm implements "
            "absolute (BERT) and offset (RoBERTa) position embeddings"
        )
    act = c.get("hidden_act", "gelu")
    if act not in _ACT_FROM_HF:
        raise ValueError(
            f"Hugging Face hidden_act={act!r} is not supported; expected one of "
            f"{sorted(_ACT_FROM_HF)}"
        )
    roberta = model_type in _ROBERTA_TYPES
    pad = c.get("pad_token_id")
    values: dict[str, Any] = {
        "vocab_size": c["vocab_size"],
        "width": c["hidden_size"],
        "layers": c["num_hidden_layers"],
        "heads": c["num_attention_heads"],
        "ffn_dim": c["intermediate_size"],
        "max_positions": c["max_position_embeddings"],
        "type_vocab_size": c.get("type_vocab_size", 2),
        "pad_token_id": (1 if roberta else 0) if pad is None else pad,
        "layer_norm_eps": c.get("layer_norm_eps", 1e-12),
        "dropout": c.get("hidden_dropout_prob", 0.1),
        "attn_dropout": c.get("attention_probs_dropout_prob", 0.1),
        "act": _ACT_FROM_HF[act],
        "position_style": "roberta" if roberta else "absolute",
        "init_std": c.get("initializer_range", 0.02),
    }
    values.update(overrides)
    return TextEncoderConfig.from_dict(values)


def config_to_hf(config: TextEncoderConfig, *, masked_lm: bool = True) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict for ``config`` (``BertForMaskedLM`` or
    ``RobertaForMaskedLM``; ``BertModel``/``RobertaModel`` with ``masked_lm=False``)."""
    if config.type_vocab_size < 1:
        raise ValueError("Hugging Face BERT/RoBERTa need type_vocab_size >= 1; got 0")
    if config.act not in _ACT_TO_HF:
        raise ValueError(f"activation {config.act!r} has no Hugging Face equivalent")
    roberta = config.position_style == "roberta"
    name = "Roberta" if roberta else "Bert"
    out: dict[str, Any] = {
        "architectures": [f"{name}ForMaskedLM" if masked_lm else f"{name}Model"],
        "model_type": "roberta" if roberta else "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.width,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "intermediate_size": config.ffn_dim,
        "hidden_act": _ACT_TO_HF[config.act],
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attn_dropout,
        "max_position_embeddings": config.max_positions,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.init_std,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
    }
    if roberta:
        out.update(bos_token_id=0, eos_token_id=2)
    return out


# --------------------------------------------------------------------------------------------
# Reading Hugging Face sources
# --------------------------------------------------------------------------------------------


def _find_prefix(keys: Sequence[str], suffix: str) -> str | None:
    for k in keys:
        if k.endswith(suffix):
            return k[: -len(suffix)]
    return None


def _head_layout(keys: Sequence[str]) -> tuple[HeadStyle, str] | None:
    """(style, source prefix of the head) of the MLM head in ``keys``; None when there is none."""
    for style, head, suffix in (
        ("roberta", "lm_head.", "dense.weight"),
        ("bert", "cls.predictions.", "transform.dense.weight"),
    ):
        prefix = _find_prefix(keys, head + suffix)
        if prefix is not None:
            return style, prefix + head  # type: ignore[return-value]
    return None


def _encoder_prefix(keys: Sequence[str], source: str) -> str:
    prefix = _find_prefix(keys, "embeddings.word_embeddings.weight")
    if prefix is None:
        raise ValueError(
            f"{source}: not a Hugging Face BERT/RoBERTa state dict: no key ends with "
            f"'embeddings.word_embeddings.weight' (first keys: {list(keys)[:5]})"
        )
    return prefix


def hf_layout(
    keys: Sequence[str], source: str = "<state dict>"
) -> tuple[str, tuple[HeadStyle, str] | None]:
    """Where a Hugging Face BERT/RoBERTa state dict keeps its parts: ``(encoder prefix,
    (head style, head prefix) or None)``, e.g. ``("roberta.", ("roberta", "lm_head."))`` for a
    ``RobertaForMaskedLM`` and ``("", None)`` for a ``BertModel``.

    Raises:
        ValueError: ``keys`` are not a BERT/RoBERTa state dict (no word embeddings).
    """
    return _encoder_prefix(keys, source), _head_layout(keys)


def _read_folder(folder: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config.json dict, state dict)`` of a ``save_pretrained`` folder."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{folder!r} is not a Hugging Face model folder: it has no config.json"
        )
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    for name in _WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return config, load_state_dict(path)
    for name in _INDEX_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_state_dict(os.path.join(folder, shard)))
            return config, state
    raise FileNotFoundError(
        f"{folder!r} holds no weights: expected one of {[*_WEIGHT_FILES, *_INDEX_FILES]}"
    )


def read_hf_checkpoint(source: Any) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """``(config dict or None, state dict)`` from a ``transformers`` model object, a
    ``save_pretrained`` folder, a weights file, or a state dict."""
    if isinstance(source, nn.Module):
        config = getattr(source, "config", None)
        return (
            _hf_config_dict(config) if config is not None else None,
            dict(source.state_dict()),
        )
    if isinstance(source, Mapping):
        return None, dict(source)
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if os.path.isdir(path):
            return _read_folder(path)
        return None, load_state_dict(path)
    raise TypeError(
        "expected a transformers model, a save_pretrained folder, a weights file or a state "
        f"dict; got {type(source).__name__}"
    )


class _EncoderWithHead(nn.Module):
    """Container giving encoder and head one key namespace (``encoder.*``, ``mlm_head.*``)."""

    def __init__(self, encoder: TextEncoder, mlm_head: MLMHead | None) -> None:
        super().__init__()
        self.encoder = encoder
        if mlm_head is not None:
            self.mlm_head = mlm_head


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_hf_state_dict(
    encoder: TextEncoder,
    state: Mapping[str, torch.Tensor],
    mlm_head: MLMHead | None = None,
    *,
    strict: bool = True,
    source: str = "<Hugging Face state dict>",
) -> LoadReport:
    """Load a Hugging Face BERT/RoBERTa (``*Model`` or ``*ForMaskedLM``) state dict into
    ``encoder`` (and ``mlm_head``).

    The layout (``bert.``/``roberta.``/no prefix, ``cls.predictions``/``lm_head``) is detected
    from the keys. A head tied to the encoder's word embeddings needs no decoder weight in the
    checkpoint, but when one is present it must equal the word embeddings.

    Raises:
        xfm.core.checkpoint.CheckpointMismatchError: (``strict``) missing, unexpected or
            shape-mismatched keys, listed by pattern.
        ValueError: a tied head and a checkpoint whose decoder differs from its embeddings, or
            a head requested from a checkpoint without one.
    """
    keys = list(state)
    enc_prefix = _encoder_prefix(keys, source)
    layout = _head_layout(keys)
    if mlm_head is not None and layout is None:
        raise ValueError(
            f"{source}: an MLM head was given but the checkpoint has none (no "
            "'lm_head.*' or 'cls.predictions.*' keys); load the encoder alone"
        )
    style: HeadStyle = (
        layout[0]
        if layout
        else ("roberta" if encoder.config.position_style == "roberta" else "bert")
    )
    head_src = layout[1] if layout else None
    tied = mlm_head is not None and mlm_head.is_tied_to(encoder.embeddings.word)
    if tied and head_src is not None:
        dec = state.get(f"{head_src}decoder.weight")
        word = state[f"{enc_prefix}embeddings.word_embeddings.weight"]
        if dec is not None and dec.shape == word.shape and not torch.equal(dec, word):
            raise ValueError(
                f"{source}: the MLM decoder weight {head_src}decoder.weight differs from the word "
                "embeddings, but the given head is tied to them; build the head with "
                "MLMHead.for_encoder(encoder, tie=False)"
            )
    mapper = hf_key_mapper(
        style,
        encoder_prefix=enc_prefix,
        head_prefix=head_src,
        with_head=mlm_head is not None,
    )
    allow_missing = [r"^mlm_head\.decoder\.weight$"] if tied else []
    return load_into(
        _EncoderWithHead(encoder, mlm_head),
        state,
        mapper=mapper,
        strict=strict,
        allow_missing=allow_missing,
        source=source,
    )


def from_hf(
    source: Any,
    *,
    config: TextEncoderConfig | Mapping[str, Any] | None = None,
    with_mlm_head: bool | None = None,
    strict: bool = True,
    **overrides: Any,
) -> tuple[TextEncoder, MLMHead | None]:
    """Build an encoder (and MLM head) from Hugging Face BERT/RoBERTa weights.

    Args:
        source: a ``transformers`` model (``BertModel``, ``RobertaModel``, ``*ForMaskedLM``...),
            a ``save_pretrained`` folder (``config.json`` + ``model.safetensors`` or
            ``pytorch_model.bin``), a weights file or a state dict (these two need ``config``).
        config: the Hugging Face config (object or dict) or a :class:`TextEncoderConfig`;
            default: the source's own.
        with_mlm_head: build and load the MLM head (default: when the checkpoint has one).
        strict: see :func:`load_hf_state_dict`.
        **overrides: :class:`TextEncoderConfig` fields to change (e.g. ``backend="eager"``,
            ``dropout=0.0``).

    Returns:
        ``(encoder, head)``: a :class:`BertEncoder` or :class:`RobertaEncoder`, and an
        :class:`MLMHead` (tied to the word embeddings when the checkpoint's decoder equals
        them) or ``None``.
    """
    hf_config, state = read_hf_checkpoint(source)
    name = os.fspath(source) if isinstance(source, str | os.PathLike) else type(source).__name__
    if config is None:
        config = hf_config
    if config is None:
        raise ValueError(
            f"{name}: the source carries no config: pass config= (a Hugging Face config or a "
            "TextEncoderConfig)"
        )
    if isinstance(config, TextEncoderConfig):
        cfg = TextEncoderConfig.from_dict(overrides, base=config)
    else:
        cfg = config_from_hf(config, **overrides)
    cls = RobertaEncoder if cfg.position_style == "roberta" else BertEncoder
    encoder = cls(cfg)
    layout = _head_layout(list(state))
    if with_mlm_head is None:
        with_mlm_head = layout is not None
    head = None
    if with_mlm_head:
        if layout is None:
            raise ValueError(f"{name}: with_mlm_head=True but the checkpoint has no MLM head")
        enc_prefix = _encoder_prefix(list(state), str(name))
        dec = state.get(f"{layout[1]}decoder.weight")
        word = state[f"{enc_prefix}embeddings.word_embeddings.weight"]
        tie = dec is None or (dec.shape == word.shape and torch.equal(dec, word))
        head = MLMHead.for_encoder(encoder, tie=tie)
    load_hf_state_dict(encoder, state, head, strict=strict, source=str(name))
    return encoder, head


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def to_hf_state_dict(
    encoder: TextEncoder, mlm_head: MLMHead | None = None, *, prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of ``encoder`` (and ``mlm_head``).

    With a head the layout is ``BertForMaskedLM`` / ``RobertaForMaskedLM`` (``bert.`` /
    ``roberta.`` prefix, ``cls.predictions.*`` / ``lm_head.*``, decoder weight and bias
    included); without, ``BertModel`` / ``RobertaModel`` without the pooler (load it with
    ``add_pooling_layer=False``, or ``strict=False``). Tensors are shared, not copied.
    """
    style: HeadStyle = "roberta" if encoder.config.position_style == "roberta" else "bert"
    if prefix is None:
        prefix = _MODEL_PREFIX[style] if mlm_head is not None else ""
    mapper = hf_key_mapper(style, encoder_prefix=prefix, with_head=mlm_head is not None)
    container = _EncoderWithHead(encoder, mlm_head)
    state = {k: v.detach() for k, v in container.state_dict().items()}
    out = mapper.inverse().apply(state)
    if out.unmapped:
        raise ValueError(f"no Hugging Face name for xfm key(s) {out.unmapped[:5]}")
    result = dict(out.state)
    if mlm_head is not None:
        head = _HEAD_SRC[style]
        result[f"{head}decoder.bias"] = result[f"{head}bias"]
    return result


def save_hf(
    folder: str | os.PathLike[str], encoder: TextEncoder, mlm_head: MLMHead | None = None
) -> None:
    """Write ``config.json`` + ``model.safetensors`` that ``transformers``'
    ``AutoModelForMaskedLM.from_pretrained(folder)`` (or ``AutoModel`` without a head) loads."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_to_hf(encoder.config, masked_lm=mlm_head is not None), f, indent=2)
    save_state_dict(
        to_hf_state_dict(encoder, mlm_head),
        os.path.join(folder, "model.safetensors"),
        metadata={"format": "pt"},
    )


__all__ = [
    "HeadStyle",
    "config_from_hf",
    "config_to_hf",
    "encoder_drop_patterns",
    "encoder_key_rules",
    "from_hf",
    "hf_key_mapper",
    "hf_layout",
    "load_hf_state_dict",
    "mlm_head_drop_patterns",
    "mlm_head_key_rules",
    "read_hf_checkpoint",
    "save_hf",
    "to_hf_state_dict",
]

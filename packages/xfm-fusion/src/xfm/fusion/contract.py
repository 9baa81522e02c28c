"""The encoder contract: what a text, vision or fusion encoder plug-in must provide.

An encoder registered under ``xfm.text_encoder`` / ``xfm.vision_encoder`` /
``xfm.fusion_encoder`` (entry point, or ``@register`` in-process) is built by
:class:`~xfm.fusion.XFM` from ``{"name": ..., **options}``. :func:`check_encoder` runs when the
model is built and names the first missing piece, so a plug-in fails at construction with a
clear message instead of deep inside a training step.

What is needed, and by what (``features``):

============  ===========================================================================
``core``      always: pretraining and every task
``search``    ``xfm search`` and task data sized from the model
``layers``    ImageNet fine-tuning with layer-wise learning-rate decay
============  ===========================================================================

Text encoder (``core``): ``width: int`` (Dt); ``forward(ids [B, T], attention_mask=[B, T])
-> [B, T, Dt]``; ``config.vocab_size`` and ``config.layer_norm_eps`` (the MLM heads);
``embeddings.word.weight`` ``[V, Dt]`` (tied to the text MLM head).

Vision encoder (``core``): ``width: int`` (Dv); ``forward(image [B, 3, H, W], mask=None)
-> [B, 1+N, Dv]`` where ``mask`` ``[B, N]`` (bool, True = masked patch) replaces patches by a
mask token (MIM); position 0 is the pooled/CLS state. (``search``): ``config.image_size``.
(``layers``): ``blocks`` (a sequence of the transformer blocks, input side first).

Fusion encoder (``core``): accepts ``width=`` and ``vision_width=`` options (filled in from
the other two encoders); ``width: int`` equal to the text width; ``image_kv(image_states)``
(per-layer cross-attention keys/values, reused across passes) and ``forward(text_states,
text_mask, image_states=None, image_mask=None, image_kv=None) -> [B, T, Dt]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

__all__ = ["CONTRACT", "EncoderContractError", "Requirement", "check_encoder"]


class EncoderContractError(TypeError):
    """An encoder lacks a piece of the contract (the message names it and what needs it)."""


@dataclass(frozen=True)
class Requirement:
    """One piece of the contract.

    Attributes:
        feature: what needs it (``core``, ``search``, ``layers``).
        path: dotted attribute path on the encoder (``config.image_size``), or ``forward``.
        what: what it must be, for the error message.
        param: for ``forward``/methods: a keyword parameter the callable must accept.
        integer: the attribute must be an ``int``.
    """

    feature: str
    path: str
    what: str
    param: str | None = None
    integer: bool = False


CONTRACT: dict[str, tuple[Requirement, ...]] = {
    "text_encoder": (
        Requirement("core", "width", "an int attribute: the state width Dt", integer=True),
        Requirement(
            "core",
            "forward",
            "forward(ids, attention_mask=...) -> [B, T, Dt]",
            param="attention_mask",
        ),
        Requirement("core", "config.vocab_size", "the vocabulary size (MLM heads)", integer=True),
        Requirement("core", "config.layer_norm_eps", "the LayerNorm epsilon (MLM heads)"),
        Requirement("core", "embeddings.word.weight", "the [V, Dt] word embedding (tied MLM head)"),
    ),
    "vision_encoder": (
        Requirement("core", "width", "an int attribute: the state width Dv", integer=True),
        Requirement(
            "core",
            "forward",
            "forward(image, mask=None) -> [B, 1+N, Dv]; mask [B, N] marks MIM patches",
            param="mask",
        ),
        Requirement("search", "config.image_size", "the input image side (search, task data)"),
        Requirement("layers", "blocks", "the sequence of transformer blocks (layer-wise lr)"),
    ),
    "fusion_encoder": (
        Requirement("core", "width", "an int attribute equal to the text width", integer=True),
        Requirement(
            "core", "image_kv", "image_kv(image_states): per-layer cross-attention keys/values"
        ),
        Requirement(
            "core",
            "forward",
            "forward(text_states, text_mask, image_states, image_mask, image_kv) -> [B, T, Dt]",
            param="image_kv",
        ),
    ),
}


def _lookup(obj: object, path: str) -> tuple[bool, object]:
    for part in path.split("."):
        if not hasattr(obj, part):
            return False, None
        obj = getattr(obj, part)
    return True, obj


def _accepts(fn: object, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_encoder(kind: str, encoder: nn.Module, features: Iterable[str] = ("core",)) -> None:
    """Raise :class:`EncoderContractError` naming the first piece of ``kind``'s contract
    (``text_encoder`` / ``vision_encoder`` / ``fusion_encoder``) that ``encoder`` lacks for
    ``features``."""
    wanted = set(features)
    label = kind.replace("_", " ")
    for req in CONTRACT[kind]:
        if req.feature not in wanted:
            continue
        found, value = _lookup(encoder, req.path)
        name, needed = type(encoder).__name__, ""
        if req.feature != "core":
            needed = f" (needed by {req.feature})"
        problem = None
        if not found:
            problem = f"the {label} {name} lacks `{req.path}`{needed}"
        elif req.integer and (not isinstance(value, int) or isinstance(value, bool)):
            problem = f"the {label} {name}'s `{req.path}` is a {type(value).__name__}, not an int"
        elif req.param is not None and not _accepts(value, req.param):
            problem = f"the {label} {name}'s `{req.path}` takes no '{req.param}' argument{needed}"
        if problem:
            raise EncoderContractError(
                f"{problem}: the encoder contract wants {req.what} (see xfm.fusion.contract)"
            )

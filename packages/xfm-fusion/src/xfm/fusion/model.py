"""The composed X-FM model: three encoders found through the registry (:class:`XFMEncoders`),
plus heads built by named factories (:data:`HEAD_FACTORIES`)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xfm.core.layers import MLMHead, MLPHead, take_positions
from xfm.core.registry import create
from xfm.fusion.contract import check_encoder


def _default_text() -> dict[str, Any]:
    return {"name": "roberta"}


def _default_vision() -> dict[str, Any]:
    return {"name": "beit_v2"}


def _default_fusion() -> dict[str, Any]:
    return {"name": "cross_attention"}


@dataclass
class XFMConfig:
    """X-FM model: encoder specs by registry name + options, heads and the two techniques.

    ``text``, ``vision`` and ``fusion`` are ``{"name": <registered name>, **encoder options}``.
    The fusion encoder's ``width`` and ``vision_width`` default to the text and vision widths.
    """

    text: dict[str, Any] = field(default_factory=_default_text)
    vision: dict[str, Any] = field(default_factory=_default_vision)
    fusion: dict[str, Any] = field(default_factory=_default_fusion)
    embed_dim: int = 256
    temp: float = 0.07
    min_temp: float = 0.001
    max_temp: float = 0.5
    #: Detach the language states wherever the fusion encoder consumes them (SPEC section 4.1).
    stop_gradient: bool = True
    #: MIM target = the model's own unmasked vision output, detached (SPEC section 4.2). When
    #: off, the target comes from a frozen copy of the vision encoder as it was at construction
    #: or at the last :meth:`XFM.reset_mim_teacher` (call it after loading weights;
    #: :func:`~xfm.fusion.official.from_official` does): a teacher that vision-language training
    #: never updates.
    vision_guidance: bool = True


@functools.cache
def _forward_takes_positions(cls: type) -> bool:
    try:
        return "positions" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def _takes_positions(encoder: nn.Module) -> bool:
    """Whether a fusion encoder's ``forward`` accepts ``positions=`` (an optional feature of
    the fusion encoder contract)."""
    return _forward_takes_positions(type(encoder))


def _create_encoder(kind: str, spec: dict[str, Any], **defaults: Any) -> nn.Module:
    if "name" not in spec:
        raise ValueError(f"the {kind} spec needs a registry 'name'; got keys {sorted(spec)}")
    options = {k: v for k, v in spec.items() if k != "name"}
    for key, value in defaults.items():
        options.setdefault(key, value)
    return create(kind, spec["name"], **options)


def _width(encoder: nn.Module, kind: str) -> int:
    """``encoder.width`` after checking ``kind``'s contract (:mod:`xfm.fusion.contract`)."""
    check_encoder(kind, encoder)
    return int(encoder.width)


def create_encoders(config: XFMConfig) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(vision, text, fusion)`` encoders of ``config``, built in that order through the
    registry, each checked against its contract; the fusion encoder's ``width`` /
    ``vision_width`` default to the text / vision widths (and its width must be the text's)."""
    vision = _create_encoder("vision_encoder", config.vision)
    text = _create_encoder("text_encoder", config.text)
    dv = _width(vision, "vision_encoder")
    dt = _width(text, "text_encoder")
    fusion = _create_encoder("fusion_encoder", config.fusion, width=dt, vision_width=dv)
    df = _width(fusion, "fusion_encoder")
    if df != dt:
        raise ValueError(f"the fusion encoder width ({df}) must equal the text width ({dt})")
    return vision, text, fusion


class XFMEncoders(nn.Module):
    """The language, vision and fusion encoders of X-FM and their passes; no heads.

    Submodules ``vision_encoder``, ``text_encoder``, ``fusion_encoder`` (built in that order
    through the registry). :class:`XFM` adds the pretraining heads, task models
    (:class:`xfm.tasks.base.TaskModel`) the heads they own; both build them with
    :func:`build_heads`.

    Shapes: images ``[B, 3, H, W]``; token ids / masks ``[B, T]``; vision states
    ``[B, 1+N, Dv]``; text and fusion states ``[B, T, Dt]``.
    """

    def __init__(self, config: XFMConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = dataclasses.replace(config or XFMConfig(), **overrides)
        self.config = config
        self.vision_encoder, self.text_encoder, self.fusion_encoder = create_encoders(config)
        #: Official tensors with no counterpart here, kept for export (see xfm.fusion.official).
        self.official_extras: dict[str, torch.Tensor] = {}

    @property
    def text_width(self) -> int:
        """Width ``Dt`` of the language / fusion states."""
        return int(self.text_encoder.width)

    @property
    def vision_width(self) -> int:
        """Width ``Dv`` of the vision states."""
        return int(self.vision_encoder.width)

    # ----------------------------------------------------------------- encoders
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> vision states ``[B, 1+N, Dv]``."""
        return self.vision_encoder(image)

    def encode_masked_image(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patches where ``mask`` ``[B, N]`` is True are replaced by the mask token."""
        return self.vision_encoder(image, mask=mask)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, T]`` + padding mask ``[B, T]`` -> language states ``[B, T, Dt]``."""
        return self.text_encoder(ids, attention_mask=mask)

    def fusion_image_kv(self, image_states: torch.Tensor):
        """Per-layer cross-attention keys/values of ``image_states`` for reuse across passes."""
        return self.fusion_encoder.image_kv(image_states)

    def fuse(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        image_states: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        image_kv=None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fusion states ``[B, T, Dt]``; the text states are detached when ``stop_gradient``.

        ``positions`` ``[B, M]``: return only the states there, ``[B, M, Dt]`` (the fusion
        encoder computes only those rows in its last layer when its ``forward`` takes
        ``positions``; otherwise they are picked from the full output).
        """
        if self.config.stop_gradient:
            text_states = text_states.detach()
        enc = self.fusion_encoder
        if positions is None:
            return enc(text_states, text_mask, image_states, image_mask, image_kv)
        if _takes_positions(enc):
            return enc(text_states, text_mask, image_states, image_mask, image_kv, positions)
        return take_positions(
            enc(text_states, text_mask, image_states, image_mask, image_kv), positions
        )

    def pair_vectors(
        self, text_states: torch.Tensor, text_mask: torch.Tensor, image_kv
    ) -> torch.Tensor:
        """Pair vectors ``[n, Dt]`` (fusion position 0) of ``n`` texts ``[n, T, Dt]`` with ONE
        image's :meth:`fusion_image_kv` (batch size 1), for evaluation: the fusion encoder's
        unpadded ``pair_vectors`` when it has one, else :meth:`fuse` with the K/V broadcast."""
        fast = getattr(self.fusion_encoder, "pair_vectors", None)
        if fast is not None and not self.fusion_encoder.training:
            return fast(text_states, text_mask, image_kv)
        shape = (text_states.shape[0], -1, -1, -1)
        kv = [(k.expand(shape), v.expand(shape)) for k, v in image_kv]
        return self.fuse(text_states, text_mask, image_kv=kv)[:, 0]

    # ------------------------------------------------------------------- region
    @staticmethod
    def region_vision_states(
        vision_states: torch.Tensor, image_index: torch.Tensor, region_mask: torch.Tensor
    ) -> torch.Tensor:
        """Per-text region features ``[Bt, 1+N, Dv]`` (official ``region_vision_embeds``).

        ``vision_states`` ``[Bi, 1+N, Dv]``; ``image_index`` ``[Bt]`` picks each text's image;
        ``region_mask`` ``[Bt, 1+N]`` marks patches inside the region (column 0 always 1).
        Position 0 becomes the mean of the patch states inside the region; positions ``1:`` are
        the image's patch states (use ``region_mask`` as the cross-attention mask).
        """
        gathered = vision_states[image_index.long()]
        w = region_mask[:, 1:].to(gathered.dtype).unsqueeze(-1)
        pooled = (gathered[:, 1:] * w).sum(1) / w.sum(1).clamp_min(1.0)
        return torch.cat([pooled.unsqueeze(1), gathered[:, 1:]], dim=1)


# ------------------------------------------------------------------------- head factories
def text_mlm_head(encoders: XFMEncoders) -> MLMHead:
    """Text-only MLM head ``Dt -> V``, its decoder tied to the text word embeddings."""
    tcfg = encoders.text_encoder.config
    word = encoders.text_encoder.embeddings.word.weight
    return MLMHead(encoders.text_width, tcfg.vocab_size, eps=tcfg.layer_norm_eps, tied_weight=word)


def fusion_mlm_head(encoders: XFMEncoders) -> MLMHead:
    """Image-conditioned MLM head ``Dt -> V`` on the fusion states (own decoder)."""
    tcfg = encoders.text_encoder.config
    return MLMHead(encoders.text_width, tcfg.vocab_size, eps=tcfg.layer_norm_eps)


def vision_proj(encoders: XFMEncoders) -> nn.Linear:
    """ITC image projection ``Dv -> E``."""
    return nn.Linear(encoders.vision_width, encoders.config.embed_dim)


def text_proj(encoders: XFMEncoders) -> nn.Linear:
    """ITC text projection ``Dt -> E``."""
    return nn.Linear(encoders.text_width, encoders.config.embed_dim)


def temperature(encoders: XFMEncoders) -> nn.Parameter:
    """The learnable ITC temperature (a scalar parameter, ``config.temp`` at init)."""
    return nn.Parameter(torch.tensor(float(encoders.config.temp)))


def itm_head(encoders: XFMEncoders) -> MLPHead:
    """Match / no-match classifier ``Dt -> 2`` on the fusion pair vector."""
    return MLPHead(encoders.text_width, 2)


def bbox_head(encoders: XFMEncoders) -> MLPHead:
    """Box regressor ``Dt -> 4`` on the fusion pair vector."""
    return MLPHead(encoders.text_width, 4)


#: The pretraining heads by attribute name, in construction (and state-dict) order.
HEAD_FACTORIES: dict[str, Callable[[XFMEncoders], nn.Module | nn.Parameter]] = {
    "text_mlm_head": text_mlm_head,
    "fusion_mlm_head": fusion_mlm_head,
    "vision_proj": vision_proj,
    "text_proj": text_proj,
    "temp": temperature,
    "itm_head": itm_head,
    "bbox_head": bbox_head,
}

#: Names of the pretraining heads (what a task model may declare it owns).
PRETRAIN_HEADS: tuple[str, ...] = tuple(HEAD_FACTORIES)


def build_heads(model: XFMEncoders, names: Iterable[str]) -> None:
    """Add the pretraining heads ``names`` to ``model`` as attributes of those names.

    They are built in :data:`PRETRAIN_HEADS` order whatever the order of ``names``, so a model
    with every head is initialised (and its state dict ordered) like :class:`XFM`.
    """
    wanted = set(names)
    unknown = sorted(wanted - set(HEAD_FACTORIES))
    if unknown:
        raise ValueError(f"unknown X-FM heads {unknown}; expected some of {list(PRETRAIN_HEADS)}")
    for name in PRETRAIN_HEADS:
        if name in wanted:
            setattr(model, name, HEAD_FACTORIES[name](model))


class HeadMethods:
    """The passes through the pretraining heads, for a model that has them (:class:`XFM`, task
    models; each method needs only the heads it names). Shapes: ITC features ``[B, E]``."""

    def itc_features(
        self, vision_states: torch.Tensor, text_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised ``[B, E]`` image and text features from the position-0 states."""
        image_feat = F.normalize(self.vision_proj(vision_states[:, 0]), dim=-1)
        text_feat = F.normalize(self.text_proj(text_states[:, 0]), dim=-1)
        return image_feat, text_feat

    def similarity(self, image_feat: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
        """ITC logits ``sim_i2t`` ``[Bi, Bt] = image_feat @ text_feat.T / temp``."""
        return image_feat @ text_feat.t() / self.temp

    def itm_logits(self, fusion_states: torch.Tensor) -> torch.Tensor:
        """``[B, T, Dt]`` -> match / no-match logits ``[B, 2]`` from the pair vector."""
        return self.itm_head(fusion_states[:, 0])

    def predict_bbox(self, fusion_states: torch.Tensor) -> torch.Tensor:
        """``[B, T, Dt]`` -> box ``(cx, cy, w, h)`` in [0, 1], ``[B, 4]``."""
        return self.bbox_head(fusion_states[:, 0]).sigmoid()

    def text_mlm_logits(self, text_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Text-only MLM logits ``[B, M, V]`` at ``positions`` ``[B, M]``."""
        return self.text_mlm_head(take_positions(text_states, positions))

    def fusion_mlm_logits(
        self, fusion_states: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """Image-conditioned MLM logits ``[B, M, V]`` at ``positions`` ``[B, M]``."""
        return self.fusion_mlm_head(take_positions(fusion_states, positions))


class XFM(HeadMethods, XFMEncoders):
    """The X-FM pretraining model: :class:`XFMEncoders` plus every pretraining head
    (:data:`PRETRAIN_HEADS`: text / fusion MLM, ITC projections and temperature, ITM, bbox).

    Shapes: images ``[B, 3, H, W]``; token ids / masks ``[B, T]``; vision states
    ``[B, 1+N, Dv]``; text and fusion states ``[B, T, Dt]``; ITC features ``[B, E]``.
    """

    def __init__(self, config: XFMConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        build_heads(self, PRETRAIN_HEADS)
        self._mim_teacher: list[nn.Module] = []  # a list keeps it out of parameters/state_dict
        if not self.config.vision_guidance:
            self.reset_mim_teacher()

    def clamp_temp(self) -> None:
        """Clamp the temperature in place into ``[min_temp, max_temp]`` (call before each step)."""
        with torch.no_grad():
            self.temp.clamp_(self.config.min_temp, self.config.max_temp)

    # ---------------------------------------------------------------------- MIM
    def reset_mim_teacher(self) -> None:
        """Snapshot the current vision encoder as the frozen MIM teacher (``vision_guidance`` off)."""
        teacher = copy.deepcopy(self.vision_encoder).eval().requires_grad_(False)
        self._mim_teacher[:] = [teacher]

    def mim_target(self, image: torch.Tensor, vision_states: torch.Tensor) -> torch.Tensor:
        """MIM regression target ``[B, 1+N, Dv]`` (never carries gradient).

        With ``vision_guidance`` the target is ``vision_states`` (this step's unmasked output of
        the vision-language-trained encoder), detached; otherwise the frozen teacher's output.
        """
        if self.config.vision_guidance:
            return vision_states.detach()
        if not self._mim_teacher:
            self.reset_mim_teacher()
        teacher = self._mim_teacher[0].to(image.device)
        with torch.no_grad():
            return teacher(image)


__all__ = [
    "HEAD_FACTORIES",
    "PRETRAIN_HEADS",
    "XFM",
    "HeadMethods",
    "XFMConfig",
    "XFMEncoders",
    "build_heads",
    "create_encoders",
]

"""The encoder contract is checked when X-FM is built: a plug-in that lacks a piece fails at
construction with a message naming the piece (not deep inside a training step)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xfm.core.registry import get_registry
from xfm.fusion import XFM, XFMConfig
from xfm.fusion.contract import CONTRACT, EncoderContractError, check_encoder

TEXT = {"name": "roberta", "width": 32, "layers": 1, "heads": 2, "ffn_dim": 64, "vocab_size": 50}
VISION = {"name": "beit_v2", "width": 48, "layers": 2, "heads": 2, "image_size": 32}
VISION["patch_size"] = 8
FUSION = {"name": "cross_attention", "layers": 1, "heads": 2, "ffn_dim": 64}


class _Vision(nn.Module):
    """A minimal third-party vision encoder: patchify + linear, CLS = mean."""

    def __init__(self, width: int = 24, patch: int = 8, **_: object) -> None:
        super().__init__()
        self.width = width
        self.proj = nn.Linear(3 * patch * patch, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.patch = patch

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        p = self.patch
        x = image.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
        x = self.proj(x)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        return torch.cat([x.mean(1, keepdim=True), x], dim=1)


class _NoMask(_Vision):
    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(image)


class _StrWidth(_Vision):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.width = "24"  # type: ignore[assignment]


@pytest.fixture
def vision_registry():
    reg = get_registry("vision_encoder")
    added = []

    def add(name: str, cls: type) -> None:
        reg.register(name, cls, override=True)
        added.append(name)

    yield add
    for name in added:
        reg.unregister(name)


def test_built_in_encoders_meet_every_feature() -> None:
    model = XFM(XFMConfig(text=TEXT, vision=VISION, fusion=FUSION, embed_dim=16))
    for kind, enc in [
        ("text_encoder", model.text_encoder),
        ("vision_encoder", model.vision_encoder),
        ("fusion_encoder", model.fusion_encoder),
    ]:
        features = {r.feature for r in CONTRACT[kind]}
        check_encoder(kind, enc, features)


def test_a_conforming_plugin_builds_and_runs(vision_registry) -> None:
    vision_registry("contract_ok", _Vision)
    model = XFM(XFMConfig(text=TEXT, vision={"name": "contract_ok"}, fusion=FUSION, embed_dim=16))
    image = torch.randn(2, 3, 32, 32)
    states = model.encode_masked_image(image, torch.zeros(2, 16, dtype=torch.bool))
    assert states.shape == (2, 17, 24)
    # ``search`` needs config.image_size, which this plug-in does not have
    with pytest.raises(
        EncoderContractError, match=r"lacks `config\.image_size` \(needed by search\)"
    ):
        check_encoder("vision_encoder", model.vision_encoder, ("core", "search"))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_NoMask, r"_NoMask's `forward` takes no 'mask' argument: .*MIM patches"),
        (_StrWidth, r"_StrWidth's `width` is a str, not an int"),
    ],
)
def test_a_broken_plugin_fails_at_construction(vision_registry, cls, message) -> None:
    vision_registry("contract_bad", cls)
    with pytest.raises(EncoderContractError, match=message):
        XFM(XFMConfig(text=TEXT, vision={"name": "contract_bad"}, fusion=FUSION, embed_dim=16))


def test_text_encoder_without_word_embedding_is_named() -> None:
    model = XFM(XFMConfig(text=TEXT, vision=VISION, fusion=FUSION, embed_dim=16))
    text = model.text_encoder
    del text.embeddings.word
    with pytest.raises(EncoderContractError, match=r"lacks `embeddings\.word\.weight`"):
        check_encoder("text_encoder", text)

"""Classification models: GLUE with the language encoder, images with the vision encoder.

Official semantics (``XFMForClassification``, ``../shared/golden_tasks/README.md``):

* **GLUE** (``image=None``): the language encoder's last hidden state at position 0 (``<s>``)
  -> ``cls_head`` = :class:`~xfm.core.layers.MLPHead` ``(Dt, C)``. Loss: cross-entropy, or MSE
  when there is one label (STS-B regression).
* **Images** (ImageNet fine-tuning): feature = ``cat(vision[:, 0], mean(vision[:, 1:]))``
  ``[B, 2Dv]`` -> the deep 5-layer MLP :class:`DeepHead` (keys ``cls_head.0..12``). Linear probes
  use ``head="linear"`` on frozen features.

The official checkpoints of these models (which also hold encoders the models do not run) are
read and written by :mod:`xfm.tasks.official.glue` / :mod:`xfm.tasks.official.imagenet`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xfm.core.layers import MLPHead
from xfm.core.registry import create

__all__ = [
    "DeepHead",
    "ImageClassifier",
    "TextClassifier",
]


def _spec(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if "name" not in spec:
        raise ValueError(f"encoder spec needs a registry 'name'; got keys {sorted(spec)}")
    return spec["name"], {k: v for k, v in spec.items() if k != "name"}


class TextClassifier(nn.Module):
    """Language encoder + ``cls_head`` on the ``<s>`` state (GLUE).

    ``forward(ids [B, T], mask [B, T]) -> logits [B, C]`` (``C = 1``: regression score).
    """

    def __init__(self, text: Mapping[str, Any], num_labels: int) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1; got {num_labels}")
        name, opts = _spec(text)
        self.text_encoder = create("text_encoder", name, **opts)
        #: registry spec of the encoder (the official export rebuilds the layout from it)
        self.encoder_specs = {"text": dict(text)}
        self.num_labels = int(num_labels)
        self.cls_head = MLPHead(self.text_encoder.width, self.num_labels)

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, Dt]`` language-encoder state at position 0."""
        return self.text_encoder(ids, attention_mask=mask)[:, 0]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]``."""
        return self.cls_head(self.features(ids, mask))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """CE for classes, MSE of ``logits.view(-1)`` vs ``targets`` for one label."""
        if self.num_labels == 1:
            return F.mse_loss(logits.view(-1), targets.view(-1).to(logits.dtype))
        return F.cross_entropy(logits, targets.long())


class DeepHead(nn.Sequential):
    """The official ImageNet head: ``2D -> 4D -> 8D -> 4D -> 2D -> C`` with LN + GELU between.

    Parameter indices ``0, 1, 3, 4, 6, 7, 9, 10, 12`` (official ``cls_head.*``). ``dim`` is the
    encoder width ``D`` (input ``2D``).
    """

    def __init__(self, dim: int, num_classes: int, eps: float = 1e-5) -> None:
        widths = [2 * dim, 4 * dim, 8 * dim, 4 * dim, 2 * dim]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.LayerNorm(b, eps=eps), nn.GELU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        super().__init__(*layers)


class ImageClassifier(nn.Module):
    """Vision encoder + a head on ``cat(vision[:, 0], mean(vision[:, 1:]))`` ``[B, 2Dv]``.

    ``head="deep"``: :class:`DeepHead` (official ImageNet fine-tuning); ``"linear"``: one
    ``Linear`` (linear probe, use with ``freeze_encoder``).
    """

    def __init__(
        self,
        vision: Mapping[str, Any],
        num_classes: int,
        head: Literal["deep", "linear"] = "deep",
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        name, opts = _spec(vision)
        self.vision_encoder = create("vision_encoder", name, **opts)
        self.encoder_specs = {"vision": dict(vision)}
        dv = self.vision_encoder.width
        if head == "deep":
            self.cls_head: nn.Module = DeepHead(dv, num_classes)
        elif head == "linear":
            self.cls_head = nn.Linear(2 * dv, num_classes)
        else:
            raise ValueError(f"head must be 'deep' or 'linear'; got {head!r}")
        self.freeze_encoder = bool(freeze_encoder)
        if freeze_encoder:
            self.vision_encoder.requires_grad_(False)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, 2Dv]``."""
        if self.freeze_encoder:
            self.vision_encoder.eval()
            with torch.no_grad():
                v = self.vision_encoder(image)
        else:
            v = self.vision_encoder(image)
        return torch.cat([v[:, 0], v[:, 1:].mean(1)], dim=-1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]``."""
        return self.cls_head(self.features(image))

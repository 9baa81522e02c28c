"""Image transforms for pretraining and evaluation (torchvision ``transforms.v2``).

Both take PIL images or ``[C, H, W]`` uint8 tensors and return normalised float32
``[3, S, S]`` tensors. The normalisation must be the one the checkpoint was trained with:

* ``"xfm"``: the CLIP mean/std used by the official X-FM code for every task (default);
* ``"imagenet"``: timm's BEiT-v2 checkpoints (``IMAGENET_DEFAULT_MEAN/STD``);
* ``"inception"``: 0.5/0.5 (timm's BEiT v1 checkpoints);

or an explicit ``(mean, std)`` pair.

torchvision draws the random parameters from the global torch RNG; :func:`apply_seeded` runs a
transform with its own seed (a data loader that must process a sample identically in any
worker, e.g. :mod:`xfm.train.data.transforms`, seeds it per sample) and leaves the global RNG as
it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

__all__ = [
    "NORMALIZATIONS",
    "apply_seeded",
    "eval_transform",
    "normalization",
    "pretrain_transform",
]

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "xfm": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

Normalization = str | tuple[Sequence[float], Sequence[float]]


def normalization(name: Normalization = "xfm") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of a named normalisation, or of an explicit pair (checked)."""
    if isinstance(name, str):
        try:
            return NORMALIZATIONS[name]
        except KeyError:
            raise ValueError(
                f"unknown normalization {name!r}: expected one of {sorted(NORMALIZATIONS)} or a "
                "(mean, std) pair"
            ) from None
    mean, std = name
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalization needs 3 means and 3 positive stds; got {mean}, {std}")
    return mean, std


def _interpolation(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(name)
    except ValueError:
        choices = [m.value for m in InterpolationMode]
        raise ValueError(f"unknown interpolation {name!r}: expected one of {choices}") from None


def _check_size(image_size: int) -> int:
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int; got {image_size!r}")
    return image_size


def _to_tensor(norm: Normalization) -> list[v2.Transform]:
    mean, std = normalization(norm)
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def pretrain_transform(
    image_size: int = 224,
    *,
    scale: tuple[float, float] = (0.2, 1.0),
    hflip: float = 0.5,
    rand_augment: bool = False,
    normalization: Normalization = "xfm",
    interpolation: str = "bicubic",
) -> v2.Compose:
    """Random resized crop + horizontal flip (+ RandAugment) + normalisation.

    The official X-FM pretraining uses ``scale=(0.2, 1.0)``, bicubic, flip and its own
    RandAugment(2, 7); fine-tuning uses ``scale=(0.5, 1.0)``. ``rand_augment=True`` adds
    torchvision's ``RandAugment(num_ops=2, magnitude=7)`` (a close, not identical, op set).
    """
    size = _check_size(image_size)
    ops: list[v2.Transform] = [
        v2.RandomResizedCrop(
            size, scale=scale, interpolation=_interpolation(interpolation), antialias=True
        ),
    ]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(p=hflip))
    if rand_augment:
        ops.append(v2.RandAugment(num_ops=2, magnitude=7))
    return v2.Compose(ops + _to_tensor(normalization))


def eval_transform(
    image_size: int = 224,
    *,
    crop_pct: float = 1.0,
    squash: bool = True,
    normalization: Normalization = "xfm",
    interpolation: str = "bicubic",
) -> v2.Compose:
    """Resize + center crop + normalisation.

    The image is resized to ``floor(image_size / crop_pct)``, either both sides (``squash``, the
    official X-FM test transform with ``crop_pct=1``) or the shorter side keeping the aspect
    ratio (timm style, e.g. ``crop_pct=0.9, squash=False``), then center-cropped to
    ``image_size``.
    """
    size = _check_size(image_size)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1]; got {crop_pct}")
    resized = math.floor(size / crop_pct)
    ops: list[v2.Transform] = [
        v2.Resize(
            (resized, resized) if squash else resized,
            interpolation=_interpolation(interpolation),
            antialias=True,
        ),
        v2.CenterCrop(size),
    ]
    return v2.Compose(ops + _to_tensor(normalization))


def apply_seeded(
    transform: Callable[[Any], torch.Tensor], image: Any, generator: torch.Generator
) -> torch.Tensor:
    """``transform(image)`` with its random draws seeded from ``generator`` (one draw).

    The global torch RNG is restored afterwards, so the result depends only on ``generator``'s
    state and the caller's random stream is unchanged.

    Args:
        transform: e.g. :func:`pretrain_transform`'s result.
        image: a PIL image or ``[C, H, W]`` uint8 tensor.
        generator: a CPU generator; advanced by one draw.

    Returns:
        What ``transform`` returns (``[3, S, S]`` float32 for this module's transforms).
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)

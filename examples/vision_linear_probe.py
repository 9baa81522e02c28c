"""The xfm vision encoder inside your own model: a linear probe on synthetic shape images.

What it shows: ``xfm-vision`` used as a building block of a user's ``nn.Module``. ``LinearProbe``
holds a frozen BEiT-v2 tower (``xfm.vision.BEiTv2``, built by name through the plugin registry)
and one trainable ``nn.Linear``; only the linear layer is trained. The data are images drawn on
the fly (a circle, a square or a triangle of random colour, size and place on a random
background; the label is the shape), so nothing is downloaded. The probe prints its held-out
accuracy next to chance (1/3).

The tower starts from random weights (a frozen random ViT is a weak but real feature extractor),
or from the vision encoder of an xfm pretraining run with ``--weights``::

    pip install ./packages/xfm-core ./packages/xfm-vision
    python examples/vision_linear_probe.py                   # ~1 minute on a CPU
    python examples/vision_linear_probe.py --quick           # seconds (CI)
    python examples/vision_linear_probe.py --weights runs/tiny/checkpoints/model.safetensors

Only ``xfm.core`` and ``xfm.vision`` are imported (no text, fusion or training package).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from tqdm import tqdm

from xfm.core import registry
from xfm.core.checkpoint import load_into, load_state_dict
from xfm.vision import eval_transform

SHAPES = ("circle", "square", "triangle")


def draw_shape(rng: np.random.Generator, label: int, size: int) -> Image.Image:
    """One ``size`` x ``size`` RGB image with the shape ``SHAPES[label]`` drawn on it."""
    background = tuple(int(c) for c in rng.integers(0, 96, 3))
    colour = tuple(int(c) for c in rng.integers(128, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    if SHAPES[label] == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    elif SHAPES[label] == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        points = [
            (cx + radius * math.cos(angle + k * 2 * math.pi / 3),
             cy + radius * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]  # fmt: skip
        draw.polygon(points, fill=colour)
    return image


def make_dataset(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalised images ``[n, 3, size, size]`` and their labels ``[n]`` (balanced)."""
    rng = np.random.default_rng(seed)
    transform = eval_transform(size)  # resize + CLIP normalisation, as X-FM expects
    labels = torch.arange(n) % len(SHAPES)
    images = torch.stack([transform(draw_shape(rng, int(y), size)) for y in labels])
    return images, labels


class LinearProbe(nn.Module):
    """A user's model: a frozen xfm vision encoder and a trainable linear classifier.

    Args:
        encoder: any registered vision encoder (``forward(images) -> [B, 1+N, D]``).
        num_classes: outputs of the linear layer.
    """

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.head = nn.Linear(encoder.width, num_classes)

    def train(self, mode: bool = True) -> LinearProbe:
        """Train mode for the head only; the frozen encoder stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, D]`` of images ``[B, 3, H, W]`` (position 0: the mean of the
        normalised patch states in BEiT-v2's X-FM output layout)."""
        return self.encoder(images)[:, 0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.features(images))


def build_encoder(args: argparse.Namespace) -> nn.Module:
    """BEiT-v2 by name from the registry: random, or the vision tower of an xfm run."""
    if args.weights is None:
        spec = {
            "image_size": args.image_size,
            "patch_size": args.patch_size,
            "width": args.width,
            "layers": args.layers,
            "heads": 4,
        }
        return registry.create("vision_encoder", "beit_v2", **spec)
    from safetensors import safe_open

    if not args.weights.is_file():
        raise FileNotFoundError(f"--weights {args.weights} is not a file")
    with safe_open(str(args.weights), "pt") as f:  # xfm exports carry their model config
        meta = f.metadata() or {}
    if "xfm_model_config" not in meta:
        raise ValueError(f"{args.weights} carries no xfm model config (not an xfm run's weights)")
    spec = dict(json.loads(meta["xfm_model_config"])["vision"])
    encoder = registry.create("vision_encoder", spec.pop("name"), **spec)
    prefix = "vision_encoder."
    state = {
        k[len(prefix) :]: v
        for k, v in load_state_dict(args.weights).items()
        if k.startswith(prefix)
    }
    report = load_into(encoder, state, strict=False)
    print(f"loaded the vision encoder of {args.weights}: {report.summary()}")
    return encoder


def main(argv: list[str] | None = None) -> int:
    """Train the probe; print the held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps (CI)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of the probe")
    parser.add_argument("--train", type=int, default=600, help="training images")
    parser.add_argument("--test", type=int, default=300, help="held-out images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--weights", type=Path, default=None, help="an xfm model.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.train, args.test = 20, 96, 60
        args.image_size, args.width, args.layers = 32, 64, 2
    torch.manual_seed(args.seed)

    try:
        encoder = build_encoder(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = encoder.config.image_size
    size = size if isinstance(size, int) else int(size[0])
    model = LinearProbe(encoder, len(SHAPES))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.encoder.parameters())
    print(f"{type(encoder).__name__} frozen ({frozen:,} parameters), linear head {trainable:,}")

    train_x, train_y = make_dataset(args.train, size, args.seed)
    test_x, test_y = make_dataset(args.test, size, args.seed + 1)
    # the encoder is frozen: its features are computed once, then only the head trains
    train_f = torch.cat([model.features(x) for x in train_x.split(args.batch_size)])
    test_f = torch.cat([model.features(x) for x in test_x.split(args.batch_size)])
    mean, std = train_f.mean(0), train_f.std(0) + 1e-6  # standardise the features
    train_f, test_f = (train_f - mean) / std, (test_f - mean) / std

    optimizer = torch.optim.AdamW(model.head.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    bar = tqdm(range(args.steps), desc="linear probe", disable=None)
    for _ in bar:
        idx = torch.randint(len(train_f), (args.batch_size,), generator=generator)
        loss = nn.functional.cross_entropy(model.head(train_f[idx]), train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        accuracy = float((model.head(test_f).argmax(1) == test_y).float().mean()) * 100
    print(
        f"linear probe: {args.steps} steps, final train loss {loss.item():.3f}; held-out accuracy "
        f"{accuracy:.1f}% on {args.test} images (chance {100 / len(SHAPES):.1f}%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

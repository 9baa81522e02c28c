"""A custom X-FM pipeline: your own vision encoder and your own objective, plugged in by name.

What it shows: the plugin registry at work without packaging anything. Two components are
registered in this process and then named by the YAML config like built-in ones:

* ``vision_encoder`` ``my_convnet``: a small ConvNeXt-style network (patchify convolution,
  depthwise-convolution blocks) instead of BEiT-v2. It meets the encoder contract of
  ``xfm.fusion.contract``: an ``int`` ``width``, ``forward(image, mask=None) -> [B, 1+N, D]``
  (position 0 pooled; ``mask`` ``[B, N]`` swaps masked patches for a learned mask token, so MIM
  works), ``config.image_size`` and ``blocks``.
* ``objective`` ``uniformity``: the uniformity loss of Wang & Isola (2020), which spreads the
  normalised image and text features over the sphere, on image-text batches. It follows the
  objective protocol of ``xfm.train.objectives``: class attributes ``sources``, ``losses`` and
  ``stage``, and ``__call__(ctx)`` reading the batch context (which computes each encoder pass
  once and shares it with ITC, ITM, MLM and MIM).

Then ``config.yaml`` (+ ``key=value`` overrides) is loaded and trained with
``xfm.train.trainer.Trainer``, exactly what ``xfm pretrain`` runs, and the losses, the extra one
included, are printed::

    pip install ./packages/xfm-core ./packages/xfm-text ./packages/xfm-vision \
        ./packages/xfm-fusion ./packages/xfm-train
    python examples/custom_pipeline/custom_pipeline.py                 # 300 steps, minutes
    python examples/custom_pipeline/custom_pipeline.py --quick         # seconds (CI)
    python examples/custom_pipeline/custom_pipeline.py steps=50 optim.lr=5e-4

``--quick`` trains 3 steps on a small synthetic set built under ``--work`` (default: a
temporary folder). A plug-in distribution would declare the same two classes as entry points
(``xfm.vision_encoder`` / ``xfm.objective``); then ``xfm pretrain --config`` finds them too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from xfm.core.registry import register
from xfm.train.objectives import Objective, Stage

if TYPE_CHECKING:
    from xfm.train.objectives import BatchContext

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------- the vision encoder
@dataclass
class ConvNetConfig:
    """Options of ``my_convnet`` (the config checks a YAML spec against these fields).

    Attributes:
        image_size: input side; ``patch_size`` must divide it.
        patch_size: stride of the patchify convolution: the grid is ``image_size / patch_size``.
        width: channels ``D`` of every stage (the output width).
        layers: number of depthwise-convolution blocks.
        kernel_size: the depthwise kernel.
    """

    image_size: int = 224
    patch_size: int = 16
    width: int = 256
    layers: int = 4
    kernel_size: int = 7


class ConvBlock(nn.Module):
    """Depthwise ``k x k`` convolution, LayerNorm, pointwise MLP, residual (ConvNeXt block)."""

    def __init__(self, width: int, kernel_size: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(width, width, kernel_size, padding=kernel_size // 2, groups=width)
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, h, w]`` -> ``[B, D, h, w]``."""
        y = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


@register("vision_encoder", "my_convnet")
class MyConvNet(nn.Module):
    """A convolutional vision encoder with X-FM's vision interface.

    ``forward(image [B, 3, H, W], mask [B, N] | None) -> [B, 1+N, D]``: the ``N`` grid cells in
    row-major order (as ``data.process`` lays out MIM masks and region masks), position 0 their
    mean.
    """

    config_class: ClassVar[type] = ConvNetConfig

    def __init__(self, config: ConvNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = dataclasses.replace(config or ConvNetConfig(), **overrides)
        if config.image_size % config.patch_size:
            raise ValueError(
                f"my_convnet: image_size {config.image_size} is not a multiple of patch_size "
                f"{config.patch_size}"
            )
        self.config = config
        self.width = config.width
        self.stem = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)
        self.mask_token = nn.Parameter(torch.zeros(config.width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(
            ConvBlock(config.width, config.kernel_size) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.width)

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Vision states ``[B, 1+N, D]``; ``mask`` ``[B, N]`` (True = masked patch)."""
        x = self.stem(image)  # [B, D, h, w]
        b, d, h, w = x.shape
        if mask is not None:
            if mask.shape != (b, h * w):
                raise ValueError(
                    f"my_convnet: mask must be [B, N] = [{b}, {h * w}]; got {tuple(mask.shape)}"
                )
            m = mask.view(b, 1, h, w).to(x.dtype)
            x = x * (1 - m) + self.mask_token.view(1, d, 1, 1).to(x.dtype) * m
        for block in self.blocks:
            x = block(x)
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # [B, N, D]
        return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


# ------------------------------------------------------------------------ the objective
@register("objective", "uniformity")
class Uniformity(Objective):
    """The uniformity loss of Wang & Isola (2020) on the normalised ITC features.

    ``log mean_{i<j} exp(-t ||f_i - f_j||^2)`` over the ``B`` image features and, separately,
    the ``B`` text features of a batch (averaged): it spreads the features over the sphere, a
    complement to ITC's pull between matching pairs. Uses the same ``[B, E]`` tensors as ITC
    (computed once by the context). Returns ``{"uniformity": scalar}`` (negative; lower is
    more uniform).

    Args:
        t: the kernel's scale (2 in the paper).
    """

    name: ClassVar[str] = "uniformity"
    sources: ClassVar[tuple[str, ...]] = ("image_text", "region")
    losses: ClassVar[tuple[str, ...]] = ("uniformity",)
    stage: ClassVar[Stage] = Stage.MAIN

    def __init__(self, t: float = 2.0) -> None:
        self.t = t

    def _uniformity(self, feat: torch.Tensor) -> torch.Tensor:
        feat = feat.float()
        sq_dist = 2 - 2 * feat @ feat.t()  # ||a - b||^2 of unit vectors, [B, B]; no sqrt
        i, j = torch.triu_indices(len(feat), len(feat), offset=1, device=feat.device)
        return sq_dist[i, j].mul(-self.t).exp().mean().log()

    def __call__(self, ctx: BatchContext) -> dict[str, torch.Tensor]:
        image_feat, text_feat = ctx.itc_features()
        loss = (self._uniformity(image_feat) + self._uniformity(text_feat)) / 2
        return {"uniformity": loss}


# ------------------------------------------------------------------------------- main
QUICK = [
    "steps=3",
    "threads=1",
    "device=cpu",
    "data.synth.image_size=32",
    "data.synth.num_train=48",
    "data.synth.num_test=16",
    "data.synth.num_text=64",
    "data.synth.vocab_size=300",
    "data.process.image_size=32",
    "data.loader.num_workers=0",
    "checkpoint.every=0",
    "log.progress=false",
    "log.tensorboard=false",
    "log.plot=false",
]


def main(argv: list[str] | None = None) -> int:
    """Load the config with the plug-ins registered, train, print every loss."""
    from xfm.core.config import ConfigError
    from xfm.train.config import load_pretrain_config
    from xfm.train.trainer import Trainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    parser.add_argument("--config", type=Path, default=HERE / "config.yaml")
    parser.add_argument("--quick", action="store_true", help="3 steps on a small synthetic set")
    parser.add_argument("--work", type=Path, default=None, help="folder for data and the run")
    args = parser.parse_args(argv)

    overrides = list(args.overrides)
    if args.quick:
        work = args.work or Path(tempfile.mkdtemp(prefix="xfm-custom-"))
        overrides = [
            *QUICK,
            f"data.synth.out={work / 'synth'}",
            f"run_dir={work / 'run'}",
            *overrides,
        ]
    elif args.work is not None:
        overrides = [
            f"data.synth.out={args.work / 'synth'}",
            f"run_dir={args.work / 'run'}",
            *overrides,
        ]
    try:
        cfg = load_pretrain_config(str(args.config), overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"vision encoder: {cfg.model['vision']}")
    print(f"image_text objectives: {cfg.data.sources['image_text'].objectives}")

    trainer = Trainer(cfg, overwrite=True)  # a second run replaces the first
    try:
        trainer.setup()
        vision = trainer.model.vision_encoder
        print(
            f"built {type(trainer.model).__name__} with vision encoder {type(vision).__name__} "
            f"({sum(p.numel() for p in vision.parameters()):,} parameters)"
        )
        summary = trainer.fit()
    except (FileNotFoundError, ValueError) as err:  # as `xfm pretrain` reports them
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        trainer.close()
    last = summary["last"]
    print("losses at the last step(s): " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    extra = last.get("image_text/uniformity")
    if extra is None or not math.isfinite(extra):
        print("error: the plug-in objective reported no finite loss", file=sys.stderr)
        return 1
    print(f"extra objective image_text/uniformity: {extra:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

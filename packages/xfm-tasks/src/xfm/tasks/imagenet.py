"""Image classification with the vision encoder: ImageNet-1k fine-tuning and linear probes.

* ``imagenet`` (``xfm finetune imagenet``): :class:`~xfm.tasks.classification.ImageClassifier`
  with the official deep head, layer-wise lr decay (:func:`layer_decay_optimizer`), mixup /
  cutmix with label smoothing (timm ``Mixup`` + ``SoftTargetCrossEntropy``; without mixup timm
  ``LabelSmoothingCrossEntropy``), top-1 / top-5.
* ``linear_probe``: frozen encoder, one ``Linear`` on ``cat(vision[:, 0], mean(patches))``,
  cross-entropy (CIFAR-10/100, Food-101, ... as ImageFolder trees).

Data: ImageFolder trees (``<split>/<class name>/<image>``; classes sorted by name, the
training tree defines them). :func:`write_shape_imagefolder` writes the synthetic shapes set
(15 classes ``<colour>_<shape>``, one shape per image; chance 6.7% top-1).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xfm.tasks.base import Task, TaskData, TaskDataSection, collect_outputs
from xfm.tasks.base_data import ImageReader
from xfm.tasks.classification import ImageClassifier
from xfm.train.config import OptimSection

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderSet",
    "ImageNetTask",
    "LinearProbeTask",
    "layer_decay_optimizer",
    "layer_id",
    "topk_accuracy",
    "write_shape_imagefolder",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".JPEG")


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` of ``logits`` ``[N, C]`` against ``labels`` ``[N]``."""
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        hit = logits.topk(kk, dim=1).indices.eq(labels[:, None]).any(1)
        out[f"top{k}"] = 100.0 * float(hit.float().mean())
    return out


def list_image_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[tuple[str, int]]]:
    """``(class names sorted, [(path, class index)])`` of an ImageFolder tree."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"image folder {str(r)!r} does not exist")
    r = r.resolve()
    classes = sorted(d.name for d in r.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"image folder {str(r)!r} has no class sub-folders")
    items = [
        (str(p), i)
        for i, c in enumerate(classes)
        for p in sorted((r / c).rglob("*"))
        if p.suffix in IMAGE_EXTENSIONS
    ]
    if not items:
        raise ValueError(f"image folder {str(r)!r} holds no images ({IMAGE_EXTENSIONS})")
    return classes, items


class ImageFolderSet(torch.utils.data.Dataset):
    """``(image [3,S,S], label)`` of an ImageFolder tree; ``classes`` fixes the label order
    (default: the tree's own classes)."""

    def __init__(self, root: str, reader: ImageReader, classes: list[str] | None = None):
        own, items = list_image_folder(root)
        self.classes = classes or own
        unknown = sorted(set(own) - set(self.classes))
        if unknown:
            raise ValueError(f"{root}: classes {unknown} are not in the training classes")
        remap = {i: self.classes.index(c) for i, c in enumerate(own)}
        self.items = [(p, remap[y]) for p, y in items]
        self.reader = reader

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        return self.reader(path, seed=i)[0], label


def write_shape_imagefolder(
    out: str | os.PathLike[str],
    per_class_train: int = 60,
    per_class_val: int = 10,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Render ``out/{train,val}/<colour>_<shape>/*.png`` (one shape per image)."""
    from xfm.train.data.synth import render, sample_scene
    from xfm.train.data.synth.world import class_names

    root = Path(out)
    names = [n.replace(" ", "_") for n in class_names()]
    for split, count, salt in (("train", per_class_train, 0), ("val", per_class_val, 1)):
        rng = np.random.default_rng([seed, salt])
        have = dict.fromkeys(range(len(names)), 0)
        while min(have.values()) < count:
            scene = sample_scene(rng, image_size, num_shapes=1)
            label = scene.shapes[0].label
            if have[label] >= count:
                continue
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            render(scene).save(folder / f"{have[label]:05d}.png")
            have[label] += 1
    (root / "done.json").write_text(json.dumps({"classes": names}))
    return root


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a vision-encoder parameter: embeddings 0, block ``i`` ``i + 1``, the rest
    (``fc_norm``, heads) ``num_layers + 1``."""
    if re.search(r"(^|\.)(cls_token|mask_token|pos_embed|patch_embed|rel_pos)(\.|$)", name):
        return 0 if "blocks." not in name else int(re.search(r"blocks\.(\d+)\.", name)[1]) + 1
    m = re.search(r"(^|\.)blocks\.(\d+)\.", name)
    return int(m[2]) + 1 if m else num_layers + 1


def layer_decay_optimizer(
    model: nn.Module, cfg: OptimSection, device: torch.device, decay: float
) -> torch.optim.AdamW:
    """AdamW with layer-wise lr decay: lr of depth ``d`` = ``lr * decay ** (L + 1 - d)``
    (BEiT / X-FM fine-tuning); no weight decay on biases, norms and 1-d parameters."""
    from xfm.fusion.contract import check_encoder

    check_encoder("vision_encoder", model.vision_encoder, ("core", "layers"))
    num_layers = len(model.vision_encoder.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        d = layer_id(name, num_layers)
        no_wd = p.ndim <= 1 or any(re.search(pat, name) for pat in cfg.no_decay)
        scale = decay ** (num_layers + 1 - d)
        g = groups.setdefault(
            (d, no_wd),
            {
                "params": [],
                "weight_decay": 0.0 if no_wd else cfg.weight_decay,
                "lr": cfg.lr * scale,
                "lr_mult": scale,
            },
        )
        g["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


class ImageNetTask(Task):
    """ImageNet-style fine-tuning. Options: ``mixup``, ``cutmix`` (alphas; 0 disables),
    ``label_smoothing``, ``layer_decay``, ``num_classes`` (needed unless synthetic: the model
    is built before the data is read), ``synthetic`` (``{out, per_class_train,
    per_class_val, image_size, seed}``; ``{synthetic}`` in data paths expands to ``out``)."""

    name: ClassVar[str] = "imagenet"
    metric: ClassVar[str] = "top1"
    official_layout: ClassVar[str | None] = "classification_imagenet"
    default_options: ClassVar[dict[str, Any]] = {
        "mixup": 0.8,
        "cutmix": 1.0,
        "label_smoothing": 0.1,
        "layer_decay": 0.65,
        "num_classes": None,
        "synthetic": None,
    }
    head: ClassVar[str] = "deep"
    freeze: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.classes: list[str] | None = None
        self._mixup: Any = None

    def _path(self, data: TaskDataSection, path: str) -> str:
        syn = self.options.get("synthetic")
        if syn is not None and "{synthetic}" in path:
            out = str(syn.get("out", "data/shapes_imagefolder"))
            if not (Path(out) / "done.json").is_file():
                write_shape_imagefolder(
                    out,
                    int(syn.get("per_class_train", 60)),
                    int(syn.get("per_class_val", 10)),
                    int(syn.get("image_size", 32)),
                    int(syn.get("seed", 0)),
                )
            path = path.replace("{synthetic}", out)
        return data.expand(path)

    def _classes(self, data: TaskDataSection) -> list[str]:
        if self.classes is None:
            self.classes = list_image_folder(self._path(data, data.train))[0]
        return self.classes

    def num_classes(self) -> int:
        """Classes of the training tree, the synthetic set, or ``options.num_classes``."""
        if self.classes is not None:
            return len(self.classes)
        if self.options.get("num_classes"):
            return int(self.options["num_classes"])
        syn = self.options.get("synthetic")
        if syn is not None:
            self.classes = list_image_folder(self._path(TaskDataSection(), "{synthetic}/train"))[0]
            return len(self.classes)
        raise ValueError("set options.num_classes (the model is built before the data is read)")

    def build_model(self, model_config: Mapping[str, Any]) -> ImageClassifier:
        vision = dict(model_config.get("vision", {"name": "beit_v2"}))
        return ImageClassifier(vision, self.num_classes(), self.head, self.freeze)

    def build_optimizer(
        self, model: nn.Module, cfg: OptimSection, device: torch.device
    ) -> torch.optim.Optimizer:
        return layer_decay_optimizer(model, cfg, device, float(self.options["layer_decay"]))

    def _data(self, data: TaskDataSection, path: str, train: bool) -> TaskData:
        reader = ImageReader("/", data.image_size, train and data.augment)
        ds = ImageFolderSet(self._path(data, path), reader, self._classes(data))

        def collate(batch: list[Any]) -> dict[str, torch.Tensor]:
            return {
                "image": torch.stack([im for im, _ in batch]),
                "label": torch.tensor([y for _, y in batch]),
            }

        return TaskData(ds, collate)

    def train_data(self, data: TaskDataSection, tokenizer: Any) -> TaskData:
        return self._data(data, data.train, True)

    def eval_data(self, data: TaskDataSection, split: str, tokenizer: Any) -> TaskData:
        return self._data(data, data.eval[split], False)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        image, label = batch["image"], batch["label"]
        o = self.options
        use_mix = (o["mixup"] > 0 or o["cutmix"] > 0) and image.shape[0] % 2 == 0
        if use_mix:
            if self._mixup is None:
                self._mixup = Mixup(
                    mixup_alpha=o["mixup"],
                    cutmix_alpha=o["cutmix"],
                    label_smoothing=o["label_smoothing"],
                    num_classes=len(self._classes_or_raise()),
                )
            image, target = self._mixup(image, label)
            loss = SoftTargetCrossEntropy()(model(image).float(), target)
        elif o["label_smoothing"] > 0:
            loss = LabelSmoothingCrossEntropy(o["label_smoothing"])(model(image).float(), label)
        else:
            loss = F.cross_entropy(model(image).float(), label)
        return {"loss": loss}

    def _classes_or_raise(self) -> list[str]:
        if self.classes is None:
            raise RuntimeError("the classes are unknown: build the training data first")
        return self.classes

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        data: TaskData,
        *,
        batch_size: int = 64,
        device: torch.device | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: bool = False,
    ) -> dict[str, float]:
        def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
            return {"logits": model(batch["image"]).float().cpu(), "label": batch["label"].cpu()}

        got = collect_outputs(
            data,
            step,
            batch_size=batch_size,
            device=device or next(model.parameters()).device,
            autocast=autocast,
            progress=progress,
            desc="ImageNet eval",
        )
        out = topk_accuracy(got["logits"], got["label"])
        out["chance_top1"] = 100.0 / got["logits"].shape[1]
        out["images"] = float(len(got["label"]))
        return out


class LinearProbeTask(ImageNetTask):
    """Frozen-feature linear probe (plain cross-entropy, no mixup, no layer decay)."""

    name: ClassVar[str] = "linear_probe"
    official_layout: ClassVar[str | None] = None
    default_options: ClassVar[dict[str, Any]] = {"num_classes": None, "synthetic": None}
    head: ClassVar[str] = "linear"
    freeze: ClassVar[bool] = True

    def build_optimizer(
        self, model: nn.Module, cfg: OptimSection, device: torch.device
    ) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(model(batch["image"]).float(), batch["label"])}

"""NLVR2, grounding and the two classification golden sets, and the registry of every task set
(outputs of ``../shared/golden_tasks/<task>``, other dimensions)."""

from __future__ import annotations

import torch
from golden_set import GoldenSet, Tensors
from official_harness import build_official, token_batch
from other_dims import DIMS as D
from other_dims import TASK_SEED
from task_descriptions import describe_task, official_config, text_json
from torch import nn

# ---------------------------------------------------------------- nlvr

NLVR_SEED = TASK_SEED + 30
NLVR_CONFIG = official_config(D.text_layers, 1)
NLVR_LENGTHS = [8, 13, 6]


def nlvr_build() -> nn.Module:
    """Official ``XFMForNLVR(config)``."""
    from models.model_nlvr import XFMForNLVR

    return build_official(XFMForNLVR, NLVR_CONFIG, text_json(), NLVR_SEED)


def nlvr_describe(model: nn.Module) -> dict:
    """``config.json``."""
    return describe_task(
        model, task="nlvr", official_class="models.model_nlvr.XFMForNLVR",
        official_yaml="configs/xfm-ft/NLVR.yaml", seed=NLVR_SEED, config=NLVR_CONFIG,
    )  # fmt: skip


def nlvr_inputs(g: torch.Generator) -> Tensors:
    """Left / right images, statements (padding="longest"), labels."""
    b = len(NLVR_LENGTHS)
    image0 = torch.randn(b, 3, D.image_res, D.image_res, generator=g)
    image1 = torch.randn(b, 3, D.image_res, D.image_res, generator=g)
    ids, atts = token_batch(g, NLVR_LENGTHS, D.vocab)
    targets = torch.randint(0, 2, (b,), generator=g)
    return {
        "image0": image0,
        "image1": image1,
        "text_ids": ids,
        "text_atts": atts,
        "targets": targets,
    }


@torch.no_grad()
def nlvr_compute(model: nn.Module, x: Tensors) -> Tensors:
    """Outputs of ``../shared/golden_tasks/nlvr``."""
    ids, atts, targets = x["text_ids"], x["text_atts"], x["targets"]
    images = torch.cat([x["image0"], x["image1"]])
    b = targets.shape[0]
    vision, vision_atts = model.get_vision_embeds(images)
    text = model.get_text_embeds(ids, atts)
    f0 = model.get_cross_embeds(
        vision[:b], vision_atts[:b], text_embeds=text, text_atts=atts, is_pretrain=False
    )
    f1 = model.get_cross_embeds(
        vision[b:], vision_atts[b:], text_embeds=text, text_atts=atts, is_pretrain=False
    )
    logits = model(images, ids, atts, targets, train=False)
    return {
        "vision_embeds": vision,
        "text_embeds": text,
        "fusion_states_image0": f0,
        "fusion_states_image1": f1,
        "output_cls": torch.cat([f0[:, 0], f1[:, 0]], dim=-1),
        "logits": logits,
        "loss": model(images, ids, atts, targets, train=True),
        "pred_class": logits.max(1)[1],
    }


# ---------------------------------------------------------------- grounding

GROUNDING_SEED = TASK_SEED + 40
GROUNDING_CONFIG = official_config(D.text_layers, 2, max_tokens=40)
GROUNDING_LENGTHS = [7, 12, 5, 9]


def grounding_build() -> nn.Module:
    """Official ``XFMForGrounding(config)`` (bbox variant)."""
    from models.model_grounding import XFMForGrounding

    return build_official(XFMForGrounding, GROUNDING_CONFIG, text_json(), GROUNDING_SEED)


def grounding_describe(model: nn.Module) -> dict:
    """``config.json``."""
    return describe_task(
        model, task="grounding", official_class="models.model_grounding.XFMForGrounding",
        official_yaml="configs/xfm-ft/Grounding_bbox.yaml", seed=GROUNDING_SEED,
        config=GROUNDING_CONFIG,
    )  # fmt: skip


def grounding_inputs(g: torch.Generator) -> Tensors:
    """Images, referring expressions (padding="longest"), target boxes (cx, cy, w, h)."""
    b = len(GROUNDING_LENGTHS)
    image = torch.randn(b, 3, D.image_res, D.image_res, generator=g)
    ids, atts = token_batch(g, GROUNDING_LENGTHS, D.vocab)
    wh = 0.15 + 0.4 * torch.rand(b, 2, generator=g)
    centre = wh / 2 + (1 - wh) * torch.rand(b, 2, generator=g)
    return {
        "image": image,
        "text_ids": ids,
        "text_atts": atts,
        "target_bbox": torch.cat([centre, wh], 1),
    }


@torch.no_grad()
def grounding_compute(model: nn.Module, x: Tensors) -> Tensors:
    """Outputs of ``../shared/golden_tasks/grounding``."""
    image, ids, atts = x["image"], x["text_ids"], x["text_atts"]
    vision = model.get_vision_embeds(image)[0]
    text = model.get_text_embeds(ids, atts)
    fused = model.get_cross_embeds(
        vision,
        torch.ones(vision.shape[:2]),
        text_ids=ids,
        text_atts=atts,
        text_embeds=text,
        is_pretrain=False,
    )
    _, loss_bbox, loss_giou = model(image, ids, atts, x["target_bbox"])
    return {
        "vision_embeds": vision,
        "text_embeds": text,
        "fusion_states": fused,
        "bbox_head_logits": model.bbox_head(fused[:, 0]),
        "output_coord": model(image, ids, atts),
        "loss_bbox": loss_bbox,
        "loss_giou": loss_giou,
    }


# ---------------------------------------------------------------- classification (GLUE, text only)

GLUE_SEED = TASK_SEED + 50
GLUE_CONFIG = official_config(D.text_layers, 0, task_name="mnli", num_labels=3, use_xbrain=True)
GLUE_PAIRS = [(5, 6), (3, 8), (7, 2), (4, 4)]  # body lengths of sentence A / B


def _classifier(config: dict) -> nn.Module:
    from models.model_classification import XFMForClassification

    return XFMForClassification(config)


def glue_build() -> nn.Module:
    """Official ``XFMForClassification(config)`` with the glue_mnli.yaml flags."""
    return build_official(_classifier, GLUE_CONFIG, text_json(), GLUE_SEED)


def glue_describe(model: nn.Module) -> dict:
    """``config.json``."""
    return describe_task(
        model, task="classification_glue",
        official_class="models.model_classification.XFMForClassification (task_name='mnli', num_labels=3)",
        official_yaml="configs/xfm-ft/glue_mnli.yaml", seed=GLUE_SEED, config=GLUE_CONFIG,
        fusion_used=False,
    )  # fmt: skip


def glue_inputs(g: torch.Generator) -> Tensors:
    """Sentence pairs ``<s> A </s></s> B </s> <pad>...`` (padding="longest"), labels in {0,1,2}."""
    rows = []
    for a, b in GLUE_PAIRS:
        body = torch.randint(3, D.vocab, (a + b,), generator=g)
        rows.append(
            torch.cat(
                [torch.tensor([0]), body[:a], torch.tensor([2, 2]), body[a:], torch.tensor([2])]
            )
        )
    t = max(len(r) for r in rows)
    ids = torch.ones(len(rows), t, dtype=torch.long)
    atts = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], atts[i, : len(r)] = r, 1
    return {
        "text_ids": ids,
        "text_atts": atts,
        "targets": torch.randint(0, 3, (len(rows),), generator=g),
    }


@torch.no_grad()
def glue_compute(model: nn.Module, x: Tensors) -> Tensors:
    """Outputs of ``../shared/golden_tasks/classification_glue``."""
    ids, atts, targets = x["text_ids"], x["text_atts"], x["targets"]
    text = model.text_encoder(ids, attention_mask=atts, return_dict=True).last_hidden_state
    logits = model(None, ids, atts, targets, train=False)
    return {
        "text_embeds": text,
        "text_cls": text[:, 0],
        "logits": logits,
        "loss": model(None, ids, atts, targets, train=True),
        "pred_class": logits.argmax(-1),
    }


# ---------------------------------------------------------------- classification (ImageNet, image only)

IMAGENET_SEED = TASK_SEED + 60
NUM_CLASSES = 7
IMAGENET_CONFIG = official_config(0, 0, task_name="imagenet", num_labels=NUM_CLASSES, smoothing=0.1)
MIXUP_LAM = 0.7


def imagenet_build() -> nn.Module:
    """Official ``XFMForClassification(config)`` with the imagenet1k.yaml flags (0 text layers)."""
    return build_official(_classifier, IMAGENET_CONFIG, text_json(), IMAGENET_SEED)


def imagenet_describe(model: nn.Module) -> dict:
    """``config.json``."""
    return describe_task(
        model, task="classification_imagenet",
        official_class=(
            "models.model_classification.XFMForClassification "
            f"(task_name='imagenet', num_labels={NUM_CLASSES})"
        ),
        official_yaml="configs/xfm-ft/imagenet1k.yaml", seed=IMAGENET_SEED, config=IMAGENET_CONFIG,
        fusion_used=False,
    )  # fmt: skip


def imagenet_inputs(g: torch.Generator) -> Tensors:
    """Images, labels and timm mixup soft targets (lam 0.7, smoothing 0.1, partner = flip)."""
    from timm.data.mixup import mixup_target

    image = torch.randn(4, 3, D.image_res, D.image_res, generator=g)
    targets = torch.randint(0, NUM_CLASSES, (4,), generator=g)
    soft = mixup_target(targets, NUM_CLASSES, lam=MIXUP_LAM, smoothing=0.1)
    return {"image": image, "targets": targets, "soft_targets": soft.float()}


@torch.no_grad()
def imagenet_compute(model: nn.Module, x: Tensors) -> Tensors:
    """Outputs of ``../shared/golden_tasks/classification_imagenet``."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    image, targets = x["image"], x["targets"]
    vision = model.get_vision_embeds(image)[0]
    logits = model(image, None, None, None, False)
    return {
        "vision_embeds": vision,
        "features": torch.cat([vision[:, 0], vision[:, 1:].mean(1)], dim=-1),
        "logits": logits,
        "loss_model_ce": model(image, None, None, targets, True),
        "loss_soft_target": SoftTargetCrossEntropy()(logits, x["soft_targets"]),
        "loss_label_smoothing": LabelSmoothingCrossEntropy(0.1)(logits, targets),
        "pred_class": logits.max(1)[1],
    }


# ---------------------------------------------------------------- registry


def _sets() -> dict[str, GoldenSet]:
    import retrieval_set
    import vqa_set

    return {
        "retrieval": retrieval_set.SET,
        "nlvr": GoldenSet("nlvr", NLVR_SEED, nlvr_build, nlvr_describe, nlvr_inputs, nlvr_compute),
        "grounding": GoldenSet(
            "grounding",
            GROUNDING_SEED,
            grounding_build,
            grounding_describe,
            grounding_inputs,
            grounding_compute,
        ),
        "vqa": vqa_set.SET,
        "classification_glue": GoldenSet(
            "classification_glue", GLUE_SEED, glue_build, glue_describe, glue_inputs, glue_compute
        ),
        "classification_imagenet": GoldenSet(
            "classification_imagenet",
            IMAGENET_SEED,
            imagenet_build,
            imagenet_describe,
            imagenet_inputs,
            imagenet_compute,
        ),
    }


#: Every task set by name.
SETS: dict[str, GoldenSet] = _sets()

"""The pretraining golden set: official ``models.model_pretrain.XFM`` (same outputs and
``gradient_routing.json`` as ``../shared/golden``, other dimensions)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from golden_set import GoldenSet, Tensors
from official_harness import (
    OFFICIAL_COMMIT,
    TEXT_DIR_NOTE,
    FixedMasks,
    build_official,
    fix_hard_negatives,
    roberta_json,
    token_batch,
    vision_description,
)
from other_dims import DIMS, PRETRAIN_SEED
from torch import nn

D = DIMS
B, T, M = 4, 11, 3  # texts (= images), token length, MLM slots
LENGTHS = [11, 9, 6, 4]
FUSION_LAYERS = 1
MASK_ID = D.vocab - 1  # plays <mask>


def text_json() -> dict:
    """RoBERTa json given to the official constructor."""
    return roberta_json(
        D.vocab, D.text_width, D.text_layers, D.text_heads, D.text_ffn, D.max_positions
    )


def official_config() -> dict:
    """The config dict of the official constructor (flags of Pretrain_XBrain_base_4m.yaml)."""
    return {
        "use_beit_v2": True,
        "vision_config": D.vision_json(),
        "image_res": D.image_res,
        "patch_size": D.patch,
        "local_attn_depth": -1,
        "text_encoder": TEXT_DIR_NOTE,
        "text_num_hidden_layers": D.text_layers,
        "text_fusion_start_at": D.text_layers,
        "fusion_num_hidden_layers": FUSION_LAYERS,
        "fusion_fusion_start_at": 0,
        "use_xbrain": True,
        "wregion": 1.0,
        "wweb": 1.0,
        "wimagenet": 1.0,
        "wimage": 1.0,
        "waux": 1.0,
        "num_masking_patches": 75,
        "min_num_patches": 16,
        "calc_image_bbox_loss": False,
        "embed_dim": D.embed_dim,
        "temp": 0.07,
        "learnable_temp": True,
        "max_temp": 0.5,
        "min_temp": 0.001,
        "max_words": 30,
        "max_tokens": 30,
        "mask_prob": 0.5,
        "max_masks": 15,
        "ret_bbox_loss": True,
        "ret_bbox_giou": True,
        "accelerator": {
            "ACCELERATOR": "ApexDDP",
            "AUTO_CAST": False,
            "SYNCBN": False,
            "FP16_OPT_LEVEL": "O1",
            "FP16_LOSS_SCALE": "dynamic",
            "RNG_SEED": 42,
            "GRAD_ACCUMULATE_STEPS": 1,
            "CLIP_GRAD_NORM": 1.0,
        },
    }


def build() -> nn.Module:
    """Official ``XFM(config, load_vision_params=False, load_text_params=False)``."""
    from models.model_pretrain import XFM

    return build_official(
        lambda cfg: XFM(cfg, load_vision_params=False, load_text_params=False),
        official_config(),
        text_json(),
        PRETRAIN_SEED,
    )


def describe(model: nn.Module) -> dict:
    """``config.json`` (keys of ``../shared/golden/config.json``)."""
    vision = vision_description(
        D.image_res, D.patch, D.vision_width, D.vision_layers, D.vision_heads, D.mlp_ratio
    )
    vision.update(num_masking_patches=75, min_num_patches=16)
    common = {
        "vocab_size": D.vocab,
        "width": D.text_width,
        "heads": D.text_heads,
        "intermediate_size": D.text_ffn,
        "max_position_embeddings": D.max_positions,
        "pad_token_id": 1,
    }
    return {
        "official_commit": OFFICIAL_COMMIT,
        "official_class": "models.model_pretrain.XFM",
        "set": "other",
        "seed": PRETRAIN_SEED,
        "vision": vision,
        "text": {
            "type": "RobertaForMaskedLM (models/xroberta.py)",
            **common,
            "layers": D.text_layers,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "mask_token_id_used_in_inputs": MASK_ID,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-05,
            "hidden_act": "gelu (erf)",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "fusion_layer": D.text_layers,
            "cross_attention_layers": 0,
            "tie_word_embeddings": True,
        },
        "fusion": {
            "type": "RobertaForMaskedLM (models/xroberta.py)",
            **common,
            "layers": FUSION_LAYERS,
            "type_vocab_size": 1,
            "layer_norm_eps": 1e-05,
            "fusion_layer": 0,
            "cross_attention_layers": FUSION_LAYERS,
            "encoder_width": D.vision_width,
            "tie_word_embeddings": True,
        },
        "embed_dim": D.embed_dim,
        "temp": 0.05,
        "learnable_temp": True,
        "min_temp": 0.001,
        "max_temp": 0.5,
        "has_fusion_proj": hasattr(model, "fusion_proj"),
        "flags": {
            "detach_text_forMLM": True,
            "is_pretrain_detach_text_for_itm_and_bbox": True,
            "do_image_mask": True,
            "use_mm_mim_loss": True,
            "mim_cls_only": False,
            "use_vision_tokenizer": False,
            "calc_image_bbox_loss": False,
            "ret_bbox_loss": True,
            "ret_bbox_giou": True,
        },
        "batch_size": B,
        "text_len": T,
        "num_masks_slots": M,
        "text_lengths": LENGTHS,
        "official_yaml_config_used": official_config(),
        "text_config_json": text_json(),
    }


def _other(g: torch.Generator, b: int, n: int) -> int:
    """A random index in [0, n) different from ``b``."""
    j = int(torch.randint(0, n - 1, (1,), generator=g))
    return j if j < b else j + 1


def make_inputs(g: torch.Generator) -> Tensors:
    """Fixed inputs (names, dtypes and meaning of ``../shared/golden/inputs.safetensors``)."""
    image = torch.randn(B, 3, D.image_res, D.image_res, generator=g)
    text_ids, text_atts = token_batch(g, LENGTHS, MASK_ID, T)
    masked = text_ids.clone()
    masked_pos = torch.zeros(B, M, dtype=torch.long)
    masked_ids = torch.full((B, M), -100, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        k = min(M, max(1, round(0.5 * (n - 2))))
        pos = torch.randperm(n - 2, generator=g)[:k] + 1
        masked_pos[b, :k], masked_ids[b, :k] = pos, text_ids[b, pos]
        masked[b, pos] = MASK_ID
    neg_image_idx = torch.tensor([_other(g, b, B) for b in range(B)])
    neg_text_idx = torch.tensor([_other(g, b, B) for b in range(B)])
    image_mask = torch.rand(B, D.num_patches, generator=g) < 0.4
    image_mask[:, 0] |= ~image_mask.any(1)  # at least one masked patch per image

    idx_to_group_img = torch.tensor([0, 0, 3, 1])
    is_image = torch.tensor([0, 1, 0, 0])
    region = torch.ones(B, 1 + D.num_patches, dtype=torch.long)
    boxes = torch.zeros(B, 4)
    for b in range(B):
        if is_image[b]:
            boxes[b] = torch.tensor([0.5, 0.5, 1.0, 1.0])
            continue
        r0, c0 = (int(v) for v in torch.randint(0, D.grid - 1, (2,), generator=g))
        h = int(torch.randint(1, D.grid - r0 + 1, (1,), generator=g))
        w = int(torch.randint(1, D.grid - c0 + 1, (1,), generator=g))
        grid = torch.zeros(D.grid, D.grid, dtype=torch.long)
        grid[r0 : r0 + h, c0 : c0 + w] = 1
        region[b, 1:] = grid.flatten()
        boxes[b] = torch.tensor(
            [(c0 + w / 2) / D.grid, (r0 + h / 2) / D.grid, w / D.grid, h / D.grid]
        )
    return {
        "image": image,
        "text_ids": text_ids,
        "text_atts": text_atts,
        "masked_text_ids": masked,
        "masked_pos": masked_pos,
        "masked_ids": masked_ids,
        "neg_image_idx": neg_image_idx,
        "neg_text_idx": neg_text_idx,
        "image_mask": image_mask,
        "idx_to_group_img": idx_to_group_img,
        "is_image": is_image,
        "region_image_atts": region,
        "target_bbox": boxes,
    }


@contextlib.contextmanager
def determinism(model: nn.Module, x: Tensors) -> Iterator[FixedMasks]:
    """Fixed MIM masks and hard negatives installed on ``model`` (removed afterwards)."""
    saved = model.vision_encoder.generator
    masks = FixedMasks(x["image_mask"], D.grid)
    model.vision_encoder.generator = masks
    fix_hard_negatives(model, x["neg_image_idx"], x["neg_text_idx"])
    try:
        yield masks
    finally:
        model.vision_encoder.generator = saved
        del model.get_hard_negatives


def image_step(model: nn.Module, x: Tensors) -> dict[str, torch.Tensor]:
    """Official image-text step (``data_source='image'``): ITC, ITM, fusion MLM, MIM."""
    return model(
        x["image"], x["text_ids"], x["text_atts"],
        text_ids_masked=x["masked_text_ids"], masked_pos=x["masked_pos"], masked_ids=x["masked_ids"],
        ret_mim_loss=True, ret_match_loss=True, ret_mlm_loss=True, ret_itc_loss=True,
        data_source="image",
    )  # fmt: skip


def region_step(model: nn.Module, x: Tensors) -> dict[str, torch.Tensor]:
    """Official region step (``data_source='region'``) with the bbox losses."""
    return model(
        x["image"], x["text_ids"], x["text_atts"],
        text_ids_masked=x["masked_text_ids"], masked_pos=x["masked_pos"], masked_ids=x["masked_ids"],
        image_atts=x["region_image_atts"], idx_to_group_img=x["idx_to_group_img"],
        target_bbox=x["target_bbox"], is_image=x["is_image"],
        ret_mim_loss=True, ret_bbox_loss=True, ret_bbox_giou=True, data_source="region",
    )  # fmt: skip


def text_step(model: nn.Module, x: Tensors) -> dict[str, torch.Tensor]:
    """Official text-only step (``model(None, ...)``): text MLM."""
    return model(
        None, x["text_ids"], x["text_atts"],
        text_ids_masked=x["masked_text_ids"], masked_pos=x["masked_pos"], masked_ids=x["masked_ids"],
    )  # fmt: skip


def _neg_weights(a: torch.Tensor, b: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """``get_hard_negatives`` sampling weights: softmax(a @ b.T / temp) + 1e-5, diagonal 0."""
    w = F.softmax(a @ b.t() / temp, dim=1) + 1e-5
    return w.fill_diagonal_(0)


@torch.no_grad()
def compute(model: nn.Module, x: Tensors) -> Tensors:
    """Every output of ``../shared/golden/outputs.safetensors`` from the official model."""
    out: Tensors = {}
    with determinism(model, x) as masks:
        captured: list[torch.Tensor] = []
        hook = model.itm_head.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            losses = image_step(model, x)
        finally:
            hook.remove()
        out["itm_logits_all"] = captured[0]
        for k in ("loss_itc", "loss_itm", "loss_mlm", "loss_mim"):
            out[k] = losses[k]
        out["loss_text_mlm"] = text_step(model, x)["loss_mlm"]
        region = region_step(model, x)
        for k in ("itc", "itm", "mlm", "mim"):
            out[f"region_loss_{k}"] = region[f"loss_{k}"]
        out["loss_bbox"], out["loss_giou"] = region["loss_bbox"], region["loss_giou"]

        image, ids, atts = x["image"], x["text_ids"], x["text_atts"]
        vision, vision_atts = model.get_vision_embeds(image)
        out["vision_embeds"] = vision
        masks.calls = 0
        out["vision_embeds_masked"] = model.get_vision_embeds(image, do_mask=True)[0]
    text = model.get_text_embeds(ids, atts)
    out["text_embeds"], out["text_cls"] = text, text[:, 0]
    image_feat, text_feat = model.get_features(vision, text)
    out["image_feat"], out["text_feat"] = image_feat, text_feat
    out["sim_i2t"] = image_feat @ text_feat.t() / model.temp
    out["itm_neg_weights_t2i"] = _neg_weights(text_feat, image_feat, model.temp)
    out["itm_neg_weights_i2t"] = _neg_weights(image_feat, text_feat, model.temp)
    pos = model.get_cross_embeds(
        vision, vision_atts, text_ids=ids, text_embeds=text, text_atts=atts
    )
    out["fusion_states_pos"] = pos
    out["itm_logits_pos"] = model.itm_head(pos[:, 0])
    masked = model.get_text_embeds(x["masked_text_ids"], atts)
    out["text_embeds_masked"] = masked
    out["fusion_mlm_logits"] = model.fusion_encoder(
        encoder_embeds=masked, attention_mask=atts, encoder_hidden_states=vision,
        encoder_attention_mask=vision_atts, return_dict=True, masked_pos=x["masked_pos"],
        return_logits=True,
    )  # fmt: skip
    out["text_mlm_logits"] = model.text_encoder(
        x["masked_text_ids"], attention_mask=atts, return_dict=True, masked_pos=x["masked_pos"],
        return_logits=True,
    )  # fmt: skip
    region_embeds, _, full = model.get_vision_embeds(
        image, image_atts=x["region_image_atts"], idx_to_group_img=x["idx_to_group_img"]
    )
    out["region_vision_embeds"], out["region_vision_embeds_fullatts"] = region_embeds, full
    bbox = model.predict_bbox(full, ids, atts, text)
    out["bbox_pred"] = bbox
    out["loss_bbox_no_is_image"], out["loss_giou_no_is_image"] = model.get_bbox_loss(
        bbox, x["target_bbox"], is_image=None
    )
    return {k: v.detach().float().contiguous() for k, v in out.items()}


# ---------------------------------------------------------------- gradient routing

#: Parameter groups in the order of ``../shared/golden/gradient_routing.json``.
GROUPS = (
    "vision_encoder.cls_token", "vision_encoder.mask_token", "vision_encoder.patch_embed",
    "vision_encoder.blocks", "vision_encoder.fc_norm",
    "text_encoder.roberta.embeddings", "text_encoder.roberta.encoder", "text_encoder.lm_head",
    "text_encoder.lm_cap_head",
    "fusion_encoder.roberta.embeddings", "fusion_encoder.roberta.encoder",
    "fusion_encoder.lm_head", "fusion_encoder.lm_cap_head",
    "vision_proj", "text_proj", "temp", "itm_head", "bbox_head", "fusion_proj",
)  # fmt: skip


def _group(name: str) -> str:
    found = [g for g in GROUPS if name == g or name.startswith(g + ".")]
    if not found:
        raise ValueError(f"parameter {name!r} is in no gradient-routing group")
    return found[0]


def gradient_routing(model: nn.Module, x: Tensors) -> dict:
    """Per loss alone: the parameter groups / parameters with a non-zero gradient."""
    losses = {
        "itc": lambda: image_step(model, x)["loss_itc"],
        "itm": lambda: image_step(model, x)["loss_itm"],
        "mlm_fusion": lambda: image_step(model, x)["loss_mlm"],
        "mlm_text": lambda: text_step(model, x)["loss_mlm"],
        "mim": lambda: image_step(model, x)["loss_mim"],
        "bbox": lambda: (lambda r: r["loss_bbox"] + r["loss_giou"])(region_step(model, x)),
    }
    named = list(model.named_parameters())  # tied tensors once, under the first name
    present = [g for g in GROUPS if any(_group(n) == g for n, _ in named)]
    aliases = {}
    for names in _tied_names(model):
        for alias in names[1:]:
            aliases[alias] = names[0]
    report = {}
    for loss_name, loss_fn in losses.items():
        for _, p in named:
            p.grad = None
        with determinism(model, x):
            loss_fn().backward()
        hit = [n for n, p in named if p.grad is not None and bool((p.grad != 0).any())]
        groups = [g for g in present if any(_group(n) == g for n in hit)]
        report[loss_name] = {
            "groups_with_nonzero_grad": groups,
            "groups_without_grad": [g for g in present if g not in groups],
            "params_with_nonzero_grad": hit,
            "params_in_touched_groups_with_zero_or_no_grad": [
                n for n, _ in named if _group(n) in groups and n not in hit
            ],
        }
    for _, p in named:
        p.grad = None
    return {
        "note": (
            "official XFM (model_pretrain.py) with default pretraining flags; each loss "
            "back-propagated alone; eval mode; hard negatives fixed to neg_image_idx/neg_text_idx; "
            "MIM mask fixed to image_mask. Tied tensors are reported under their canonical (first "
            "registered) name only, see tied_aliases (alias -> canonical). fusion_proj exists "
            "because vision width != text width and is never used."
        ),
        "tied_aliases": aliases,
        "losses": report,
    }


def _tied_names(model: nn.Module) -> list[list[str]]:
    seen: dict[int, list[str]] = {}
    for k, v in model.named_parameters(remove_duplicate=False):
        seen.setdefault(id(v), []).append(k)
    return [names for names in seen.values() if len(names) > 1]


SET = GoldenSet(
    name="pretrain",
    seed=PRETRAIN_SEED,
    build=build,
    describe=describe,
    make_inputs=make_inputs,
    compute=compute,
    extras=lambda model, x: {"gradient_routing.json": gradient_routing(model, x)},
)

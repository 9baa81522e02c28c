"""Task outputs for ``xfm check-official DIR`` on golden-format task directories.

``xfm check-official`` (xfm-fusion) reads ``config.json``; when it names a ``task`` it calls
:func:`task_outputs`, which builds the xfm task model from the config, imports the official
weights (:func:`xfm.tasks.official.load_official_task`), runs ``inputs.safetensors`` through our
code paths (the fast retrieval evaluation included) and returns every output it can compute,
plus the outputs it leaves out with the reason. The caller compares them with
``outputs.safetensors``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from xfm.tasks.base import get_task
from xfm.tasks.official import load_official_task
from xfm.train.objectives import bbox_losses, hard_negative_weights

__all__ = ["TASK_NAMES", "task_outputs"]

#: ``config.json`` task name -> registered task.
TASK_NAMES: dict[str, str] = {
    "retrieval": "retrieval",
    "nlvr": "nlvr",
    "grounding": "grounding",
    "grounding_bbox": "grounding",
}


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(x.split(max(1, size)))


@torch.no_grad()
def retrieval_outputs(model: nn.Module, inputs: dict[str, torch.Tensor], config: dict) -> dict:
    """Outputs of a golden ``retrieval`` directory."""
    from xfm.tasks.retrieval import retrieval_scores

    out: dict[str, torch.Tensor] = {}
    image, ids, atts = inputs["image"], inputs["text_ids"], inputs["text_atts"]
    k = int(inputs["k_test"])
    used = config.get("official_config_used", {})
    vision = model.encode_image(image)
    text = model.encode_text(ids, atts)
    image_feat, text_feat = model.itc_features(vision, text)
    out.update(vision_embeds=vision, text_embeds=text, image_feat=image_feat, text_feat=text_feat)

    # every pair through the fusion encoder, each image's K/V computed once
    kv = model.fusion_image_kv(vision)
    n_i, n_t = vision.shape[0], text.shape[0]
    cls = []
    for i in range(n_i):
        kv_i = [
            (kk[i : i + 1].expand(n_t, -1, -1, -1), vv[i : i + 1].expand(n_t, -1, -1, -1))
            for kk, vv in kv
        ]
        cls.append(model.fuse(text, atts, image_kv=kv_i)[:, 0])
    fusion_cls = torch.stack(cls)
    out["fusion_cls_all_pairs"] = fusion_cls
    out["itm_logits_all_pairs"] = model.itm_head(fusion_cls)

    # the official evaluation loop, our implementation (batches as the official config's)
    scores = retrieval_scores(
        model,
        _batches(image, int(used.get("batch_size_test", 8))),
        list(
            zip(
                _batches(ids, int(used.get("batch_size_test_text", 8))),
                _batches(atts, int(used.get("batch_size_test_text", 8))),
            )
        ),
        k,
        itm_batch_size=max(2, k + 1),
    )
    out["sims_i2t"], out["sims_t2i"] = scores.sims_i2t, scores.sims_i2t.t()
    out["score_matrix_i2t"], out["score_matrix_t2i"] = scores.score_i2t, scores.score_t2i
    for name, sims, matrix in (
        ("i2t", scores.sims_i2t, scores.score_i2t),
        ("t2i", scores.sims_i2t.t(), scores.score_t2i),
    ):
        top = sims.topk(min(k, sims.shape[1]), dim=1)
        out[f"{name}_topk_idx"] = top.indices
        out[f"{name}_topk_sim"] = top.values
        out[f"{name}_topk_itm_score"] = matrix.gather(1, top.indices)

    # training forward with the fixed hard negatives
    ti, tt = inputs["train_image_idx"].long(), inputs["train_text_idx"].long()
    neg_img, neg_txt = inputs["train_neg_image_idx"].long(), inputs["train_neg_text_idx"].long()
    t_img, t_ids, t_atts = image[ti], ids[tt], atts[tt]
    with torch.enable_grad():
        losses = model(t_img, t_ids, t_atts, ti, negatives=(neg_img, neg_txt))
    out["train_loss_itc"], out["train_loss_itm"] = losses["itc"].detach(), losses["itm"].detach()
    v_tr, t_tr = model.encode_image(t_img), model.encode_text(t_ids, t_atts)
    f_i, f_t = model.itc_features(v_tr, t_tr)
    sim = f_i @ f_t.t() / model.temp
    out["train_sim_i2t"] = sim
    out["train_itm_neg_weights_i2t"] = hard_negative_weights(sim, ti)
    out["train_itm_neg_weights_t2i"] = hard_negative_weights(sim.t(), ti)
    kv_tr = model.fusion_image_kv(v_tr)
    rows_img = torch.cat([torch.arange(len(ti)), neg_img, torch.arange(len(ti))])
    rows_txt = torch.cat([torch.arange(len(ti)), torch.arange(len(ti)), neg_txt])
    fused = model.fuse(
        t_tr[rows_txt],
        t_atts[rows_txt],
        image_kv=[(kk[rows_img], vv[rows_img]) for kk, vv in kv_tr],
    )
    out["train_itm_logits"] = model.itm_logits(fused)
    return out


@torch.no_grad()
def nlvr_outputs(model: nn.Module, inputs: dict[str, torch.Tensor], config: dict) -> dict:
    """Outputs of a golden ``nlvr`` directory."""
    ids, atts = inputs["text_ids"], inputs["text_atts"]
    text, vision, f0, f1 = model.pair_states(inputs["image0"], inputs["image1"], ids, atts)
    logits = model(inputs["image0"], inputs["image1"], ids, atts)
    return {
        "text_embeds": text,
        "vision_embeds": vision,
        "fusion_states_image0": f0,
        "fusion_states_image1": f1,
        "output_cls": torch.cat([f0[:, 0], f1[:, 0]], dim=-1),
        "logits": logits,
        "pred_class": logits.argmax(-1),
        "loss": nn.functional.cross_entropy(logits, inputs["targets"].long()),
    }


@torch.no_grad()
def grounding_outputs(model: nn.Module, inputs: dict[str, torch.Tensor], config: dict) -> dict:
    """Outputs of a golden ``grounding`` (bbox) directory."""
    ids, atts, image = inputs["text_ids"], inputs["text_atts"], inputs["image"]
    text = model.encode_text(ids, atts)
    vision = model.encode_image(image)
    fused = model.fuse(text, atts, vision)
    raw = model.bbox_head(fused[:, 0])
    coord = model(image, ids, atts)
    l1, giou = bbox_losses(coord, inputs["target_bbox"])
    return {
        "text_embeds": text,
        "vision_embeds": vision,
        "fusion_states": fused,
        "bbox_head_logits": raw,
        "output_coord": coord,
        "loss_bbox": l1,
        "loss_giou": giou,
    }


OUTPUTS: dict[str, Callable[[nn.Module, dict[str, torch.Tensor], dict], dict]] = {
    "retrieval": retrieval_outputs,
    "nlvr": nlvr_outputs,
    "grounding": grounding_outputs,
}


#: Golden task name -> ``"module:function"`` computing ``(computed, skipped)`` from
#: ``(config_json, directory)`` (issue 10 tasks, which load the official weights themselves).
OFFICIAL_OUTPUTS: dict[str, str] = {
    "vqa": "xfm.tasks.vqa_model:official_outputs",
    "classification_glue": "xfm.tasks.classification:glue_official_outputs",
    "classification_imagenet": "xfm.tasks.classification:imagenet_official_outputs",
}


def _find_golden_task(golden: str) -> Any:
    """The registered task whose ``golden_names`` include ``golden``."""
    from xfm.core.registry import available, get

    for name in available("task"):
        cls = get("task", name)
        if golden in getattr(cls, "golden_names", ()):
            return get_task(name)
    raise NotImplementedError(
        f"no registered task reproduces golden task {golden!r} (registered: {available('task')}; "
        f"a task declares the golden names it handles in `golden_names`)"
    )


def task_outputs(
    config_json: dict[str, Any], directory: str | Path
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(computed outputs, {output: reason it is not computed})`` of a golden task directory.

    Raises:
        NotImplementedError: the task is not one of this package's (the reason names the
            supported ones).
    """
    golden = str(config_json.get("task"))
    directory = Path(directory)
    # Issue 10 (VQA / classification): these task models have their own importers and output
    # functions ``fn(config_json, directory) -> (computed, skipped)``; see OFFICIAL_OUTPUTS.
    if golden in OFFICIAL_OUTPUTS:
        import importlib

        module, _, attr = OFFICIAL_OUTPUTS[golden].partition(":")
        return getattr(importlib.import_module(module), attr)(config_json, directory)
    inputs = load_file(str(directory / "inputs.safetensors"))
    name = TASK_NAMES.get(golden)
    if name is not None:
        task = get_task(name)
        model = load_official_task(task, directory)
        computed = OUTPUTS[name](model, inputs, config_json)
    else:
        task = _find_golden_task(golden)
        name = task.name
        model = load_official_task(task, directory)
        computed = task.golden_outputs(model, inputs, config_json)
    expected = (
        load_file(str(directory / "outputs.safetensors"))
        if (directory / "outputs.safetensors").is_file()
        else {}
    )
    skipped = {
        k: f"not computed by xfm.tasks for task {name!r}" for k in expected if k not in computed
    }
    return computed, skipped

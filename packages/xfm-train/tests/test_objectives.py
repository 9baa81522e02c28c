"""Objectives against the official X-FM: golden losses and gradient routing for every flag set.

The golden directory holds a tiny model in the official layout, fixed inputs (hard negatives
and MIM masks included) and what the official code computed. ``gradient_routing.json`` lists,
per loss, the official parameters that receive a non-zero gradient (default flags). Our
gradients are mapped back to official names with the official exporter of xfm-fusion.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from xfm.core.attention import use_backend
from xfm.train.data.batches import ImageBatch, ImageTextBatch
from xfm.train.objectives import (
    ITC,
    ITM,
    MIM,
    BatchContext,
    BBox,
    FusionMLM,
    TextMLM,
    bbox_losses,
    golden_batches,
    golden_losses,
    hard_negative_weights,
    itc_loss,
    sample_hard_negatives,
)
from xfm.train.objectives.official import GOLDEN_LOSS_KEYS


# --------------------------------------------------------------------------- golden losses
def test_golden_losses_match_official(golden_model, golden_inputs, golden_outputs) -> None:
    with use_backend("eager"), torch.no_grad():
        got = golden_losses(golden_model, golden_inputs)
    assert set(got) == set(GOLDEN_LOSS_KEYS)
    assert set(GOLDEN_LOSS_KEYS) == {k for k in golden_outputs if "loss" in k}
    for key in GOLDEN_LOSS_KEYS:
        want = golden_outputs[key]
        assert got[key].shape == want.shape, key
        assert abs(float(got[key]) - float(want)) <= 1e-5, (key, float(got[key]), float(want))


def test_golden_losses_sdpa_backend(golden_model, golden_inputs, golden_outputs) -> None:
    """The fast attention backend gives the same losses (training uses it)."""
    with use_backend("sdpa"), torch.no_grad():
        got = golden_losses(golden_model, golden_inputs)
    for key in GOLDEN_LOSS_KEYS:
        assert abs(float(got[key]) - float(golden_outputs[key])) <= 2e-5, key


def test_hard_negative_weights_match_official(golden_model, golden_inputs, golden_outputs) -> None:
    with torch.no_grad():
        vision = golden_model.encode_image(golden_inputs["image"])
        text = golden_model.encode_text(golden_inputs["text_ids"], golden_inputs["text_atts"])
        fi, ft = golden_model.itc_features(vision, text)
        sim = golden_model.similarity(fi, ft)
    torch.testing.assert_close(
        hard_negative_weights(sim.t()), golden_outputs["itm_neg_weights_t2i"], atol=1e-6, rtol=1e-5
    )
    torch.testing.assert_close(
        hard_negative_weights(sim), golden_outputs["itm_neg_weights_i2t"], atol=1e-6, rtol=1e-5
    )


# ------------------------------------------------------------------------- hard negatives
def _features(b: int, e: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    fi = torch.nn.functional.normalize(torch.randn(b, e, generator=g), dim=-1)
    ft = torch.nn.functional.normalize(torch.randn(b, e, generator=g), dim=-1)
    return fi, ft


def test_hard_negatives_deterministic_and_never_positive() -> None:
    fi, ft = _features(16)
    temp = torch.tensor(0.07)
    ids = torch.arange(16) // 2  # pairs of captions share an image
    a = sample_hard_negatives(fi, ft, temp, ids, torch.Generator().manual_seed(3))
    b = sample_hard_negatives(fi, ft, temp, ids, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for _ in range(20):
        neg_img, neg_txt = sample_hard_negatives(fi, ft, temp, ids, None)
        assert (ids[neg_img] != ids).all() and (ids[neg_txt] != ids).all()
    neg_img, _ = sample_hard_negatives(fi, ft, temp, None, None)
    assert (neg_img != torch.arange(16)).all()


def test_hard_negatives_follow_the_itc_softmax() -> None:
    """Empirical frequencies of many draws match softmax(sim)+1e-5 with the diagonal zeroed."""
    fi, ft = _features(5, seed=1)
    temp = torch.tensor(0.5)
    weights = hard_negative_weights(fi @ ft.t() / temp)  # image b over texts
    probs = weights / weights.sum(1, keepdim=True)
    g = torch.Generator().manual_seed(0)
    n = 1000
    counts = torch.zeros(5, 5)
    for _ in range(n):
        _, neg_txt = sample_hard_negatives(fi, ft, temp, None, g)
        counts[torch.arange(5), neg_txt] += 1
    assert (counts.diagonal() == 0).all()
    # 1000 draws: std of a frequency <= 0.016; 5 sigma
    torch.testing.assert_close(counts / n, probs, atol=0.08, rtol=0)


def test_itm_single_pair_batch_is_a_clear_error(golden_model, golden_inputs) -> None:
    batch = ImageTextBatch(
        index=torch.arange(1),
        keys=["a"],
        image=golden_inputs["image"][:1],
        text_ids=golden_inputs["text_ids"][:1],
        text_mask=golden_inputs["text_atts"][:1],
        image_index=torch.arange(1),
    )
    with pytest.raises(ValueError, match="at least 2 pairs"):
        ITM()(BatchContext(golden_model, "image_text", batch))


# ---------------------------------------------------------------------------------- ITC
def test_itc_id_aware_positives() -> None:
    fi, ft = _features(6, seed=2)
    temp = torch.tensor(0.1)
    plain = itc_loss(fi, ft, temp, None, gather=False)
    unique = itc_loss(fi, ft, temp, torch.arange(6), gather=False)
    torch.testing.assert_close(plain, unique)
    ids = torch.tensor([0, 0, 1, 2, 2, 2])
    sim = fi @ ft.t() / temp
    pos = (ids[:, None] == ids[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    want = (
        -(sim.log_softmax(1) * target).sum(1).mean()
        - (sim.t().log_softmax(1) * target).sum(1).mean()
    ) / 2
    torch.testing.assert_close(itc_loss(fi, ft, temp, ids, gather=False), want)


def test_itc_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\[B, E\]"):
        itc_loss(torch.zeros(2, 4), torch.zeros(3, 4), torch.tensor(0.1))


# --------------------------------------------------------------------------------- bbox
def test_bbox_losses_by_hand() -> None:
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.4]])
    target = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.4]])
    l1, giou = bbox_losses(pred, target)
    # row 0: |dw|+|dh| = 0.4; IoU = 0.04/0.16, enclosing box = the union -> GIoU = IoU
    torch.testing.assert_close(l1, torch.tensor(0.4 / 2))
    torch.testing.assert_close(giou, torch.tensor((1 - 0.25) / 2))
    l1, giou = bbox_losses(pred, target, torch.tensor([0, 1]))
    torch.testing.assert_close(l1, torch.tensor(0.4))
    torch.testing.assert_close(giou, torch.tensor(0.75))
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        bbox_losses(pred[:, :3], target[:, :3])


# ----------------------------------------------------------------------- gradient routing
LOSSES = ("itc", "itm", "mlm_fusion", "mlm_text", "mim", "bbox")


def _loss(model, inputs, name: str) -> torch.Tensor:
    negatives = (inputs["neg_image_idx"], inputs["neg_text_idx"])
    pair_batch, text_batch, region_batch = golden_batches(inputs)
    pair = BatchContext(model, "image_text", pair_batch, negatives=negatives)
    if name == "itc":
        return ITC(gather=False, id_aware=False)(pair)["itc"]
    if name == "itm":
        return ITM(id_aware=False)(pair)["itm"]
    if name == "mlm_fusion":
        return FusionMLM()(pair)["fusion_mlm"]
    if name == "mim":
        return MIM()(pair)["mim"]
    if name == "mlm_text":
        return TextMLM()(BatchContext(model, "text", text_batch))["text_mlm"]
    out = BBox()(BatchContext(model, "region", region_batch, negatives=negatives))
    return out["bbox"] + out["giou"]


def official_grads_nonzero(model, loss: torch.Tensor, routing: dict) -> set[str]:
    """Official names (canonical for tied tensors) of the parameters with a non-zero gradient."""
    from xfm.fusion.official import UNUSED_OFFICIAL, to_official

    model.zero_grad(set_to_none=True)
    loss.backward()
    saved = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            saved[name] = p.data
            p.data = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        try:
            official = to_official(model)
        finally:
            for name, p in model.named_parameters():
                p.data = saved[name]
    aliases = routing["tied_aliases"]
    out = set()
    for key, value in official.items():
        if key in aliases or any(re.search(p, key) for p in UNUSED_OFFICIAL):
            continue
        if not value.is_floating_point() or key.endswith(
            ("relative_position_index", "position_ids")
        ):
            continue
        if bool((value != 0).any()):
            out.add(key)
    return out


def _text_encoder_params(routing: dict) -> set[str]:
    return {
        p
        for p in routing["losses"]["itc"]["params_with_nonzero_grad"]
        if p.startswith("text_encoder.roberta.")
    }


def expected_params(routing: dict, loss: str, stop_gradient: bool) -> set[str]:
    """Golden routing (default flags), plus the language encoder where the fusion encoder
    consumes its states when stop gradient is off."""
    want = set(routing["losses"][loss]["params_with_nonzero_grad"])
    if not stop_gradient and loss in ("itm", "mlm_fusion", "bbox"):
        want |= _text_encoder_params(routing)
    return want


def _with_flags(model, stop_gradient: bool, vision_guidance: bool):
    model.config = dataclasses.replace(
        model.config, stop_gradient=stop_gradient, vision_guidance=vision_guidance
    )
    if not vision_guidance:
        model.reset_mim_teacher()
    return model


@pytest.mark.parametrize("loss", LOSSES)
def test_gradient_routing_default_flags_matches_official(
    golden_model, golden_inputs, golden_routing, loss
) -> None:
    assert golden_model.config.stop_gradient and golden_model.config.vision_guidance
    got = official_grads_nonzero(
        golden_model, _loss(golden_model, golden_inputs, loss), golden_routing
    )
    want = expected_params(golden_routing, loss, stop_gradient=True)
    assert got == want, f"{loss}: extra {sorted(got - want)}, missing {sorted(want - got)}"


@pytest.mark.parametrize(
    ("stop_gradient", "vision_guidance"), [(False, True), (True, False), (False, False)]
)
def test_gradient_routing_flag_combinations(
    golden_model, golden_inputs, golden_routing, stop_gradient, vision_guidance
) -> None:
    model = _with_flags(golden_model, stop_gradient, vision_guidance)
    for loss in LOSSES:
        got = official_grads_nonzero(model, _loss(model, golden_inputs, loss), golden_routing)
        want = expected_params(golden_routing, loss, stop_gradient)
        assert got == want, f"{loss}: extra {sorted(got - want)}, missing {sorted(want - got)}"
    # the frozen MIM teacher never receives a gradient
    if not vision_guidance:
        teacher = model._mim_teacher[0]
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_text_encoder_gets_vl_gradient_only_without_stop_gradient(
    golden_model, golden_inputs
) -> None:
    """Stop gradient changes the gradient routing and nothing else: the losses are equal."""
    with torch.no_grad():
        on = golden_losses(golden_model, golden_inputs)
        off = golden_losses(_with_flags(golden_model, False, True), golden_inputs)
    for key in on:
        torch.testing.assert_close(on[key], off[key], atol=0, rtol=0)


def test_vision_guidance_target_is_the_live_encoder(golden_model, golden_inputs) -> None:
    """With guidance the MIM target follows the vision encoder being trained (detached);
    without it the target is a frozen snapshot that vision-language training never moves."""
    image, mask = golden_inputs["image"], golden_inputs["image_mask"]

    def target(model):
        batch = ImageBatch(index=torch.arange(4), keys=list("abcd"), image=image, image_mask=mask)
        return BatchContext(model, "image", batch).mim_target()

    guided = target(golden_model)
    assert not guided.requires_grad
    torch.testing.assert_close(guided, golden_model.encode_image(image).detach())
    teacher_model = _with_flags(golden_model, True, False)
    frozen = target(teacher_model)
    torch.testing.assert_close(frozen, guided)  # snapshot of the same weights
    with torch.no_grad():
        for p in teacher_model.vision_encoder.parameters():
            p.add_(0.01)
    assert not torch.allclose(teacher_model.encode_image(image), guided)
    torch.testing.assert_close(target(teacher_model), frozen)
    teacher_model.config = dataclasses.replace(teacher_model.config, vision_guidance=True)
    assert not torch.allclose(target(teacher_model), frozen)


# ------------------------------------------------------------------ the typed batch context
def test_context_wraps_the_typed_batch(golden_model, golden_inputs) -> None:
    pair, text, _ = golden_batches(golden_inputs)
    ctx = BatchContext(golden_model, "image_text", pair)
    assert ctx.batch is pair
    assert ctx.vision() is ctx.vision()  # each encoder pass runs once per batch
    assert ctx.sample_ids is pair.image_index
    with pytest.raises(TypeError, match="needs a ImageTextBatch; got TextBatch"):
        BatchContext(golden_model, "image_text", text)
    with pytest.raises(ValueError, match="unknown source 'video'"):
        BatchContext(golden_model, "video", pair)


def test_objectives_take_only_the_context() -> None:
    """Objectives take only the context: every model pass of a batch goes through it."""
    import inspect

    from xfm.core.registry import available, create

    names = available("objective")
    assert {"itc", "itm", "fusion_mlm", "text_mlm", "mim", "bbox"} <= set(names)
    for name in names:
        objective = create("objective", name)
        assert list(inspect.signature(objective.__call__).parameters) == ["ctx"], name


# ----------------------------------------------------- declared stages and loss names
def test_objectives_declare_their_stage_and_loss_names() -> None:
    from xfm.core.registry import create
    from xfm.train.objectives import Stage

    declared = {
        name: (create("objective", name).stage, create("objective", name).losses)
        for name in ("itc", "itm", "fusion_mlm", "text_mlm", "mim", "bbox")
    }
    assert declared == {
        "itc": (Stage.MAIN, ("itc",)),
        "itm": (Stage.MAIN, ("itm",)),
        "fusion_mlm": (Stage.MAIN, ("fusion_mlm",)),
        "text_mlm": (Stage.MAIN, ("text_mlm",)),
        "mim": (Stage.REUSE, ("mim",)),  # after the pass whose output it reuses, detached
        "bbox": (Stage.MAIN, ("bbox", "giou")),
    }
    assert Stage.MAIN < Stage.REUSE


def test_build_objectives_orders_by_declared_stage() -> None:
    from xfm.train.loss import PretrainLoss, build_objectives

    built = build_objectives({"mim": 1.0, "itc": 1.0, "itm": 0.5}, {}, "image_text")
    assert [item.name for item in built] == ["itc", "itm", "mim"]
    assert built[1].weight == 0.5
    region = build_objectives({"bbox": 1.0, "itc": 1.0}, {}, "region")
    loss = PretrainLoss(torch.nn.Linear(1, 1), {"image_text": built, "region": region})
    assert loss.loss_names() == [
        "image_text/itc",
        "image_text/itm",
        "image_text/mim",
        "region/bbox",
        "region/giou",
        "region/itc",
    ]


class _Probe:
    """A third-party objective: its stage and loss names come from its class attributes."""

    @staticmethod
    def make(stage, losses, returns=None):
        from xfm.train.objectives import Objective

        class Probe(Objective):
            name = "probe"
            sources = ("image",)

            def __call__(self, ctx):
                image = ctx.vision()  # a pass through the context
                return {k: image.mean() * (i + 1) for i, k in enumerate(returns or losses)}

        Probe.stage, Probe.losses = stage, losses
        return Probe()


def test_stages_group_by_declared_stage_for_any_objective(golden_model, golden_inputs) -> None:
    from xfm.train.loss import PretrainLoss
    from xfm.train.objectives import Stage

    batch = ImageBatch(
        index=torch.arange(4),
        keys=list("abcd"),
        image=golden_inputs["image"],
        image_mask=golden_inputs["image_mask"],
    )
    late = _Probe.make(Stage.REUSE, ("late",))
    early = _Probe.make(Stage.MAIN, ("a", "b"))
    loss = PretrainLoss(golden_model, {"image": [("late", 1.0, late), ("early", 2.0, early)]})
    assert loss.loss_names() == ["image/a", "image/b", "image/late"]
    stages = list(loss.stages({"image": batch}))
    assert [(s.source, s.stage, sorted(s.parts)) for s in stages] == [
        ("image", Stage.MAIN, ["image/a", "image/b"]),
        ("image", Stage.REUSE, ["image/late"]),
    ]
    with torch.no_grad():
        mean = float(golden_model.encode_image(golden_inputs["image"]).mean())
    # weighted stage sums: 2 * (mean + 2 * mean), then 1 * mean
    assert abs(float(stages[0].loss.detach()) - 6 * mean) < 1e-6
    assert abs(float(stages[1].loss.detach()) - mean) < 1e-6

    wrong = _Probe.make(Stage.MAIN, ("a",), returns=("a", "extra"))
    with pytest.raises(ValueError, match=r"objective 'wrong' returned losses \['a', 'extra'\]"):
        PretrainLoss(golden_model, {"image": [("wrong", 1.0, wrong)]})({"image": batch})
    with pytest.raises(ValueError, match="no objective ran for sources"):
        next(loss.stages({"text": batch}))


# ------------------------------------------------------------ staged vs single backward
def _all_source_batches(x: dict) -> dict:
    """One batch of every source from the golden inputs, in the data pipeline's layout."""
    from xfm.train.data.batches import RegionBatch, TextBatch

    b = x["text_ids"].shape[0]
    common = {"index": torch.arange(b), "keys": [str(i) for i in range(b)]}
    caption = {
        "image": x["image"],
        "image_mask": x["image_mask"],
        "text_ids": x["text_ids"],
        "text_mask": x["text_atts"],
        "masked_ids": x["masked_text_ids"],
        "masked_pos": x["masked_pos"],
        "masked_labels": x["masked_ids"],
    }
    dense = torch.full_like(x["masked_text_ids"], -100)  # dense text MLM labels [B, T]
    for row in range(b):
        for pos, label in zip(x["masked_pos"][row], x["masked_ids"][row], strict=True):
            if label != -100:
                dense[row, pos] = label
    return {
        "text": TextBatch(
            **common,
            input_ids=x["text_ids"],
            attention_mask=x["text_atts"],
            mlm_input_ids=x["masked_text_ids"],
            mlm_labels=dense,
        ),
        "image_text": ImageTextBatch(**common, **caption, image_index=torch.tensor([0, 0, 1, 2])),
        "region": RegionBatch(
            **common,
            **caption,
            box=x["target_bbox"],
            region_patch_mask=x["region_image_atts"][:, 1:].bool(),
            image_index=torch.arange(b),
        ),
        "image": ImageBatch(**common, image=x["image"], image_mask=x["image_mask"]),
    }


def test_staged_backward_gives_the_gradients_of_the_total(golden_model, golden_inputs) -> None:
    """The trainer's single-process mode (the caller back-propagates each yielded stage) gives
    the gradients of one backward of :meth:`PretrainLoss.forward`'s total, on every source."""
    from xfm.train.config import default_objectives
    from xfm.train.loss import PretrainLoss, build_objectives
    from xfm.train.objectives import Stage

    golden_model.eval()  # deterministic (no dropout): both runs see the same graph
    batches = _all_source_batches(golden_inputs)
    objectives = {s: build_objectives(default_objectives(s), {}, s) for s in batches}
    weights = {"text": 0.5, "region": 2.0}
    results = []
    for staged in (False, True):
        golden_model.zero_grad(set_to_none=True)
        loss = PretrainLoss(golden_model, objectives, weights, torch.Generator().manual_seed(0))
        if staged:
            order, total, parts = [], torch.zeros(()), {}
            for stage in loss.stages(batches):
                order.append((stage.source, stage.stage))
                if not order[1:]:  # the loss module never back-propagates itself
                    assert all(p.grad is None for p in golden_model.parameters())
                assert stage.loss.requires_grad
                stage.loss.backward()
                with pytest.raises(RuntimeError, match="second time"):
                    stage.loss.backward()  # its graph was freed before the next stage ran
                total = total + stage.loss.detach()
                parts.update(stage.parts)
            assert order == [
                ("text", Stage.MAIN),
                ("image_text", Stage.MAIN),
                ("image_text", Stage.REUSE),
                ("region", Stage.MAIN),
                ("image", Stage.REUSE),
            ]
        else:
            total, parts = loss(batches)
            total.backward()
        grads = {
            n: p.grad.clone() for n, p in golden_model.named_parameters() if p.grad is not None
        }
        results.append((total.detach(), parts, grads))
    (total0, parts0, grads0), (total1, parts1, grads1) = results
    assert list(parts0) == list(parts1) == loss.loss_names()
    for key in parts0:
        torch.testing.assert_close(parts1[key], parts0[key], atol=0, rtol=0)
    weighted = sum(
        parts0[f"{s}/{k}"] * w * weights.get(s, 1.0)
        for s, objs in objectives.items()
        for name, w, obj in objs
        for k in obj.losses
    )
    torch.testing.assert_close(total0, weighted, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(total1, total0, atol=1e-5, rtol=1e-6)
    assert grads0.keys() == grads1.keys()
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-5)


def test_hard_negative_uniform_mix() -> None:
    """m = 0 is the official weighting, unchanged; m > 0 mixes in the uniform distribution over
    the admissible negatives (same-id columns stay at zero)."""
    from xfm.train.objectives import hard_negative_weights

    torch.manual_seed(0)
    sim = torch.randn(5, 5) * 4
    ids = torch.tensor([0, 1, 1, 2, 3])
    official = hard_negative_weights(sim, ids)
    assert torch.equal(hard_negative_weights(sim, ids, 0.0), official)
    admissible = ids[:, None] != ids[None, :]
    p = torch.softmax(sim.double(), 1) + 1e-5
    p = torch.where(admissible, p, torch.zeros_like(p))
    p = p / p.sum(1, keepdim=True)
    u = admissible.double() / admissible.double().sum(1, keepdim=True)
    for m in (0.25, 1.0):
        mixed = hard_negative_weights(sim, ids, m).double()
        torch.testing.assert_close(mixed, (1 - m) * p + m * u, rtol=1e-6, atol=1e-7)
        assert bool((mixed[~admissible] == 0).all())
    with pytest.raises(ValueError, match="uniform_mix"):
        hard_negative_weights(sim, ids, 1.5)

"""Which parameters each forward path trains, with the stop-gradient and vision-guidance flags.

With both flags on, the set of parameters that receive a non-zero gradient through each path
must equal the official one in ``gradient_routing.json`` (reported under official names, tied
tensors under their canonical name). Each path ends in a generic scalar of its output (a sum of
squares): which parameters get gradient depends on the graph, not on the loss function.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from xfm.fusion.model import XFM
from xfm.fusion.official import _export_mapper, from_official, xfm_config_from_golden

Path_ = Callable[[XFM, dict[str, torch.Tensor]], torch.Tensor]


def _sq(t: torch.Tensor) -> torch.Tensor:
    return (t.float() ** 2).sum()


def itc(m: XFM, x: dict) -> torch.Tensor:
    image_feat, text_feat = m.itc_features(
        m.encode_image(x["image"]), m.encode_text(x["text_ids"], x["text_atts"])
    )
    return _sq(m.similarity(image_feat, text_feat))


def itm(m: XFM, x: dict) -> torch.Tensor:
    vision = m.encode_image(x["image"])
    text = m.encode_text(x["text_ids"], x["text_atts"])
    kv = m.fusion_image_kv(vision)
    neg = x["neg_image_idx"]
    pos = m.fuse(text, x["text_atts"], image_kv=kv)
    negative = m.fuse(text, x["text_atts"], image_kv=[(k[neg], v[neg]) for k, v in kv])
    return _sq(m.itm_logits(torch.cat([pos, negative])))


def mlm_fusion(m: XFM, x: dict) -> torch.Tensor:
    vision = m.encode_image(x["image"])
    text = m.encode_text(x["masked_text_ids"], x["text_atts"])
    return _sq(m.fusion_mlm_logits(m.fuse(text, x["text_atts"], vision), x["masked_pos"]))


def mlm_text(m: XFM, x: dict) -> torch.Tensor:
    text = m.encode_text(x["masked_text_ids"], x["text_atts"])
    return _sq(m.text_mlm_logits(text, x["masked_pos"]))


def mim(m: XFM, x: dict) -> torch.Tensor:
    vision = m.encode_image(x["image"])
    masked = m.encode_masked_image(x["image"], x["image_mask"])
    return _sq(masked - m.mim_target(x["image"], vision))


def bbox(m: XFM, x: dict) -> torch.Tensor:
    vision = m.encode_image(x["image"])[x["idx_to_group_img"]]
    text = m.encode_text(x["text_ids"], x["text_atts"])
    return _sq(m.predict_bbox(m.fuse(text, x["text_atts"], vision)))


PATHS: dict[str, Path_] = {
    "itc": itc,
    "itm": itm,
    "mlm_fusion": mlm_fusion,
    "mlm_text": mlm_text,
    "mim": mim,
    "bbox": bbox,
}


def _official_names(model: XFM) -> dict[str, str]:
    """our parameter name -> official name (canonical for tied tensors)."""
    mapper = _export_mapper(model, "text_encoder.roberta.")
    names = {}
    for ours, _ in model.named_parameters():  # tied tensors once, under the first name
        mapped = mapper.apply({ours: torch.zeros(())}).state
        (official,) = mapped
        names[ours] = official
    return names


def _touched(model: XFM, path: Path_, inputs: dict) -> set[str]:
    model.zero_grad(set_to_none=True)
    path(model, inputs).backward()
    names = _official_names(model)
    return {
        names[n] for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.any())
    }


@pytest.fixture()
def model(golden_state, golden_config):
    return from_official(golden_state, xfm_config_from_golden(golden_config)).eval()


@pytest.mark.parametrize("loss", sorted(PATHS))
def test_default_flags_match_official_routing(model, golden_inputs, golden_routing, loss):
    expected = set(golden_routing["losses"][loss]["params_with_nonzero_grad"])
    got = _touched(model, PATHS[loss], golden_inputs)
    assert sorted(got - expected) == [] and sorted(expected - got) == []


@pytest.mark.parametrize("loss", ["itm", "mlm_fusion", "bbox"])
def test_without_stop_gradient_the_text_encoder_learns_from_fusion(
    golden_state, golden_config, golden_inputs, loss
):
    cfg = xfm_config_from_golden(golden_config)
    on = from_official(golden_state, cfg).eval()
    off = from_official(golden_state, cfg, stop_gradient=False).eval()
    text_on = {n for n in _touched(on, PATHS[loss], golden_inputs) if n.startswith("text_encoder.")}
    text_off = {
        n for n in _touched(off, PATHS[loss], golden_inputs) if n.startswith("text_encoder.")
    }
    assert text_on == set()
    assert any(n.startswith("text_encoder.roberta.encoder.") for n in text_off)
    # ITC and the text MLM are unaffected by the flag
    for other in ("itc", "mlm_text"):
        assert _touched(on, PATHS[other], golden_inputs) == _touched(
            off, PATHS[other], golden_inputs
        )


def test_vision_guidance_target_is_the_models_own_detached_output(model, golden_inputs):
    image = golden_inputs["image"]
    vision = model.encode_image(image)
    target = model.mim_target(image, vision)
    assert not target.requires_grad and torch.equal(target, vision.detach())


def test_without_vision_guidance_the_target_is_a_frozen_teacher(
    golden_state, golden_config, golden_inputs
):
    cfg = xfm_config_from_golden(golden_config)
    model = from_official(golden_state, cfg, vision_guidance=False).eval()
    image = golden_inputs["image"]
    before = model.mim_target(image, model.encode_image(image))
    torch.testing.assert_close(before, model.encode_image(image).detach(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # vision-language training moves the encoder ...
        model.vision_encoder.fc_norm.bias.add_(0.5)
    vision = model.encode_image(image)
    after = model.mim_target(image, vision)
    assert torch.equal(after, before)  # ... but not the teacher
    assert not torch.equal(after, vision.detach())
    # the teacher is not a parameter of the model and gets no gradient
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in from_official(golden_state, cfg).parameters())
    touched = _touched(model, mim, golden_inputs)
    assert "vision_encoder.mask_token" in touched

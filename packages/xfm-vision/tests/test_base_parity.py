"""Real base configurations against timm (random init, CPU, eval), at 224 and at 384.

Each model pair is built once per module (building and initialising a base model dominates the
time): the tower is checked at 224px, then moved to 384px and checked against timm's own
resize (loaded into ours, so both sides compute with the same resized weights).
"""

from __future__ import annotations

import pytest
import timm
import torch

from xfm.core.attention import runnable_backends, use_backend
from xfm.vision import BEiTv2, ViT, load_timm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning:timm.layers.interpolate"),
]
BACKENDS = runnable_backends("cpu")


def timm_random(name: str, randomize, seed: int) -> torch.nn.Module:
    """A timm model with random weights, built on the meta device (skips timm's slow init:
    ``randomize`` overwrites every parameter) with its non-persistent buffers recomputed."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
    return randomize(model, seed=seed).eval()


def _images(size: int, seed: int) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _check_all_backends(ours: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = ref.forward_features(x)
        for backend in BACKENDS:
            with use_backend(backend):
                got = ours(x)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=backend)


@pytest.fixture(scope="module")
def beitv2_base(randomize) -> tuple[torch.nn.Module, BEiTv2]:
    return timm_random("beitv2_base_patch16_224", randomize, 31), BEiTv2(output="cls").eval()


def test_beitv2_base_224_then_384(beitv2_base):
    ref, ours = beitv2_base
    report = load_timm(ours, ref)
    assert report.ok and report.ignored_missing == ["mask_token"]
    assert ours.blocks[0].rel_pos.table.shape == (732, 12)
    _check_all_backends(ours, ref, _images(224, 32))

    # Fine-tuning at 384 from the 224 weights: set_image_size (BEiT resize of every block's
    # table) gives the same tower as loading the 224 checkpoint into a 384 tower.
    state224 = {k: v.clone() for k, v in ref.state_dict().items()}
    ours.set_image_size(384)
    resized = {k: v.clone() for k, v in ours.state_dict().items()}
    assert resized["blocks.11.rel_pos.table"].shape == (2212, 12)
    load_timm(ours, state224)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, resized[k]), k

    # Parity at 384 with timm's own resize of the tables, loaded into ours.
    ref.set_input_size(img_size=384)
    assert load_timm(ours, ref).ok
    _check_all_backends(ours, ref, _images(384, 33))


def test_beit_v1_base_224(randomize, beitv2_base):
    """timm's ``beit_base_patch16_224`` (BEiT v1 layout, LayerScale 0.1) into the same tower."""
    ref = timm_random("beit_base_patch16_224", randomize, 34)
    ours = beitv2_base[1]
    ours.set_image_size(224)  # the tower may have been moved to 384 by the test above
    assert load_timm(ours, ref).ok
    _check_all_backends(ours, ref, _images(224, 35))


def test_vit_base_224_then_384(randomize):
    ref = timm_random("vit_base_patch16_224", randomize, 36)
    ours = ViT().eval()
    assert load_timm(ours, ref).ok
    _check_all_backends(ours, ref, _images(224, 37))
    ref.set_input_size(img_size=384)  # timm resamples pos_embed
    ours.set_image_size(384)
    assert load_timm(ours, ref).ok
    _check_all_backends(ours, ref, _images(384, 38))

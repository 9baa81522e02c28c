"""``xfm check-official DIR``: reproduce the official X-FM outputs stored in a golden directory.

A golden directory holds ``config.json`` (dimensions of the official model), ``model.safetensors``
(official parameter names), ``inputs.safetensors`` and ``outputs.safetensors`` (what the official
code computed for those inputs). This command builds our model from the config, loads the weights
through the official importer, runs the inputs and compares every output tensor. It prints one
line per tensor and exits non-zero when any differs by more than ``atol + rtol * |official|``,
or when an output is left unchecked without a stated reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from xfm.core.attention import use_backend
from xfm.core.checkpoint import CheckpointError
from xfm.core.cli import Command
from xfm.fusion.model import XFM
from xfm.fusion.official import from_official, xfm_config_from_golden

#: Loss outputs of a pretraining golden directory: computed by xfm-train's objectives when that
#: package is installed, otherwise reported as skipped with the reason.
LOSS_OUTPUTS: tuple[str, ...] = (
    "loss_itc",
    "loss_itm",
    "loss_mim",
    "loss_mlm",
    "loss_text_mlm",
    "loss_bbox",
    "loss_giou",
    "loss_bbox_no_is_image",
    "loss_giou_no_is_image",
    "region_loss_itc",
    "region_loss_itm",
    "region_loss_mim",
    "region_loss_mlm",
)


@dataclass
class Comparison:
    """One output tensor: ``status`` is ``ok``, ``FAIL`` or ``skipped`` (with ``reason``)."""

    name: str
    status: str
    max_abs_diff: float | None = None
    reason: str = ""


def hard_negative_weights(sim: torch.Tensor) -> torch.Tensor:
    """Official ITM sampling weights: ``softmax(sim, 1) + 1e-5`` with the diagonal zeroed."""
    weights = torch.softmax(sim.float(), dim=1) + 1e-5
    return weights.fill_diagonal_(0.0)


@torch.no_grad()
def pretrain_outputs(model: XFM, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every output of the official pretraining model that the model alone can compute."""
    model.clamp_temp()
    image, ids, atts = inputs["image"], inputs["text_ids"], inputs["text_atts"]
    out: dict[str, torch.Tensor] = {}
    vision = model.encode_image(image)
    out["vision_embeds"] = vision
    out["vision_embeds_masked"] = model.encode_masked_image(image, inputs["image_mask"])
    text = model.encode_text(ids, atts)
    out["text_embeds"], out["text_cls"] = text, text[:, 0]
    image_feat, text_feat = model.itc_features(vision, text)
    out["image_feat"], out["text_feat"] = image_feat, text_feat
    sim_i2t = model.similarity(image_feat, text_feat)
    out["sim_i2t"] = sim_i2t
    out["itm_neg_weights_t2i"] = hard_negative_weights(sim_i2t.t())
    out["itm_neg_weights_i2t"] = hard_negative_weights(sim_i2t)

    kv = model.fusion_image_kv(vision)  # each image's cross-attention K/V, computed once
    pos = model.fuse(text, atts, image_kv=kv)
    out["fusion_states_pos"] = pos
    out["itm_logits_pos"] = model.itm_logits(pos)
    neg_img, neg_txt = inputs["neg_image_idx"].long(), inputs["neg_text_idx"].long()
    neg_i = model.fuse(text, atts, image_kv=[(k[neg_img], v[neg_img]) for k, v in kv])
    neg_t = model.fuse(text[neg_txt], atts[neg_txt], image_kv=kv)
    out["itm_logits_all"] = model.itm_logits(torch.cat([pos, neg_i, neg_t]))

    masked = model.encode_text(inputs["masked_text_ids"], atts)
    out["text_embeds_masked"] = masked
    positions = inputs["masked_pos"]
    out["fusion_mlm_logits"] = model.fusion_mlm_logits(
        model.fuse(masked, atts, image_kv=kv), positions
    )
    out["text_mlm_logits"] = model.text_mlm_logits(masked, positions)

    group = inputs["idx_to_group_img"].long()
    region_atts = inputs["region_image_atts"]
    out["region_vision_embeds"] = model.region_vision_states(vision, group, region_atts)
    full = vision[group]
    out["region_vision_embeds_fullatts"] = full
    out["bbox_pred"] = model.predict_bbox(model.fuse(text, atts, full))
    return out


def _pretrain_check(
    directory: Path, config: dict
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    model = from_official(directory / "model.safetensors", config=xfm_config_from_golden(config))
    model.eval()
    inputs = load_file(str(directory / "inputs.safetensors"))
    computed = pretrain_outputs(model, inputs)
    try:
        from xfm.train.objectives.official import golden_losses
    except ImportError as err:  # xfm-train is optional for this package
        reason = f"loss: needs xfm-train's objectives ({err})"
        return computed, {name: reason for name in LOSS_OUTPUTS}
    with torch.no_grad():
        computed.update(golden_losses(model, inputs))
    return computed, {}


def _task_check(directory: Path, config: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        from xfm.tasks.check_official import task_outputs
    except ImportError as err:
        raise NotImplementedError(
            f"{directory}: task {config['task']!r} needs the xfm-tasks package ({err})"
        ) from err
    return task_outputs(config, directory)


def compare(
    computed: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    atol: float,
    rtol: float,
    skipped: dict[str, str],
) -> list[Comparison]:
    """Compare each expected tensor with ours (integers exactly)."""
    results = []
    for name in sorted(expected):
        want = expected[name]
        if name not in computed:
            reason = skipped.get(name, "")
            status = "skipped" if reason else "FAIL"
            results.append(
                Comparison(name, status, None, reason or "not computed, no reason given")
            )
            continue
        got = computed[name].detach().to(want.dtype)
        if got.shape != want.shape:
            results.append(
                Comparison(name, "FAIL", None, f"shape {tuple(got.shape)} != {tuple(want.shape)}")
            )
            continue
        if not want.is_floating_point():
            diff = float((got != want).sum())
            ok = diff == 0
            results.append(Comparison(name, "ok" if ok else "FAIL", diff, "integers: exact"))
            continue
        err = (got.double() - want.double()).abs()
        bound = atol + rtol * want.double().abs()
        ok = bool((err <= bound).all()) and bool(torch.isfinite(got).all())
        results.append(
            Comparison(name, "ok" if ok else "FAIL", float(err.max()) if err.numel() else 0.0)
        )
    for name in sorted(set(computed) - set(expected)):
        results.append(
            Comparison(name, "skipped", None, "computed, but not in outputs.safetensors")
        )
    return results


def check_official(
    directory: str | Path, atol: float = 1e-5, rtol: float = 1e-4, backend: str = "eager"
) -> list[Comparison]:
    """Run the official-parity check on a golden directory; returns one entry per tensor."""
    directory = Path(directory)
    missing = [
        f
        for f in ("config.json", "model.safetensors", "inputs.safetensors", "outputs.safetensors")
        if not (directory / f).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{directory} is not a golden directory: missing {missing}")
    cfg = json.loads((directory / "config.json").read_text())
    task = cfg.get("task", "pretrain")
    with use_backend(backend):
        if task == "pretrain":
            computed, skipped = _pretrain_check(directory, cfg)
        else:
            computed, skipped = _task_check(directory, cfg)
    expected = load_file(str(directory / "outputs.safetensors"))
    return compare(computed, expected, atol, rtol, skipped)


class CheckOfficialCommand(Command):
    """``xfm check-official DIR``."""

    help = "reproduce the official X-FM outputs of a golden directory"
    description = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "directory", help="golden directory (config.json, model/inputs/outputs.safetensors)"
        )
        parser.add_argument(
            "--atol", type=float, default=1e-5, help="absolute tolerance (default: %(default)s)"
        )
        parser.add_argument(
            "--rtol", type=float, default=1e-4, help="relative tolerance (default: %(default)s)"
        )
        parser.add_argument(
            "--backend",
            default="eager",
            choices=["eager", "sdpa", "xformers", "auto"],
            help="attention backend (default: eager)",
        )

    def run(self, args: argparse.Namespace) -> int:
        try:
            results = check_official(args.directory, args.atol, args.rtol, args.backend)
        except (FileNotFoundError, NotImplementedError, ValueError, CheckpointError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        width = max(len(r.name) for r in results)
        for r in results:
            diff = "" if r.max_abs_diff is None else f"max|diff| = {r.max_abs_diff:.3e}"
            note = f"  ({r.reason})" if r.reason else ""
            print(f"{r.status:<7} {r.name:<{width}}  {diff}{note}")
        failed = [r.name for r in results if r.status == "FAIL"]
        checked = sum(r.status == "ok" for r in results)
        skipped = sum(r.status == "skipped" for r in results)
        print(
            f"{checked} passed, {len(failed)} failed, {skipped} skipped (atol={args.atol}, rtol={args.rtol})"
        )
        return 1 if failed else 0

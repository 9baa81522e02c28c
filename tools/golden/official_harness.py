"""Build and drive the OFFICIAL X-FM models (run from their source, never copied) for golden sets.

Everything here is harness: putting the official code on ``sys.path``, the local RoBERTa / BEiT
json files the official constructors read, import stubs, the re-randomisation of every parameter
(the recipe of ``../shared/golden/README.md``), the determinism patches (fixed MIM masks, fixed
hard negatives) and writing safetensors files. No function changes the official math.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

#: Official commit the patched copy under ``--official`` comes from.
OFFICIAL_COMMIT = "62f5cf7"
#: Placeholder written into ``config.json`` for the temporary RoBERTa config directory.
TEXT_DIR_NOTE = "<local dir with config.json (text_config_json)>"


def add_official_to_path(official_dir: str | Path) -> None:
    """Make ``import models`` / ``import utils`` resolve to the official code in ``official_dir``.

    Also installs the harness stub ``dataset`` module (``models/model_generation.py`` imports
    ``dataset.build_tokenizer`` at module level; the golden sets never tokenise).
    """
    path = str(Path(official_dir).resolve())
    if not (Path(path) / "models" / "xfm.py").is_file():
        raise FileNotFoundError(f"{path} does not hold the official X-FM code (models/xfm.py)")
    if path not in sys.path:
        sys.path.insert(0, path)
    if "dataset" not in sys.modules:
        stub = types.ModuleType("dataset")

        def build_tokenizer(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("harness stub: the golden sets use stored token ids")

        stub.build_tokenizer = build_tokenizer  # type: ignore[attr-defined]
        sys.modules["dataset"] = stub
    warnings.filterwarnings("ignore")


def roberta_json(vocab: int, width: int, layers: int, heads: int, ffn: int, max_pos: int) -> dict:
    """The RoBERTa ``config.json`` given to the official constructors (roberta-base keys)."""
    return {
        "architectures": ["RobertaForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": width,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": max_pos,
        "model_type": "roberta",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "type_vocab_size": 1,
        "vocab_size": vocab,
    }


@contextlib.contextmanager
def local_config_files(text_json: Mapping[str, Any], vision_json: Mapping[str, Any]) -> Iterator:
    """Write the two json files the official code reads; yields ``(text_dir, vision_path)``.

    The official code dispatches on substrings: the text directory name contains ``roberta`` and
    the vision json name contains ``base``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        text_dir = os.path.join(tmp, "roberta-local")
        os.makedirs(text_dir)
        with open(os.path.join(text_dir, "config.json"), "w") as f:
            json.dump(dict(text_json), f)
        vision_path = os.path.join(tmp, "config_beit2_base_local.json")
        with open(vision_path, "w") as f:
            json.dump(dict(vision_json), f)
        yield text_dir, vision_path


def _force_no_vision_checkpoint() -> None:
    """``XFMForClassification`` asks to load the BEiT-v2 checkpoint: build it without."""
    import models.xfm as xfm_module

    original = xfm_module.build_vision_encoder
    if getattr(original, "_golden_harness", False):
        return

    def build_vision_encoder(config: dict, load_params: bool = False) -> Any:
        return original(config, load_params=False)

    build_vision_encoder._golden_harness = True  # type: ignore[attr-defined]
    xfm_module.build_vision_encoder = build_vision_encoder


def build_official(
    factory: Callable[[dict], nn.Module],
    official_config: Mapping[str, Any],
    text_json: Mapping[str, Any],
    seed: int,
) -> nn.Module:
    """``factory(config)`` after ``torch.manual_seed(seed)`` with the local json files, in eval mode.

    ``official_config['vision_config']`` is the vision json dict; ``text_encoder`` is filled in.
    """
    _force_no_vision_checkpoint()
    cfg = dict(official_config)
    with local_config_files(text_json, cfg["vision_config"]) as (text_dir, vision_path):
        cfg["vision_config"], cfg["text_encoder"] = vision_path, text_dir
        torch.manual_seed(seed)
        with contextlib.redirect_stdout(io.StringIO()):
            model = factory(cfg)
    return model.eval()


def _owners(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    owners: dict[int, tuple[nn.Module, str]] = {}
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), (module, pname))
    return owners


@torch.no_grad()
def rerandomise(model: nn.Module, seed: int) -> None:
    """Re-draw every parameter (``named_parameters()`` order, tied tensors once) from one generator.

    Linear/Conv weights N(0,1)/sqrt(fan_in); LayerNorm weight 1+0.2N, bias 0.1N; embeddings 0.2N;
    BEiT ``gamma_1/2`` U(0.05, 0.55); ``relative_position_bias_table`` 0.5N; ``cls_token`` /
    ``mask_token`` 0.5N; ``temp`` = 0.05; every other bias 0.1N. Buffers stay official.
    """
    g = torch.Generator().manual_seed(seed)
    owners = _owners(model)

    def normal(p: torch.Tensor) -> torch.Tensor:
        return torch.randn(p.shape, generator=g, dtype=torch.float32)

    for name, p in model.named_parameters():
        module, pname = owners[id(p)]
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.LayerNorm):
            new = 1.0 + 0.2 * normal(p) if pname == "weight" else 0.1 * normal(p)
        elif isinstance(module, nn.Embedding):
            new = 0.2 * normal(p)
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and pname == "weight":
            new = normal(p) / math.sqrt(p[0].numel())
        elif leaf in ("gamma_1", "gamma_2"):
            new = 0.05 + 0.5 * torch.rand(p.shape, generator=g)
        elif leaf == "relative_position_bias_table" or leaf in ("cls_token", "mask_token"):
            new = 0.5 * normal(p)
        elif name == "temp":
            new = torch.full(p.shape, 0.05)
        elif leaf.endswith("bias"):
            new = 0.1 * normal(p)
        else:
            raise ValueError(f"no re-randomisation rule for parameter {name!r}")
        p.copy_(new)


class FixedMasks:
    """Stand-in for ``vision_encoder.generator``: the b-th call returns ``masks[b % B]`` (grid)."""

    def __init__(self, masks: torch.Tensor, grid: int) -> None:
        self.masks = masks.reshape(masks.shape[0], grid, grid).numpy().astype(np.int64)
        self.calls = 0

    def __call__(self) -> np.ndarray:
        out = self.masks[self.calls % len(self.masks)]
        self.calls += 1
        return out


def fix_hard_negatives(
    model: nn.Module, neg_image_idx: torch.Tensor, neg_text_idx: torch.Tensor
) -> None:
    """Replace ``model.get_hard_negatives`` (multinomial sampling) by fixed indices."""

    def get_hard_negatives(image_feat: Any, text_feat: Any, idx: Any = None) -> tuple:
        return neg_image_idx.tolist(), neg_text_idx.tolist()

    model.get_hard_negatives = get_hard_negatives  # type: ignore[method-assign]


def state_dict_copies(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with tied tensors stored as separate identical copies."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def tied_parameters(model: nn.Module) -> list[list[str]]:
    """Groups of state-dict names that share one tensor (first registered name first)."""
    seen: dict[int, list[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        seen.setdefault(id(v), []).append(k)
    return [names for names in seen.values() if len(names) > 1]


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """safetensors file of contiguous, detached CPU copies (sorted names: stable bytes)."""
    out = {k: tensors[k].detach().cpu().contiguous().clone() for k in sorted(tensors)}
    save_file(out, str(path), metadata={"format": "pt"})
    path.chmod(0o644)


def write_json(obj: Any, path: Path) -> None:
    """Stable ``config.json`` text (one-space indent as in ``../shared/golden``)."""
    path.write_text(json.dumps(obj, indent=1) + "\n")


def vision_description(
    res: int, patch: int, width: int, layers: int, heads: int, mlp_ratio: int
) -> dict:
    """The ``vision`` entry of ``config.json``."""
    grid = res // patch
    return {
        "type": "beit_v2 VisionTransformer (models/beit2.py)",
        "image_size": res,
        "patch_size": patch,
        "num_patches": grid * grid,
        "grid": [grid, grid],
        "width": width,
        "layers": layers,
        "heads": heads,
        "mlp_ratio": mlp_ratio,
        "mlp_hidden": width * mlp_ratio,
        "layer_norm_eps": 1e-06,
        "layer_scale_init_values": 0.1,
        "qkv_bias": True,
        "use_rel_pos_bias": True,
        "use_shared_rel_pos_bias": False,
        "use_abs_pos_emb": False,
        "use_mean_pooling": True,
        "num_relative_distance": (2 * grid - 1) ** 2 + 3,
        "drop_path_rate": 0.1,
        "local_attn_depth": -1,
    }


def token_batch(
    g: torch.Generator, lengths: list[int], vocab_hi: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoBERTa ids ``<s>=0, body in [3, vocab_hi), </s>=2, <pad>=1`` padded to ``width``
    (default: the longest length). Returns ``(ids, atts)`` int64 [B, T]."""
    t = width or max(lengths)
    ids = torch.ones(len(lengths), t, dtype=torch.long)
    atts = torch.zeros(len(lengths), t, dtype=torch.long)
    for b, n in enumerate(lengths):
        body = torch.randint(3, vocab_hi, (n - 2,), generator=g)
        ids[b, :n] = torch.cat([torch.tensor([0]), body, torch.tensor([2])])
        atts[b, :n] = 1
    return ids, atts


def require_topk_margin(scores: torch.Tensor, k: int, what: str, min_gap: float = 1e-4) -> float:
    """Fail unless, in every row of ``scores`` [R, C], the k-th and (k+1)-th largest values
    differ by at least ``min_gap`` (so which entries are in the top-k cannot depend on float
    noise or on tie-breaking); returns the smallest gap."""
    if k >= scores.shape[1]:
        return float("inf")
    ordered = scores.sort(dim=1, descending=True).values
    gap = float((ordered[:, k - 1] - ordered[:, k]).min())
    if gap < min_gap:
        raise ValueError(
            f"{what}: top-{k} boundary gap {gap:.3g} < {min_gap}; change the seed or k"
        )
    return gap

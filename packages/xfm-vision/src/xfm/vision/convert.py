"""Import BEiT-v2 / BEiT / ViT weights (official X-FM, original BEiT, timm) into xfm towers.

Everything goes through :class:`xfm.core.checkpoint.KeyMapper`. The naming rules are public so
other packages reuse them (the fusion package for the official X-FM checkpoint):

* :func:`beit_rules`: official BEiT-v2 / X-FM / timm ``Beit`` names -> ours. The only renames
  are the relative position tables (``blocks.N.attn.relative_position_bias_table`` ->
  ``blocks.N.rel_pos.table``); ``relative_position_index`` buffers are dropped (rebuilt from the
  grid), and a shared table (``rel_pos_bias.relative_position_bias_table``) is copied into every
  block when ``layers`` is given (per-block tower) or renamed to ``rel_pos.table`` otherwise.
* :func:`timm_vit_rules`: timm ``VisionTransformer`` names -> ours (LayerScale ``ls1.gamma`` ->
  ``gamma_1``).
* :func:`fit_rules`: make a checkpoint fit a given tower: check the patch size, resize relative
  position tables to the tower's grid with the BEiT method (:func:`resize_rel_pos_table`, as the
  official fine-tuning at 384/480 from a 224 checkpoint does) and resample ``pos_embed``.

:func:`load_official_vision` and :func:`load_timm` put these together and load strictly with
:func:`xfm.core.checkpoint.load_into` (its :class:`~xfm.core.checkpoint.CheckpointMismatchError`
lists every missing, unexpected and mis-shaped key).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from xfm.core.checkpoint import (
    Drop,
    KeyMapper,
    LoadReport,
    Rename,
    Rule,
    Split,
    Transform,
    load_into,
    load_state_dict,
)
from xfm.vision.patch_embed import resample_abs_pos_embed
from xfm.vision.rel_pos import NUM_EXTRA_REL_POS, num_relative_distances, resize_rel_pos_table
from xfm.vision.tower import VisionTransformer

__all__ = [
    "OFFICIAL_VISION_PREFIX",
    "beit_rules",
    "fit_rules",
    "load_official_vision",
    "load_timm",
    "official_vision_key_mapper",
    "timm_key_mapper",
    "timm_vit_rules",
]

OFFICIAL_VISION_PREFIX = "vision_encoder."
"""Prefix of the vision tower's keys in the official X-FM checkpoints."""

StateSource = Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike[str]


def _p(prefix: str) -> str:
    return re.escape(prefix)


def beit_rules(prefix: str = "", *, layers: int | None = None) -> list[Rule]:
    """Key rules from the BEiT-v2 naming (official X-FM ``vision_encoder.*``, BEiT, timm ``Beit``).

    Keys keep ``prefix`` (e.g. ``"vision_encoder."``): the fusion package applies these rules to
    the full X-FM checkpoint, whose vision keys keep their prefix in its model too.

    Args:
        prefix: the prefix of the vision keys in the source (and target) state dict.
        layers: number of blocks of a tower with a table per block: a shared table in the
            source is then copied into each block. ``None``: a shared table is renamed to the
            tower's shared ``rel_pos.table``.

    Without ``layers`` the rules invert automatically (``KeyMapper(beit_rules()).inverse()``),
    except that the dropped ``relative_position_index`` buffers are not recreated.
    """
    p = _p(prefix)
    rules: list[Rule] = [
        Drop(rf"^{p}(?:.*\.)?relative_position_index$"),
        Rename(
            rf"^{p}blocks\.(\d+)\.attn\.relative_position_bias_table$",
            rf"{prefix}blocks.\1.rel_pos.table",
        ),
    ]
    shared = rf"^{p}rel_pos_bias\.relative_position_bias_table$"
    if layers is None:
        rules.append(Rename(shared, f"{prefix}rel_pos.table"))
    else:
        rules.append(Split(shared, [f"{prefix}blocks.{i}.rel_pos.table" for i in range(layers)]))
    return rules


def timm_vit_rules(prefix: str = "") -> list[Rule]:
    """Key rules from timm's ``VisionTransformer`` naming (LayerScale modules -> ``gamma_*``)."""
    p = _p(prefix)
    return [
        Rename(rf"^{p}blocks\.(\d+)\.ls1\.gamma$", rf"{prefix}blocks.\1.gamma_1"),
        Rename(rf"^{p}blocks\.(\d+)\.ls2\.gamma$", rf"{prefix}blocks.\1.gamma_2"),
    ]


def _square_grid_of_table(rows: int) -> int:
    side = math.isqrt(rows - NUM_EXTRA_REL_POS) if rows > NUM_EXTRA_REL_POS else 0
    if side < 1 or side * side != rows - NUM_EXTRA_REL_POS or side % 2 == 0:
        raise ValueError(
            f"a relative position table of {rows} rows is not (2g-1)^2 + 3 for a square grid g; "
            "build the tower at the checkpoint's grid and call set_image_size() instead"
        )
    return (side + 1) // 2


def fit_rules(encoder: VisionTransformer, prefix: str = "") -> list[Rule]:
    """Transforms that make a checkpoint (already in our naming) fit ``encoder``.

    * ``patch_embed.proj.weight``: a different patch size raises ``ValueError`` naming both.
    * ``*rel_pos.table``: a table of another (square) grid is resized to ``encoder.grid`` with
      :func:`~xfm.vision.rel_pos.resize_rel_pos_table`.
    * ``pos_embed``: another (square) grid is resampled bicubically (timm).
    """
    p = _p(prefix)
    name = type(encoder).__name__
    patch = encoder.config.patch_size
    grid = encoder.grid
    rows = num_relative_distances(grid)

    def check_patch(weight: torch.Tensor) -> torch.Tensor:
        if weight.dim() != 4 or tuple(weight.shape[-2:]) != (patch, patch):
            raise ValueError(
                f"checkpoint patch size does not match {name}: expected patch_embed.proj.weight "
                f"[D, C, {patch}, {patch}] (patch_size={patch}), got {list(weight.shape)} "
                f"(patch size {tuple(weight.shape[-2:])})"
            )
        return weight

    def fit_table(table: torch.Tensor) -> torch.Tensor:
        if table.dim() != 2 or table.shape[0] == rows:
            return table  # same grid (or malformed: the load report shows it)
        return resize_rel_pos_table(table, _square_grid_of_table(table.shape[0]), grid)

    def fit_pos_embed(pos: torch.Tensor) -> torch.Tensor:
        tokens = grid[0] * grid[1] + 1
        if pos.dim() != 3 or pos.shape[1] == tokens:
            return pos
        side = math.isqrt(pos.shape[1] - 1)
        if side * side != pos.shape[1] - 1:
            raise ValueError(
                f"pos_embed with {pos.shape[1]} tokens is not 1 + a square grid; expected "
                f"{tokens} tokens for the grid {grid} of {name}"
            )
        return resample_abs_pos_embed(pos, new_size=list(grid), old_size=[side, side])

    return [
        Transform(rf"^{p}patch_embed\.proj\.weight$", check_patch),
        Transform(rf"^{p}(?:blocks\.\d+\.)?rel_pos\.table$", fit_table),
        Transform(rf"^{p}pos_embed$", fit_pos_embed),
    ]


def _per_block_layers(encoder: VisionTransformer) -> int | None:
    return encoder.config.layers if encoder.config.rel_pos == "per_block" else None


def official_vision_key_mapper(
    encoder: VisionTransformer, prefix: str = OFFICIAL_VISION_PREFIX
) -> KeyMapper:
    """Mapper from an official X-FM (or BEiT-v2) checkpoint to ``encoder``'s state dict.

    Keys outside ``prefix`` (text/fusion encoders, heads) are dropped, ``prefix`` is stripped,
    then :func:`beit_rules` and :func:`fit_rules` apply. ``prefix=""`` for a bare BEiT-v2 state.
    """
    rules: list[Rule] = []
    if prefix:
        rules += [Drop(rf"^(?!{_p(prefix)})"), Rename(rf"^{_p(prefix)}", "")]
    rules += beit_rules(layers=_per_block_layers(encoder))
    rules += [Drop(r"^(?:head|lm_head)\.")]
    rules += fit_rules(encoder)
    return KeyMapper(rules, name="official-beit-v2")


def timm_key_mapper(encoder: VisionTransformer) -> KeyMapper:
    """Mapper from a timm ``Beit`` (BEiT, BEiT-v2) or ``VisionTransformer`` state dict.

    The classifier ``head`` is dropped; names are mapped with :func:`beit_rules` and
    :func:`timm_vit_rules`, then :func:`fit_rules` adapts grid-dependent tensors.
    """
    rules: list[Rule] = [Drop(r"^head\.")]
    rules += beit_rules(layers=_per_block_layers(encoder))
    rules += timm_vit_rules()
    rules += fit_rules(encoder)
    return KeyMapper(rules, name="timm")


def _state_of(source: StateSource) -> tuple[Mapping[str, torch.Tensor], str]:
    if isinstance(source, nn.Module):
        return source.state_dict(), f"{type(source).__name__} state_dict"
    if isinstance(source, str | os.PathLike):
        return load_state_dict(source), os.fspath(source)
    if isinstance(source, Mapping):
        return source, "<state dict>"
    raise TypeError(
        f"expected a state dict, an nn.Module or a checkpoint path; got {type(source).__name__}"
    )


def load_official_vision(
    encoder: VisionTransformer,
    source: StateSource,
    *,
    prefix: str = OFFICIAL_VISION_PREFIX,
    strict: bool = True,
) -> LoadReport:
    """Load the vision tower of an official X-FM checkpoint (or a BEiT-v2 state with ``prefix=""``).

    Relative position tables of another grid are resized to the encoder's (fine-tuning at
    384/480 from a 224 checkpoint). The official checkpoint has no ``norm`` weights (Identity):
    build the encoder with ``use_fc_norm=True`` (the default of :class:`~xfm.vision.BEiTv2`).

    Raises:
        CheckpointMismatchError: (``strict``) missing, unexpected or mis-shaped keys, grouped.
        ValueError: the checkpoint's patch size differs from the encoder's.
    """
    state, label = _state_of(source)
    return load_into(
        encoder,
        state,
        mapper=official_vision_key_mapper(encoder, prefix),
        strict=strict,
        source=label,
    )


def load_timm(
    encoder: VisionTransformer,
    source: StateSource,
    *,
    strict: bool = True,
    allow_missing: str | tuple[str, ...] = (r"^mask_token$",),
) -> LoadReport:
    """Load a timm ``Beit`` / ``VisionTransformer`` (model, state dict or file) into ``encoder``.

    timm's models have no mask token, so ``mask_token`` keeps its initial value (allowed missing
    by default). Tables and ``pos_embed`` of another grid are resized to the encoder's.
    """
    state, label = _state_of(source)
    return load_into(
        encoder,
        state,
        mapper=timm_key_mapper(encoder),
        strict=strict,
        allow_missing=allow_missing,
        source=label,
    )

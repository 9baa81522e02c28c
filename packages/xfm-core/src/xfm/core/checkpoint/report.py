"""What happened when a state dict was compared with (or loaded into) a module, in words.

Long key lists are summarised by pattern so that a 12-layer model with hundreds of keys reads at
a glance: numbered components are collapsed into ranges and sibling leaves into sets, e.g.::

    missing from the checkpoint (48 keys):
      text.layers.{0-11}.attn.{k,q}.{bias,weight}      (48 keys)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["DtypeMismatch", "KeyGroup", "LoadReport", "ShapeMismatch", "group_keys"]


@dataclass(frozen=True)
class KeyGroup:
    """Keys summarised by one pattern: ``pattern`` (e.g. ``layers.{0-11}.attn.{k,q}.weight``),
    how many keys it stands for, and the keys themselves."""

    pattern: str
    keys: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.keys)


def _is_index(component: str) -> bool:
    return component.isdigit() and str(int(component)) == component


def _ranges(numbers: Iterable[int]) -> str:
    values = sorted(set(numbers))
    runs: list[str] = []
    start = prev = values[0]
    for v in values[1:]:
        if v == prev + 1:
            prev = v
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = v
    runs.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(runs)


def group_keys(keys: Iterable[str]) -> list[KeyGroup]:
    """Summarise dotted keys: numeric components become ranges (``{0-11}``), then keys that
    differ only in their last component are joined (``{bias,weight}``). Groups keep the order
    in which their first key appears."""
    # 1) collapse numeric components
    by_skeleton: dict[tuple[str, ...], list[str]] = {}
    numbers: dict[tuple[str, ...], list[set[int]]] = {}
    for key in keys:
        comps = key.split(".")
        skeleton = tuple("#" if _is_index(c) else c for c in comps)
        by_skeleton.setdefault(skeleton, []).append(key)
        nums = numbers.setdefault(skeleton, [set() for c in comps if _is_index(c)])
        for slot, c in zip(nums, (c for c in comps if _is_index(c))):
            slot.add(int(c))
    # 2) render each skeleton and join those that differ only in the last component
    by_parent: dict[str, tuple[list[str], list[str]]] = {}
    for skeleton, members in by_skeleton.items():
        sets = iter(numbers[skeleton])
        rendered = []
        for c in skeleton:
            if c == "#":
                s = next(sets)
                rendered.append(_ranges(s) if len(s) == 1 else "{" + _ranges(s) + "}")
            else:
                rendered.append(c)
        parent = ".".join(rendered[:-1])
        leaves, grouped = by_parent.setdefault(parent, ([], []))
        leaves.append(rendered[-1])
        grouped.extend(members)
    groups = []
    for parent, (leaves, members) in by_parent.items():
        leaf = leaves[0] if len(leaves) == 1 else "{" + ",".join(sorted(leaves)) + "}"
        groups.append(KeyGroup(f"{parent}.{leaf}" if parent else leaf, tuple(members)))
    return groups


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


@dataclass(frozen=True)
class ShapeMismatch:
    """A key present in both, with different shapes."""

    key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]


@dataclass(frozen=True)
class DtypeMismatch:
    """A key present in both, with different dtypes."""

    key: str
    checkpoint_dtype: torch.dtype
    model_dtype: torch.dtype


@dataclass
class LoadReport:
    """The comparison of a checkpoint with a module.

    Attributes:
        missing: model keys absent from the checkpoint.
        unexpected: checkpoint keys (after mapping) the model does not have.
        shape_mismatches: keys in both with different shapes (both shapes given).
        dtype_mismatches: keys in both whose dtypes are of different kinds (e.g. integer in the
            checkpoint, floating point in the model); these are not loaded.
        casts: keys in both with dtypes of the same kind but different precision (float16 vs
            float32, int32 vs int64); they are loaded, cast to the model's dtype.
        loaded: keys copied into the module (empty for a comparison only).
        ignored_missing / ignored_unexpected: keys allowed to be missing / unexpected.
        unmapped / dropped: source keys no mapper rule touched / that drop rules removed.
        origins: for mapped keys, the source key(s) each was made from.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[ShapeMismatch] = field(default_factory=list)
    dtype_mismatches: list[DtypeMismatch] = field(default_factory=list)
    casts: list[DtypeMismatch] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    ignored_missing: list[str] = field(default_factory=list)
    ignored_unexpected: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    origins: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No missing, unexpected, shape- or dtype-mismatched keys."""
        return not (
            self.missing or self.unexpected or self.shape_mismatches or self.dtype_mismatches
        )

    def summary(self) -> str:
        """One line: counts of each kind of problem."""
        parts = [
            f"{len(self.missing)} missing",
            f"{len(self.unexpected)} unexpected",
            f"{len(self.shape_mismatches)} with a different shape",
        ]
        if self.dtype_mismatches:
            parts.append(f"{len(self.dtype_mismatches)} with an incompatible dtype")
        return ", ".join(parts)

    def _from(self, key: str) -> str:
        src = self.origins.get(key)
        if not src or src == (key,):
            return ""
        return f" (from {src[0]})" if len(src) == 1 else f" (from {', '.join(src)})"

    def format(
        self, checkpoint: str | None = None, model: str | None = None, max_groups: int = 12
    ) -> str:
        """A readable multi-line description of every problem, keys grouped by pattern."""
        ckpt = checkpoint or "<state dict>"
        mdl = model or "<module>"
        lines = [f"checkpoint {ckpt} does not match model {mdl}: {self.summary()}."]

        def section(title: str, keys: list[str]) -> None:
            if not keys:
                return
            lines.append(f"  {title} ({len(keys)} key{'s' if len(keys) != 1 else ''}):")
            groups = group_keys(keys)
            width = min(max(len(g.pattern) for g in groups[:max_groups]), 70)
            for g in groups[:max_groups]:
                example = "" if g.count == 1 else f"  (e.g. {g.keys[0]})"
                lines.append(f"    {g.pattern:<{width}}  {g.count:>4} key(s){example}")
            rest = groups[max_groups:]
            if rest:
                n = sum(g.count for g in rest)
                lines.append(f"    ... and {n} more key(s) in {len(rest)} more group(s)")

        section("missing from the checkpoint", self.missing)
        section("unexpected in the checkpoint (not in the model)", self.unexpected)
        if self.shape_mismatches:
            n = len(self.shape_mismatches)
            lines.append(f"  different shapes ({n} key{'s' if n != 1 else ''}):")
            by_shapes: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
            for m in self.shape_mismatches:
                by_shapes.setdefault((m.checkpoint_shape, m.model_shape), []).append(m.key)
            shown = 0
            for (cs, ms), keys in by_shapes.items():
                for g in group_keys(keys):
                    if shown == max_groups:
                        break
                    shown += 1
                    origin = self._from(g.keys[0]) if g.count == 1 else ""
                    lines.append(
                        f"    {g.pattern}{origin}: checkpoint {_shape(cs)} vs model {_shape(ms)}"
                        + ("" if g.count == 1 else f"  ({g.count} keys)")
                    )
            if shown == max_groups:
                lines.append("    ... (more shape mismatches not shown)")
        if self.dtype_mismatches:
            lines.append(f"  incompatible dtypes ({len(self.dtype_mismatches)} keys):")
            for m in self.dtype_mismatches[:max_groups]:
                lines.append(
                    f"    {m.key}{self._from(m.key)}: checkpoint {m.checkpoint_dtype} vs "
                    f"model {m.model_dtype}"
                )
        unmapped = set(self.unmapped)
        stray = [k for k in self.unexpected if set(self.origins.get(k, ())) & unmapped]
        if stray:
            lines.append(
                f"  {len(stray)} unexpected key(s) matched no mapping rule, e.g. "
                f"{', '.join(self.origins[k][0] for k in stray[:3])}"
            )
        hint = _prefix_hint(self.missing, self.unexpected)
        if hint:
            lines.append(f"  hint: {hint}")
        lines.append(
            "  Pass strict=False to load only the matching keys, or fix the key mapping "
            "(allow_missing=/allow_unexpected= accept key patterns that may legitimately differ)."
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _prefix_hint(missing: Sequence[str], unexpected: Sequence[str]) -> str | None:
    """Suggest a prefix to strip or add when most keys differ only by one."""

    def best(longer: Sequence[str], shorter: Sequence[str]) -> tuple[str, int] | None:
        targets = set(shorter)
        counts: dict[str, int] = {}
        for key in longer:
            for i, c in enumerate(key):
                if c == "." and key[i + 1 :] in targets:
                    counts[key[: i + 1]] = counts.get(key[: i + 1], 0) + 1
        if not counts:
            return None
        prefix, n = max(counts.items(), key=lambda kv: kv[1])
        return (prefix, n) if n >= max(1, len(shorter) // 2) else None

    if not missing or not unexpected:
        return None
    strip = best(unexpected, missing)
    if strip:
        return (
            f"{strip[1]} unexpected key(s) are missing keys prefixed with {strip[0]!r}; "
            f"use KeyMapper(strip_prefix={strip[0]!r})"
        )
    add = best(missing, unexpected)
    if add:
        return (
            f"{add[1]} missing key(s) are unexpected keys without the prefix {add[0]!r}; "
            f"add it with Rename('^', {add[0]!r})"
        )
    return None

"""Declarative conversion of foreign state dicts (HF, timm, official X-FM...) to xfm names.

A :class:`KeyMapper` is an ordered list of rules applied one after the other to every key, the
way a hand-written conversion loop applies ``k = k.replace(...)`` lines in sequence:

* :class:`Rename` ``(pattern, replacement)``: ``re.sub(pattern, replacement, key, count=1)`` on
  every key where ``pattern`` is found (``re.search``), optionally transforming the tensor;
* :class:`Transform` ``(pattern, fn)``: keep the key, transform the tensor;
* :class:`Drop` ``(pattern)``: keys deliberately ignored; they are returned in
  :attr:`MappedState.dropped`;
* :class:`Split` ``(pattern, targets, fn)``: one key to several (e.g. a fused ``qkv`` weight into
  ``q``/``k``/``v``, or a shared relative-position table copied into every block);
* :class:`Merge` ``(parts, target, fn)``: several keys to one (e.g. ``q``/``k``/``v`` biases into
  one ``qkv`` bias).

Keys produced by a rule go on through the rules that follow it. ``strip_prefix`` and ``drop``
given to the constructor become the first rules. A key that no rule touches keeps its name (or is
left out with ``passthrough=False``) and is reported in :attr:`MappedState.unmapped`. Two keys
that end up with the same name raise :class:`KeyMappingError`.

Patterns use :mod:`re` syntax; anchor them (``^...``, ``...$``) to avoid surprises.

**Inversion** (for export back to the foreign layout): :meth:`KeyMapper.inverse` inverts every
rule in reverse order. A rename is inverted automatically when its pattern is made only of
literal text and capturing groups, and its replacement of literal text and references using each
group exactly once, for example ``(r"^bert\\.encoder\\.layer\\.(\\d+)\\.", r"layers.\\1.")``.
Tensor functions need an explicit ``inverse_fn``. A stripped prefix is inverted by adding it to
every key: when some source keys did not have it (``bert.*`` next to ``cls.*``), state the
inverse explicitly, ``Rename(r"^bert\\.", "", inverse=(r"^(?!cls\\.)", "bert."))``. The round
trip is exact when the forward mapping is one-to-one on the keys it sees; test it with the
checkpoint at hand. Drop rules have no inverse (the inverse mapper
simply does not produce those keys). Any other rule can be given an explicit inverse
``(pattern, replacement)``; otherwise :class:`NotInvertibleError` is raised, and a separate
export mapper should be written.

Example::

    mapper = KeyMapper(
        [
            Rename(r"^encoder\\.layer\\.(\\d+)\\.attention\\.self\\.", r"layers.\\1.attn."),
            Split(r"^(blocks\\.\\d+\\.attn\\.)qkv\\.weight$", [r"\\1q.weight", r"\\1k.weight",
                  r"\\1v.weight"], fn=lambda t: t.chunk(3), inverse_fn=lambda q, k, v:
                  torch.cat([q, k, v])),
        ],
        strip_prefix="bert.",
        drop=[r"^cls\\.", r"\\.position_ids$"],
    )
    mapped = mapper.apply(hf_state)        # mapped.state, mapped.unmapped, mapped.dropped
    back = mapper.inverse().apply(mapped.state).state
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from xfm.core.checkpoint.errors import KeyMappingError, NotInvertibleError

__all__ = [
    "Drop",
    "KeyMapper",
    "MappedState",
    "Merge",
    "Rename",
    "Rule",
    "Split",
    "Transform",
    "invert_rename",
]

TensorFn = Callable[[torch.Tensor], torch.Tensor]

# --------------------------------------------------------------------------- regex inversion

_SPECIAL = set(".^$*+?{}[]|()")


def _find_group_end(pattern: str, start: int) -> int:
    """Index of the ``)`` closing the group opened at ``pattern[start] == '('``."""
    depth, i, in_class = 0, start, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise NotInvertibleError(f"unbalanced parenthesis in {pattern!r}")


def _parse_pattern(pattern: str) -> tuple[bool, bool, list[tuple[str, str]], dict[str, int]]:
    """Split a pattern into literal and group tokens.

    Returns ``(anchored_start, anchored_end, tokens, names)`` with tokens ``("lit", text)`` or
    ``("group", regex)`` and ``names`` mapping group names to 1-based group numbers.
    """

    def fail(why: str) -> NotInvertibleError:
        return NotInvertibleError(
            f"pattern {pattern!r} cannot be inverted automatically ({why}); only literal text "
            f"and capturing groups are supported. Give the rule an explicit inverse."
        )

    start = pattern.startswith("^")
    body = pattern[1:] if start else pattern
    end = body.endswith("$") and not body.endswith("\\$")
    body = body[:-1] if end else body
    tokens: list[tuple[str, str]] = []
    names: dict[str, int] = {}
    lit: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1 : i + 2]
            if not nxt or nxt.isalnum():
                raise fail(f"escape \\{nxt}")
            lit.append(nxt)
            i += 2
        elif c == "(":
            close = _find_group_end(body, i)
            inner = body[i + 1 : close]
            name = None
            if inner.startswith("?P<"):
                name, _, inner = inner[3:].partition(">")
            elif inner.startswith("?"):
                raise fail("non-capturing group or look-around")
            if re.compile(inner).groups:
                raise fail("nested capturing group")
            if lit:
                tokens.append(("lit", "".join(lit)))
                lit = []
            tokens.append(("group", inner))
            if name:
                names[name] = sum(1 for t in tokens if t[0] == "group")
            i = close + 1
        elif c in _SPECIAL:
            raise fail(f"special character {c!r}")
        else:
            lit.append(c)
            i += 1
    if lit:
        tokens.append(("lit", "".join(lit)))
    return start, end, tokens, names


_REF = re.compile(r"\\(?:g<([^>]+)>|(\d{1,2}))")


def _parse_replacement(repl: str, names: Mapping[str, int]) -> list[tuple[str, Any]]:
    """Split a replacement template into ``("lit", text)`` and ``("ref", group_number)``."""
    tokens: list[tuple[str, Any]] = []
    lit: list[str] = []
    i = 0
    while i < len(repl):
        if repl.startswith("\\\\", i):
            lit.append("\\")
            i += 2
            continue
        m = _REF.match(repl, i)
        if m:
            ref = m.group(1) or m.group(2)
            num = int(ref) if ref.isdigit() else names.get(ref)
            if num is None:
                raise NotInvertibleError(f"replacement {repl!r} refers to unknown group {ref!r}")
            if lit:
                tokens.append(("lit", "".join(lit)))
                lit = []
            tokens.append(("ref", num))
            i = m.end()
            continue
        if repl[i] == "\\":
            raise NotInvertibleError(f"replacement {repl!r}: unsupported escape at {i}")
        lit.append(repl[i])
        i += 1
    if lit:
        tokens.append(("lit", "".join(lit)))
    return tokens


def invert_rename(pattern: str, replacement: str) -> tuple[str, str]:
    """The ``(pattern, replacement)`` that undoes ``re.sub(pattern, replacement, key, count=1)``.

    Only for patterns of literal text and capturing groups whose replacement uses every group
    exactly once, e.g. ``(r"^a\\.(\\d+)\\.b", r"x.\\1.y")`` -> ``(r"^x\\.(\\d+)\\.y", r"a.\\g<1>.b")``.

    Raises:
        NotInvertibleError: for any other pattern.
    """
    start, end, ptoks, names = _parse_pattern(pattern)
    rtoks = _parse_replacement(replacement, names)
    groups = [t[1] for t in ptoks if t[0] == "group"]
    refs = [t[1] for t in rtoks if t[0] == "ref"]
    if sorted(refs) != list(range(1, len(groups) + 1)):
        raise NotInvertibleError(
            f"rename ({pattern!r} -> {replacement!r}) cannot be inverted automatically: the "
            f"replacement must use each of the {len(groups)} group(s) exactly once, it uses "
            f"{refs}. Give the rule an explicit inverse."
        )
    inv_pattern = "^" if start else ""
    for kind, value in rtoks:
        inv_pattern += re.escape(value) if kind == "lit" else f"({groups[value - 1]})"
    inv_pattern += "$" if end else ""
    # group k of the original pattern is group refs.index(k)+1 of the inverse pattern
    inv_repl = ""
    gi = 0
    for kind, value in ptoks:
        if kind == "lit":
            inv_repl += value.replace("\\", "\\\\")
        else:
            gi += 1
            inv_repl += f"\\g<{refs.index(gi) + 1}>"
    return inv_pattern, inv_repl


# --------------------------------------------------------------------------- rules


@dataclass
class _Item:
    key: str
    tensor: torch.Tensor
    origins: tuple[str, ...]
    touched: bool = False


class Rule:
    """Base class of key-mapping rules. Subclasses implement :meth:`apply` and :meth:`inverse`."""

    def apply(self, items: list[_Item]) -> tuple[list[_Item], list[str]]:
        """Apply to all keys; return the new items and the dropped source keys."""
        raise NotImplementedError

    def inverse(self) -> Rule | None:
        """The rule that undoes this one (``None``: nothing to undo, e.g. a drop)."""
        raise NotImplementedError


def _compile(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    return pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)


class Rename(Rule):
    """Rename keys where ``pattern`` is found: ``re.sub(pattern, replacement, key, count=1)``.

    Args:
        pattern: regular expression searched in the key.
        replacement: ``re.sub`` template (``\\1``, ``\\g<name>``); ``None`` keeps the key.
        fn: optional tensor transform applied to matching keys.
        inverse_fn: the transform that undoes ``fn`` (needed to invert a rule that has ``fn``).
        inverse: explicit ``(pattern, replacement)`` of the inverse rename, when the automatic
            inversion does not apply.
    """

    def __init__(
        self,
        pattern: str,
        replacement: str | None,
        *,
        fn: TensorFn | None = None,
        inverse_fn: TensorFn | None = None,
        inverse: tuple[str, str | None] | None = None,
    ) -> None:
        self.pattern = _compile(pattern)
        self.replacement = replacement
        self.fn = fn
        self.inverse_fn = inverse_fn
        self.explicit_inverse = inverse
        self.counts_as_mapping = True

    def __repr__(self) -> str:
        fn = f", fn={getattr(self.fn, '__name__', self.fn)}" if self.fn else ""
        return f"{type(self).__name__}({self.pattern.pattern!r}, {self.replacement!r}{fn})"

    def apply(self, items: list[_Item]) -> tuple[list[_Item], list[str]]:
        out = []
        for it in items:
            m = self.pattern.search(it.key)
            if m is None:
                out.append(it)
                continue
            key = it.key
            if self.replacement is not None:
                key = key[: m.start()] + m.expand(self.replacement) + key[m.end() :]
            tensor = self.fn(it.tensor) if self.fn is not None else it.tensor
            if not isinstance(tensor, torch.Tensor):
                raise KeyMappingError(
                    f"{self!r}: fn returned {type(tensor).__name__} for {it.key!r}, not a tensor"
                )
            out.append(_Item(key, tensor, it.origins, it.touched or self.counts_as_mapping))
        return out, []

    def inverse(self) -> Rule:
        if self.fn is not None and self.inverse_fn is None:
            raise NotInvertibleError(f"{self!r} has a tensor fn but no inverse_fn")
        if self.explicit_inverse is not None:
            pattern, repl = self.explicit_inverse
        elif self.replacement is None:
            pattern, repl = self.pattern.pattern, None
        else:
            pattern, repl = invert_rename(self.pattern.pattern, self.replacement)
        inv = Rename(
            pattern,
            repl,
            fn=self.inverse_fn,
            inverse_fn=self.fn,
            inverse=(self.pattern.pattern, self.replacement),
        )
        inv.counts_as_mapping = self.counts_as_mapping
        return inv


class Transform(Rename):
    """Transform the tensor of every key where ``pattern`` is found; the key is unchanged."""

    def __init__(self, pattern: str, fn: TensorFn, *, inverse_fn: TensorFn | None = None) -> None:
        super().__init__(pattern, None, fn=fn, inverse_fn=inverse_fn)

    def __repr__(self) -> str:
        return f"Transform({self.pattern.pattern!r}, fn={getattr(self.fn, '__name__', self.fn)})"


class Drop(Rule):
    """Drop keys where ``pattern`` is found (deliberately ignored; reported as dropped)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = _compile(pattern)

    def __repr__(self) -> str:
        return f"Drop({self.pattern.pattern!r})"

    def apply(self, items: list[_Item]) -> tuple[list[_Item], list[str]]:
        kept, dropped = [], []
        for it in items:
            if self.pattern.search(it.key):
                dropped.extend(it.origins)
            else:
                kept.append(it)
        return kept, dropped

    def inverse(self) -> None:
        return None


class Split(Rule):
    """One key to several: ``re.sub(pattern, target_i, key, count=1)`` for every target.

    Args:
        pattern: regular expression searched in the key.
        targets: one ``re.sub`` template per produced key.
        fn: ``tensor -> sequence of len(targets) tensors`` (e.g. ``lambda t: t.chunk(3)``);
            ``None`` gives the same tensor to every target (copying a shared table).
        inverse_fn: ``(*tensors) -> tensor`` undoing ``fn`` (for :meth:`inverse`). When ``fn``
            is ``None`` the inverse keeps the first copy and checks that all copies are equal.
    """

    def __init__(
        self,
        pattern: str,
        targets: Sequence[str],
        *,
        fn: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None,
        inverse_fn: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        if isinstance(targets, str) or not targets:
            raise ValueError(f"Split needs a non-empty list of target templates, got {targets!r}")
        self.pattern = _compile(pattern)
        self.targets = list(targets)
        self.fn = fn
        self.inverse_fn = inverse_fn

    def __repr__(self) -> str:
        return f"Split({self.pattern.pattern!r}, {self.targets!r})"

    def apply(self, items: list[_Item]) -> tuple[list[_Item], list[str]]:
        out = []
        for it in items:
            m = self.pattern.search(it.key)
            if m is None:
                out.append(it)
                continue
            if self.fn is None:
                pieces: Sequence[torch.Tensor] = [it.tensor] * len(self.targets)
            else:
                pieces = list(self.fn(it.tensor))
                if len(pieces) != len(self.targets) or not all(
                    isinstance(p, torch.Tensor) for p in pieces
                ):
                    raise KeyMappingError(
                        f"{self!r}: fn must return {len(self.targets)} tensors for {it.key!r} "
                        f"(shape {list(it.tensor.shape)}), got {len(pieces)} objects"
                    )
            for target, piece in zip(self.targets, pieces):
                key = it.key[: m.start()] + m.expand(target) + it.key[m.end() :]
                out.append(_Item(key, piece, it.origins, True))
        return out, []

    def inverse(self) -> Rule:
        if self.fn is not None and self.inverse_fn is None:
            raise NotInvertibleError(f"{self!r} has a tensor fn but no inverse_fn")
        inverted = [invert_rename(self.pattern.pattern, t) for t in self.targets]
        repls = {r for _, r in inverted}
        if len(repls) != 1:
            raise NotInvertibleError(
                f"{self!r}: the targets use the groups in different orders; give an export mapper"
            )
        return Merge(
            [p for p, _ in inverted],
            repls.pop(),
            fn=self.inverse_fn,
            inverse_fn=self.fn,
        )


class Merge(Rule):
    """Several keys to one. Each pattern in ``parts`` selects one part; the parts of one merged
    key are those whose ``re.sub(part, target, key, count=1)`` give the same name.

    Args:
        parts: one pattern per part, in the order given to ``fn``.
        target: ``re.sub`` template of the merged key.
        fn: ``(*tensors) -> tensor`` (e.g. ``lambda q, k, v: torch.cat([q, k, v])``). ``None``
            requires all parts to be equal and keeps the first (undoes a copying :class:`Split`).
        inverse_fn: ``tensor -> sequence of tensors`` undoing ``fn`` (for :meth:`inverse`).

    Raises (from :meth:`KeyMapper.apply`):
        KeyMappingError: when some parts of a merged key are absent.
    """

    def __init__(
        self,
        parts: Sequence[str],
        target: str,
        *,
        fn: Callable[..., torch.Tensor] | None = None,
        inverse_fn: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    ) -> None:
        if isinstance(parts, str) or not parts:
            raise ValueError(f"Merge needs a non-empty list of part patterns, got {parts!r}")
        self.parts = [_compile(p) for p in parts]
        self.target = target
        self.fn = fn
        self.inverse_fn = inverse_fn

    def __repr__(self) -> str:
        return f"Merge({[p.pattern for p in self.parts]!r}, {self.target!r})"

    def apply(self, items: list[_Item]) -> tuple[list[_Item], list[str]]:
        out: list[_Item] = []
        groups: dict[str, list[_Item | None]] = {}
        slot: dict[str, int] = {}  # position in `out` reserved for the merged key
        for it in items:
            for index, part in enumerate(self.parts):
                m = part.search(it.key)
                if m is None:
                    continue
                key = it.key[: m.start()] + m.expand(self.target) + it.key[m.end() :]
                group = groups.setdefault(key, [None] * len(self.parts))
                if group[index] is not None:
                    raise KeyMappingError(
                        f"{self!r}: {group[index].key!r} and {it.key!r} are both part "
                        f"{index} of {key!r}"
                    )
                group[index] = it
                if key not in slot:
                    slot[key] = len(out)
                    out.append(it)  # placeholder, replaced below
                break
            else:
                out.append(it)
        for key, group in groups.items():
            if any(g is None for g in group):
                have = [g.key for g in group if g is not None]
                missing = [self.parts[i].pattern for i, g in enumerate(group) if g is None]
                raise KeyMappingError(
                    f"{self!r}: cannot build {key!r}: found {have} but no key matching {missing}"
                )
            members = [g for g in group if g is not None]
            parts = [g.tensor for g in members]
            if self.fn is None:
                first = parts[0]
                if first.device.type != "meta" and not all(torch.equal(first, p) for p in parts):
                    raise KeyMappingError(
                        f"{self!r}: the copies merged into {key!r} differ "
                        f"({[g.key for g in members]}); give fn= to combine them"
                    )
                merged = first
            else:
                merged = self.fn(*parts)
                if not isinstance(merged, torch.Tensor):
                    raise KeyMappingError(
                        f"{self!r}: fn returned {type(merged).__name__} for {key!r}, not a tensor"
                    )
            origins = tuple(o for g in members for o in g.origins)
            out[slot[key]] = _Item(key, merged, origins, True)
        return out, []

    def inverse(self) -> Rule:
        if self.fn is not None and self.inverse_fn is None:
            raise NotInvertibleError(f"{self!r} has a tensor fn but no inverse_fn")
        inverted = [invert_rename(p.pattern, self.target) for p in self.parts]
        return Split(
            inverted[0][0],
            [r for _, r in inverted],
            fn=self.inverse_fn,
            inverse_fn=self.fn,
        )


# --------------------------------------------------------------------------- mapper


@dataclass
class MappedState:
    """Result of :meth:`KeyMapper.apply`.

    Attributes:
        state: the converted ``{name: tensor}`` dict.
        unmapped: source keys that no rule touched (kept under their own name unless the mapper
            has ``passthrough=False``); stripping a ``strip_prefix`` alone does not count.
        dropped: source keys removed by drop rules.
        origins: for every key of ``state``, the source key(s) it was made from.
    """

    state: dict[str, torch.Tensor]
    unmapped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    origins: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _as_list(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class KeyMapper:
    """An ordered list of key-mapping rules (see the module docstring).

    Args:
        rules: the rules, applied in order.
        strip_prefix: prefix(es) removed where present, before any other rule (each becomes a
            ``Rename("^<prefix>", "")``).
        drop: patterns of keys to drop, checked after the prefixes are stripped and before
            ``rules``.
        passthrough: keep keys that no rule touches under their own name (default) or leave
            them out; either way they are listed in :attr:`MappedState.unmapped`.
        name: a label used in messages (e.g. ``"hf-bert"``).
    """

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        *,
        strip_prefix: str | Sequence[str] = (),
        drop: str | Sequence[str] = (),
        passthrough: bool = True,
        name: str | None = None,
    ) -> None:
        for r in rules:
            if not isinstance(r, Rule):
                raise TypeError(
                    f"KeyMapper rules must be Rule objects (Rename, Drop, Split, Merge, "
                    f"Transform), got {type(r).__name__}: {r!r}"
                )
        strips = [Rename("^" + re.escape(p), "") for p in _as_list(strip_prefix)]
        for rule in strips:  # stripping a prefix alone does not make a key "mapped"
            rule.counts_as_mapping = False
        self.rules: list[Rule] = [
            *strips,
            *(Drop(p) for p in _as_list(drop)),
            *rules,
        ]
        self.passthrough = passthrough
        self.name = name

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"KeyMapper({label}{self.rules!r})"

    def __add__(self, other: KeyMapper) -> KeyMapper:
        """The mapper applying ``self``'s rules, then ``other``'s."""
        return KeyMapper(
            [*self.rules, *other.rules],
            passthrough=self.passthrough and other.passthrough,
            name=" + ".join(n for n in (self.name, other.name) if n) or None,
        )

    def apply(self, state: Mapping[str, torch.Tensor]) -> MappedState:
        """Convert ``state``. Tensors are not copied unless a rule's function copies them.

        Raises:
            KeyMappingError: when two keys map to the same name, a merge is incomplete, or a
                rule function returns the wrong number of tensors.
        """
        items = [_Item(k, v, (k,)) for k, v in state.items()]
        dropped: list[str] = []
        for rule in self.rules:
            items, gone = rule.apply(items)
            dropped.extend(gone)
            seen: dict[str, _Item] = {}
            for it in items:
                if it.key in seen:
                    raise KeyMappingError(
                        f"{self.name or 'KeyMapper'}: after {rule!r}, source keys "
                        f"{list(seen[it.key].origins)} and {list(it.origins)} both map to "
                        f"{it.key!r}"
                    )
                seen[it.key] = it
        unmapped = [o for it in items if not it.touched for o in it.origins]
        kept = items if self.passthrough else [it for it in items if it.touched]
        return MappedState(
            state={it.key: it.tensor for it in kept},
            unmapped=unmapped,
            dropped=dropped,
            origins={it.key: it.origins for it in kept},
        )

    def inverse(self) -> KeyMapper:
        """The mapper converting back (rules inverted, in reverse order; drops omitted).

        Raises:
            NotInvertibleError: naming the first rule that has no inverse.
        """
        inverted: list[Rule] = []
        for rule in reversed(self.rules):
            try:
                inv = rule.inverse()
            except NotInvertibleError as e:
                raise NotInvertibleError(
                    f"{self.name or 'KeyMapper'} cannot be inverted: {e}"
                ) from e
            if inv is not None:
                inverted.append(inv)
        name = f"inverse of {self.name}" if self.name else None
        return KeyMapper(inverted, passthrough=self.passthrough, name=name)

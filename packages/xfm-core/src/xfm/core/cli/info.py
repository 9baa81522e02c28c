"""``xfm info``: every registered component, per kind, and the distribution providing it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from xfm.core.cli.command import Command
from xfm.core.cli.main import version
from xfm.core.registry import KINDS, ComponentInfo, get_registry

__all__ = ["InfoCommand", "collect", "format_table", "to_json"]

_COLUMNS = ("KIND", "NAME", "DISTRIBUTION", "VERSION", "SOURCE", "OBJECT")


def collect(kinds: Sequence[str] = KINDS) -> dict[str, list[ComponentInfo]]:
    """Components of each kind in ``kinds`` (in that order), without importing any of them."""
    return {kind: get_registry(kind).entries() for kind in kinds}


def _conflicts(components: dict[str, list[ComponentInfo]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind, infos in components.items():
        names = [i.name for i in infos]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            out[kind] = dups
    return out


def format_table(components: dict[str, list[ComponentInfo]]) -> str:
    """A plain aligned table, one row per component, then the kinds that have none."""
    rows = [
        (
            kind,
            i.name,
            i.distribution or f"({i.source})",
            i.version or "-",
            i.source,
            i.value,
        )
        for kind, infos in components.items()
        for i in infos
    ]
    lines = [f"xfm-core {version()}"]
    if rows:
        widths = [max(len(r[c]) for r in [_COLUMNS, *rows]) for c in range(len(_COLUMNS))]
        for row in [_COLUMNS, *rows]:
            lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    else:
        lines.append("No components are registered.")
    empty = [kind for kind, infos in components.items() if not infos]
    if empty:
        lines.append("")
        lines.append(f"No components registered for: {', '.join(empty)}.")
        lines.append(
            "Install the xfm packages or plugins that provide them "
            "(entry-point groups 'xfm.<kind>')."
        )
    for kind, names in _conflicts(components).items():
        lines.append("")
        lines.append(
            f"CONFLICT: {kind} {', '.join(map(repr, names))} declared by more than one "
            "distribution; using it raises an error until one is uninstalled."
        )
    return "\n".join(lines)


def to_json(components: dict[str, list[ComponentInfo]]) -> dict[str, Any]:
    """The JSON-ready form of ``components``: ``{"xfm_core_version", "components", ...}``."""
    return {
        "xfm_core_version": version(),
        "components": {
            kind: [{k: v for k, v in asdict(i).items() if k != "kind"} for i in infos]
            for kind, infos in components.items()
        },
        "empty_kinds": [kind for kind, infos in components.items() if not infos],
        "conflicts": _conflicts(components),
    }


class InfoCommand(Command):
    """``xfm info [--kind KIND ...] [--json]``."""

    help = "List the registered components of every kind and the distribution providing each."
    description = (
        "List every component registered through entry points (groups 'xfm.<kind>') or "
        "in-process, with the distribution and version that provide it. Nothing is imported."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """``--kind`` (repeatable) restricts the listing; ``--json`` prints a JSON object."""
        parser.add_argument(
            "--kind",
            action="append",
            choices=KINDS,
            metavar="KIND",
            help=f"only list this kind (repeatable; default: all): {', '.join(KINDS)}",
        )
        parser.add_argument("--json", action="store_true", help="print a JSON object")

    def run(self, args: argparse.Namespace) -> int:
        """Print the listing to stdout; always succeeds (status 0)."""
        kinds = tuple(dict.fromkeys(args.kind)) if args.kind else KINDS
        components = collect(kinds)
        if args.json:
            json.dump(to_json(components), sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(format_table(components))
        return 0

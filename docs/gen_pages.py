"""Pages generated at build time (run by the ``gen-files`` plugin of mkdocs.yml).

* ``packages/<name>.md``: the package's README (links rewritten for the site) and its API
  reference (mkdocstrings, from the docstrings);
* ``cli.md``: ``xfm --help`` and the ``--help`` of every command and sub-command, from the
  parser ``xfm`` builds out of the ``xfm.cli`` entry points of the installed packages (so
  plug-in commands appear too);
* ``config.md``: every field of the pretraining and fine-tuning configs and of the model and
  encoder sections: dotted key, type, default and the description from the class docstring's
  ``Attributes:`` section (or a ``#:`` comment above the field);
* ``official-checkpoints.md``: the official-checkpoint sections of the xfm-fusion and xfm-tasks
  READMEs (the pretraining key mapping; the layouts, ``xfm check-official``,
  ``xfm import-official`` and ``xfm export-official``).

A README section this script needs and cannot find raises, so ``mkdocs build`` fails instead of
publishing a page with a hole.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import re
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "text", "vision", "fusion", "train", "tasks")
#: Packages whose ``__init__`` re-exports the public API (``__all__``); the others are documented
#: module by module.
REEXPORTING = ("text", "vision", "fusion")


# --- package pages -----------------------------------------------------------------------------


def _rewrite_links(text: str) -> str:
    """README links that point into the repository -> the matching site pages."""
    text = text.replace("](../../README.md)", "](../index.md)")
    text = re.sub(r"\]\(\.\./xfm-(\w+)/README\.md(#[^)]*)?\)", r"](\1.md\2)", text)
    return text


def _package_page(package: str) -> str:
    readme = (ROOT / "packages" / f"xfm-{package}" / "README.md").read_text(encoding="utf-8")
    if package in REEXPORTING:
        api = f"::: xfm.{package}\n    options:\n      show_submodules: false\n"
    else:
        api = f"::: xfm.{package}\n    options:\n      show_submodules: true\n"
    return f"{_rewrite_links(readme).rstrip()}\n\n## API reference\n\n{api}"


# --- CLI reference -----------------------------------------------------------------------------


def _help_texts(
    parser: argparse.ArgumentParser, path: list[str]
) -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    """``(command path, parser)`` for ``parser`` and every nested sub-parser, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _help_texts(sub, [*path, name])


def _cli_page() -> str:
    """``--help`` of ``xfm`` and of every (nested) subcommand, as ``xfm <command> --help``
    prints it (the parser :func:`xfm.core.cli.build_parser` builds from the ``cli`` registry)."""
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width
    from xfm.core.cli import build_parser
    from xfm.core.registry import get_registry

    registry = get_registry("cli")
    lines = [
        "# Command-line reference",
        "",
        "Generated from the commands' own `--help` at documentation build time. Every command is",
        "an entry point of group `xfm.cli` (see [xfm-core](packages/core.md)); installed plug-ins",
        "add theirs.",
    ]
    for path, parser in _help_texts(build_parser(), []):
        depth = min(len(path), 2) + 1
        lines += ["", f"{'#' * (depth + 1)} `{' '.join(['xfm', *path])}`", ""]
        if len(path) == 1:
            info = registry.info(path[0])
            lines += [f"From `{info.value}` ({info.provider}).", ""]
        lines += ["```text", parser.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


# --- config reference --------------------------------------------------------------------------


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions of ``cls`` and its bases: the Google ``Attributes:`` section of the class
    docstring (``a, b: text`` documents both), else ``#:`` comments above the field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        docs.update(_comment_docs(klass))
        docs.update(_docstring_attributes(klass.__dict__.get("__doc__") or ""))
    return docs


def _docstring_attributes(doc: str) -> dict[str, str]:
    lines = inspect.cleandoc(doc).splitlines()
    out: dict[str, str] = {}
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return out
    current: list[str] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if not line.startswith(" "):
            break
        match = re.match(r"^ {4}([\w, ]+):\s*(.*)$", line)
        if match and not line.startswith(" " * 5):
            current = [n.strip() for n in match.group(1).split(",")]
            for name in current:
                out[name] = match.group(2).strip()
        else:
            for name in current:
                out[name] += " " + line.strip()
    return out


def _comment_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    out: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comments = []
            i = node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#:"):
                comments.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            if comments:
                out[node.target.id] = " ".join(comments)
    return out


def _constraint(meta: Any) -> str:
    symbols = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    parts = [f"{sym} {getattr(meta, a)}" for a, sym in symbols.items() if hasattr(meta, a)]
    for inner in getattr(meta, "metadata", []) or []:  # pydantic Field(ge=..., le=...)
        parts += [_constraint(inner)]
    return ", ".join(p for p in parts if p)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        base = _type_name(args[0])
        constraints = [c for c in (_constraint(m) for m in args[1:]) if c]
        return f"{base} ({', '.join(constraints)})" if constraints else base
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "see below"
    if hasattr(value, "value") and type(value).__module__ != "builtins":  # enums
        value = value.value
    return f"`{value!r}`"


def _cell(text: str) -> str:
    """``text`` for a table cell: ``|`` escaped outside code spans (inside, the table extension
    does not split on it, and an escape would show)."""
    parts = re.split(r"((`+).+?\2)", text)  # [outside, span, its backticks, outside, ...]
    out = [p.replace("|", "\\|") if i % 3 == 0 else p for i, p in enumerate(parts) if i % 3 != 2]
    return "".join(out)


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (``X``, ``X | None``, ``Annotated[X, ...]``), if any."""
    if typing.get_origin(tp) is typing.Annotated:
        return _dataclass_of(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [_dataclass_of(a) for a in typing.get_args(tp) if a is not type(None)]
        return found[0] if len(found) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _dict_of_dataclass(tp: Any) -> type | None:
    """The dataclass of the values of a ``dict[str, X]`` field, if any."""
    if typing.get_origin(tp) is typing.Annotated:
        return _dict_of_dataclass(typing.get_args(tp)[0])
    if typing.get_origin(tp) is dict:
        return _dataclass_of(typing.get_args(tp)[1])
    return None


def _sections(cls: type, key: str, out: list[tuple[str, type]]) -> None:
    """``(dotted key, dataclass)`` for ``cls`` and every nested dataclass field, depth first."""
    out.append((key, cls))
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        dotted = f"{key}.{f.name}" if key else f.name
        if (nested := _dataclass_of(tp)) is not None:
            _sections(nested, dotted, out)
        elif (values := _dict_of_dataclass(tp)) is not None:
            _sections(values, f"{dotted}.<name>", out)


def _table(cls: type, key: str, note: str = "") -> list[str]:
    hints = typing.get_type_hints(cls, include_extras=True)
    docs = _attribute_docs(cls)
    summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    where = f"`{cls.__module__}.{cls.__qualname__}`"
    title = f"`{key}`" if key else "(top level)"
    lines = [f"### {title}{f' ({note})' if note else ''}", "", f"{summary} ({where})", ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        dotted = f"{key}.{f.name}" if key else f.name
        tp = _cell(_type_name(hints.get(f.name, f.type)))
        doc = _cell(docs.get(f.name, ""))
        lines.append(f"| `{dotted}` | {tp} | {_default(f)} | {doc} |")
    return [*lines, ""]


def _config_roots() -> list[tuple[str, str, list[tuple[str, type]]]]:
    from xfm.fusion.encoder import FusionEncoderConfig
    from xfm.fusion.model import XFMConfig
    from xfm.tasks.base import FinetuneConfig
    from xfm.text.config import TextEncoderConfig
    from xfm.train.config import PretrainConfig
    from xfm.train.data.loader import LoaderConfig
    from xfm.train.data.transforms import ProcessConfig
    from xfm.vision.beit import BEiTv2Config
    from xfm.vision.vit import ViTConfig

    return [
        (
            "Pretraining: `xfm pretrain --config FILE`",
            "`xfm.train.config.PretrainConfig`; e.g. `configs/pretrain/tiny.yaml`.",
            [("", PretrainConfig), ("data.process", ProcessConfig), ("data.loader", LoaderConfig)],
        ),
        (
            "Fine-tuning: `xfm finetune TASK --config FILE`",
            "`xfm.tasks.base.FinetuneConfig`; e.g. `configs/tasks/retrieval_synth.yaml`.",
            [("", FinetuneConfig)],
        ),
        (
            "The model section: `model:`",
            "`model.name` (default `xfm`) names the `model` registry entry the trainer "
            "creates; the other keys are its config, for `xfm` `xfm.fusion.XFMConfig`. "
            "`model.text`, `model.vision` and `model.fusion` are "
            "`{name: <registered encoder>, **options}`; the options of the built-in encoders "
            "follow.",
            [
                ("model", XFMConfig),
                ("model.text (name: bert | roberta)", TextEncoderConfig),
                ("model.vision (name: beit_v2)", BEiTv2Config),
                ("model.vision (name: vit)", ViTConfig),
                ("model.fusion (name: cross_attention)", FusionEncoderConfig),
            ],
        ),
    ]


def _config_page() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses at documentation build time. A YAML file sets any",
        "of these keys (`base: other.yaml` starts from another file); the command line",
        "overrides them as `dotted.key=value` (see `xfm.core.config` in",
        "[xfm-core](packages/core.md)). Unknown keys and values of the wrong type are errors that",
        "name the key.",
        "",
    ]
    for title, intro, roots in _config_roots():
        lines += [f"## {title}", "", intro, ""]
        seen: set[tuple[type, str]] = set()
        for label, cls in roots:
            key, _, note = label.partition(" ")  # "model.text (name: bert)": key and a note
            sections: list[tuple[str, type]] = []
            _sections(cls, key, sections)
            for sub_key, sub_cls in sections:
                if (sub_cls, sub_key) in seen and not note:
                    continue
                seen.add((sub_cls, sub_key))
                lines += _table(sub_cls, sub_key, note.strip("()") if sub_key == key else "")
    return "\n".join(lines)


# --- official checkpoints ----------------------------------------------------------------------


def _section(readme: Path, heading: str) -> str:
    """The text of the ``## heading`` section (without its heading line)."""
    text = readme.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise LookupError(f"{readme}: no section '## {heading}' (docs/gen_pages.py needs it)")
    return match.group(1).strip()


def _paragraph(readme: Path, start: str) -> str:
    """The paragraph of ``readme`` that begins with ``start``."""
    for para in readme.read_text(encoding="utf-8").split("\n\n"):
        if para.lstrip().startswith(start):
            return para.strip()
    raise LookupError(f"{readme}: no paragraph starting {start!r} (docs/gen_pages.py needs it)")


def _official_page() -> str:
    fusion = ROOT / "packages" / "xfm-fusion" / "README.md"
    tasks = ROOT / "packages" / "xfm-tasks" / "README.md"
    parts = [
        "# Official X-FM checkpoints",
        "",
        "xfm loads the published X-FM checkpoints (pretraining and fine-tuned tasks) with their",
        "exact outputs, and writes them back in the official layout. Collected from the",
        "[xfm-fusion](packages/fusion.md) and [xfm-tasks](packages/tasks.md) documentation.",
        "",
        "## Every layout, `xfm check-official`, `import-official`, `export-official`",
        "",
        _section(tasks, "Official checkpoints"),
        "",
        "## The pretrained model in Python",
        "",
        _section(fusion, "Official checkpoints"),
        "",
    ]
    return "\n".join(parts)


# --- write -------------------------------------------------------------------------------------


def generate() -> None:
    """Write every generated page into the mkdocs build (``mkdocs_gen_files``)."""
    for package in PACKAGES:
        with mkdocs_gen_files.open(f"packages/{package}.md", "w") as fh:
            fh.write(_package_page(package))
        mkdocs_gen_files.set_edit_path(
            f"packages/{package}.md", f"../packages/xfm-{package}/README.md"
        )
    with mkdocs_gen_files.open("cli.md", "w") as fh:
        fh.write(_cli_page())
    with mkdocs_gen_files.open("config.md", "w") as fh:
        fh.write(_config_page())
    with mkdocs_gen_files.open("official-checkpoints.md", "w") as fh:
        fh.write(_official_page())


generate()

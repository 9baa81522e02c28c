"""Entry point of the ``xfm`` console script: builds the parser from the ``cli`` registry.

Only the chosen subcommand's plugin is imported for ``xfm <command> ...``; ``xfm --help`` (or a
command line without a valid command) imports all of them to show their help. A plugin that fails
to import is listed as unavailable with its error and never breaks the other commands.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xfm.core.cli.errors import format_user_error, is_user_error
from xfm.core.registry import ComponentLoadError, Registry, RegistryError, get_registry

__all__ = ["build_parser", "main", "version"]

PROG = "xfm"
_COMMAND_DEST = "_xfm_command_name"
_HELP_FLAGS = ("-h", "--help")


def version() -> str:
    """Version of the installed ``xfm-core`` distribution."""
    try:
        return importlib.metadata.version("xfm-core")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        from xfm.core import __version__

        return __version__


@dataclass(frozen=True)
class _LoadedCommand:
    """A subcommand after trying to load it: ``command`` or the reason it is unavailable."""

    name: str
    command: Any | None
    reason: str = ""  # one line, for the help listing
    details: str = ""  # full message, printed when the command is invoked

    @property
    def available(self) -> bool:
        return self.command is not None


def _load_command(registry: Registry, name: str) -> _LoadedCommand:
    """Import and instantiate the subcommand ``name``, capturing any failure."""
    try:
        obj = registry.get(name)
    except ComponentLoadError as exc:
        reason = f"{type(exc.error).__name__}: {exc.error}"
        return _LoadedCommand(name, None, reason=reason, details=str(exc))
    except RegistryError as exc:  # e.g. two distributions declare the same command
        return _LoadedCommand(name, None, reason=str(exc), details=str(exc))
    info = registry.info(name)
    where = f"command {name!r} from entry point {info.value!r} of {info.provider}"
    try:
        command = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        return _LoadedCommand(name, None, reason=reason, details=f"{where} failed: {reason}")
    problems = _interface_problems(command)
    if problems:
        details = (
            f"{where} is not an xfm command: expected an xfm.core.cli.Command (help: str, "
            f"add_arguments(parser), run(args) -> int), got "
            f"{type(command).__module__}.{type(command).__qualname__} where " + ", ".join(problems)
        )
        reason = "not an xfm command: " + ", ".join(problems)
        return _LoadedCommand(name, None, reason=reason, details=details)
    return _LoadedCommand(name, command)


def _interface_problems(command: Any) -> list[str]:
    """What ``command`` lacks of the :class:`~xfm.core.cli.Command` interface."""
    problems = [
        f"{member}() is missing"
        for member in ("add_arguments", "run")
        if not callable(getattr(command, member, None))
    ]
    if not isinstance(getattr(command, "help", None), str):
        problems.append("help is not a str")
    return problems


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj):`~?([^`]+)`")


def plain_text(doc: str) -> str:
    """A docstring as help text: dedented, line breaks kept (examples stay one per line), and
    reStructuredText markup removed (````x```` -> ``x``, ``:class:`~a.B``` -> ``a.B``)."""
    text = inspect.cleandoc(doc)
    text = _ROLE.sub(lambda m: m.group(1), text)
    return text.replace("``", "")


def _build_parser(commands: Sequence[_LoadedCommand]) -> argparse.ArgumentParser:
    unavailable = [c for c in commands if not c.available]
    epilog = None
    if unavailable:
        lines = ["unavailable commands (their plugins failed to load):"]
        lines += [f"  {c.name}: {c.details}" for c in unavailable]
        epilog = "\n".join(lines)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="xfm: X-FM vision-language foundation models. Subcommands come from the "
        "installed xfm packages and plugins (entry-point group 'xfm.cli').",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    subparsers = parser.add_subparsers(
        dest=_COMMAND_DEST, title="commands", metavar="<command>", required=True
    )
    for loaded in commands:
        if loaded.available:
            help_text = loaded.command.help
            description = getattr(loaded.command, "description", None) or help_text
            sub = subparsers.add_parser(
                loaded.name,
                help=help_text,
                description=plain_text(description),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            loaded.command.add_arguments(sub)
        else:
            subparsers.add_parser(loaded.name, help=f"[unavailable] {loaded.reason}")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The full ``xfm`` parser with every subcommand loaded (unavailable ones marked)."""
    registry = get_registry("cli")
    return _build_parser([_load_command(registry, n) for n in registry.names()])


def _chosen_command(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The subcommand ``argv`` asks for, or ``None`` when top-level help or no valid command.

    The top-level parser takes no option with a value, so the first token that does not start
    with ``-`` is the subcommand.
    """
    for token in argv:
        if token in _HELP_FLAGS:
            return None
        if token.startswith("-"):
            continue
        return token if token in names else None
    return None


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


#: The subcommands of the xfm packages, by the distribution that provides them.
FIRST_PARTY_COMMANDS: dict[str, str] = {
    "pretrain": "xfm-train",
    "plot": "xfm-train",
    "data": "xfm-train",
    "finetune": "xfm-tasks",
    "eval": "xfm-tasks",
    "search": "xfm-tasks",
    "task-data": "xfm-tasks",
    "check-official": "xfm-tasks",
    "export-official": "xfm-tasks",
    "import-official": "xfm-tasks",
}


def _first_party_missing(argv: Sequence[str], names: Sequence[str]) -> str:
    """The message for a subcommand of an xfm package that is not installed, else ``""``."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or first in names or first not in FIRST_PARTY_COMMANDS:
        return ""
    dist = FIRST_PARTY_COMMANDS[first]
    return (
        f"'{first}' is a command of the {dist} package, which is not installed: "
        f"pip install {dist} (or ./packages/{dist} from a checkout); installed commands: "
        f"{', '.join(sorted(names)) or 'none'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xfm`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    A *user error* raised by the subcommand (see :mod:`xfm.core.cli.errors`: corrupt or unsafe
    checkpoint, invalid config, unreadable data, disk full...) is printed as one ``error: ...``
    line on stderr, without a traceback, and gives status 2. Other exceptions propagate.

    Returns:
        The subcommand's status; ``2`` for usage errors (argparse), for user errors and for a
        subcommand whose plugin cannot be loaded; ``0`` for ``--help`` and ``--version``.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    registry = get_registry("cli")
    names = registry.names()
    chosen = _chosen_command(args_list, names)
    if chosen is not None:
        commands = [_load_command(registry, chosen)]
        if not commands[0].available:
            print(f"{PROG}: error: {commands[0].details}", file=sys.stderr)
            return 2
    else:
        commands = [_load_command(registry, n) for n in names]
    parser = _build_parser(commands)
    if not args_list:
        parser.print_help(sys.stderr)
        return 2
    missing = _first_party_missing(args_list, names)
    if missing:
        print(f"{PROG}: error: {missing}", file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exit_:  # --help, --version and usage errors
        return _exit_status(exit_.code)
    by_name = {c.name: c for c in commands}
    loaded = by_name[getattr(args, _COMMAND_DEST)]
    if not loaded.available:  # chosen after a help-less full load, e.g. `xfm --version x`
        print(f"{PROG}: error: {loaded.details}", file=sys.stderr)
        return 2
    try:
        status = loaded.command.run(args)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(format_user_error(exc), file=sys.stderr)
        return 2
    if status is None:
        return 0
    if isinstance(status, bool) or not isinstance(status, int):
        raise TypeError(
            f"{PROG} {loaded.name}: run() must return an int exit status, got "
            f"{type(status).__name__} {status!r}."
        )
    return status

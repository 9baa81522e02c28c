"""The contract between the ``xfm`` command and the plugins that provide its subcommands."""

from __future__ import annotations

import abc
import argparse

__all__ = ["Command"]


class Command(abc.ABC):
    """Base class of an ``xfm`` subcommand.

    A distribution adds a subcommand by declaring an entry point in group ``xfm.cli`` that
    refers to a subclass (instantiated with no arguments) or to an instance::

        [project.entry-points."xfm.cli"]
        pretrain = "xfm.train.cli:PretrainCommand"

    Subclassing is optional: any object with the same three members works.

    Attributes:
        help: one line shown next to the command in ``xfm --help``.
        description: longer text shown by ``xfm <command> --help`` (defaults to ``help``).
    """

    help: str = ""
    description: str | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:  # noqa: B027
        """Declare the command's arguments on ``parser`` (its own sub-parser). Default: none."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Execute the command with the parsed ``args``; return the process exit status."""

"""The ``xfm`` command line: one command whose subcommands come from plugins.

Every subcommand is an entry point in group ``xfm.cli`` (the registry kind ``cli``) that refers
to a :class:`Command` subclass (instantiated with no arguments) or to an object with the same
interface::

    [project.entry-points."xfm.cli"]
    pretrain = "xfm.train.cli:PretrainCommand"

Run it as ``xfm <command> ...`` or ``python -m xfm.core.cli <command> ...``.
"""

from xfm.core.cli.command import Command
from xfm.core.cli.errors import UserError, is_user_error, register_user_error
from xfm.core.cli.main import build_parser, main

__all__ = ["Command", "UserError", "build_parser", "is_user_error", "main", "register_user_error"]

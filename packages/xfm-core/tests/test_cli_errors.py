"""The ``xfm`` dispatcher prints user errors as one ``error:`` line with status 2 (in process;
``xfm-train``'s ``test_trust_errors.py`` runs every error class through the console script)."""

from __future__ import annotations

import argparse
import errno
import uuid

import pytest

from xfm.core import registry
from xfm.core.checkpoint import CheckpointError
from xfm.core.cli import Command, UserError, main, register_user_error
from xfm.core.config import ConfigError


class _PluginError(Exception):
    """A plugin's own error class, registered below."""


register_user_error(_PluginError)


class _Raise(Command):
    help = "raise the given exception"
    error: BaseException = RuntimeError()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise type(self).error


def _run(error: BaseException, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    name = f"raise-{uuid.uuid4().hex[:8]}"
    cmd = type("Cmd", (_Raise,), {"error": error})
    registry.register("cli", name, cmd)
    try:
        status = main([name])
    finally:
        registry.get_registry("cli").unregister(name)
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (CheckpointError("checkpoint 'x.pt' is corrupt"), "error: checkpoint 'x.pt' is corrupt"),
        (ConfigError("steps: must be >= 1"), "error: steps: must be >= 1"),
        (FloatingPointError("loss is nan at step 3"), "error: loss is nan at step 3"),
        (FileNotFoundError("config 'c.yaml' does not exist"), "error: config 'c.yaml'"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/ckpt/step_00000002.pt"),
            "error: no space left on device while writing '/ckpt/step_00000002.pt'",
        ),
        (RuntimeError("device 'cuda' was requested but CUDA is not available"), "error: device"),
        (UserError("a subclass-based user error"), "error: a subclass-based user error"),
        (_PluginError("a registered plugin error"), "error: a registered plugin error"),
    ],
)
def test_user_errors_are_one_line_and_status_2(
    error: BaseException, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = _run(error, capsys)
    assert status == 2
    assert err.startswith(text)
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.splitlines()[0]]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "error", [ValueError("a bug"), RuntimeError("a bug"), OSError(errno.EIO, "I/O error")]
)
def test_other_exceptions_propagate(error: BaseException, capsys) -> None:
    with pytest.raises(type(error)):
        _run(error, capsys)

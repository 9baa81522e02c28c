"""Every user-facing error class ends in one ``error:`` line and exit status 2 (no traceback).

Each case raises its error inside a subcommand run by the real ``xfm`` console script, through
the real dispatcher: a throw-away plugin distribution (a ``*.dist-info`` with an ``xfm.cli``
entry point, found on ``PYTHONPATH``) provides ``xfm raise-probe CASE``. Where the error can be
produced by the real code path (registry lookup, safetensors parser, CUDA, a malformed
``index.json``), the probe calls that code rather than constructing the exception.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

XFM = Path(sys.executable).parent / "xfm"

PLUGIN = textwrap.dedent(
    """
    import errno
    import sys

    from xfm.core.cli import Command


    def _raise(case, tmp):
        if case == "checkpoint":
            from xfm.core.checkpoint import CheckpointError
            raise CheckpointError("checkpoint '/x/step_00000002.pt' is corrupt or truncated")
        if case == "checkpoint-file":
            from xfm.core.checkpoint import load_state_dict
            open(tmp + "/bad.pt", "wb").write(b"PK garbage")
            load_state_dict(tmp + "/bad.pt")
        if case == "config":
            from xfm.core.config import ConfigError
            raise ConfigError("optim.accumulate: must be >= 1, got 0", key="optim.accumulate")
        if case == "data-source":
            from xfm.train.data import DataSourceError
            raise DataSourceError("s3://b/x", "shard 'shard.00003.mds' is listed but missing")
        if case == "too-many-bad":
            from xfm.train.data import TooManyBadSamplesError
            raise TooManyBadSamplesError("image data at '/d': 9 of 64 samples read were bad")
        if case == "unknown-component":
            from xfm.core.registry import get
            get("objective", "no_such_objective")
        if case == "floating-point":
            raise FloatingPointError("non-finite loss image_text/itm = nan at step 3")
        if case == "safetensors":
            import safetensors.torch
            safetensors.torch.load(b"\\x08\\x00\\x00\\x00\\x00\\x00\\x00\\x00{garbage")
        if case == "disk-full":
            raise OSError(errno.ENOSPC, "No space left on device", tmp + "/step_00000002.pt")
        if case == "cuda":
            from xfm.train.engine.runtime import resolve_device
            resolve_device("cuda")
        if case == "cuda-tensor":
            import torch
            torch.zeros(1, device="cuda")
        if case == "malformed-index":
            import os
            from xfm.train.data import SourceDataset
            os.makedirs(tmp + "/ds", exist_ok=True)
            open(tmp + "/ds/index.json", "w").write('{"version": 2, "shards": [')
            SourceDataset("image", tmp + "/ds")
        if case == "not-a-user-error":
            raise ValueError("a bug: this keeps its traceback")
        raise SystemExit(f"unknown case {case}")


    class RaiseCommand(Command):
        help = "raise the error of a test case"

        def add_arguments(self, parser):
            parser.add_argument("case")
            parser.add_argument("tmp")

        def run(self, args):
            _raise(args.case, args.tmp)
            return 0
    """
)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    (root / "xfm_raise_probe.py").write_text(PLUGIN)
    dist = root / "xfm_raise_probe-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xfm-raise-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        "[xfm.cli]\nraise-probe = xfm_raise_probe:RaiseCommand\n"
    )
    return root


def _xfm(plugin: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.run(
        [str(XFM), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


#: case -> a fragment the error line must contain
CASES = {
    "checkpoint": "step_00000002.pt",
    "checkpoint-file": "bad.pt",
    "config": "optim.accumulate",
    "data-source": "shard.00003.mds",
    "too-many-bad": "9 of 64",
    "unknown-component": "no_such_objective",
    "floating-point": "non-finite loss",
    "safetensors": "deserializing",
    "disk-full": "no space left on device",
    "cuda": "CUDA",
    "cuda-tensor": "",
    "malformed-index": "index.json is malformed",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_error_line_and_exit_2(plugin_path: Path, tmp_path: Path, case: str):
    if case.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = _xfm(plugin_path, "raise-probe", case, str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert CASES[case] in proc.stderr, proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_other_exceptions_keep_their_traceback(plugin_path: Path, tmp_path: Path):
    """The list is not a catch-all: a bug still shows where it happened."""
    proc = _xfm(plugin_path, "raise-probe", "not-a-user-error", str(tmp_path))
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: a bug" in proc.stderr


def test_registry_of_user_errors_is_extensible():
    from xfm.core.cli.errors import is_user_error, register_user_error, user_error_names
    from xfm.train.data.errors import DataError

    class PluginError(Exception):
        pass

    assert not is_user_error(PluginError("x"))
    register_user_error(PluginError)
    assert is_user_error(PluginError("x"))
    assert f"{DataError.__module__}.DataError" in user_error_names()
    # a predicate narrows a class: only ENOSPC among OSErrors
    assert is_user_error(OSError(28, "No space left on device"))
    assert not is_user_error(OSError(5, "Input/output error"))

"""Fixtures of the example tests: a real ``moto_server`` (S3) for the streaming example.

With ``XFM_EXAMPLES_STRICT=1`` (set by the nox ``examples`` session) a missing optional
dependency fails the test that needs it instead of skipping it, so that CI cannot pass by
running nothing.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
STRICT = os.environ.get("XFM_EXAMPLES_STRICT") == "1"


def require(what: str, available: bool, hint: str) -> None:
    """Skip (or, under ``XFM_EXAMPLES_STRICT=1``, fail) when ``what`` is not available."""
    if available:
        return
    message = f"{what} is not available ({hint})"
    if STRICT:
        pytest.fail(message + "; XFM_EXAMPLES_STRICT=1 requires every example to run")
    pytest.skip(message)


def require_modules(*modules: str) -> None:
    """:func:`require` for importable modules."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        require(f"module {module}", found, f"pip install the package providing {module}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto_server did not open port {port} in {timeout}s: {log.read_text()}")


@pytest.fixture
def need() -> Callable[..., None]:
    """:func:`require_modules`, for the tests (``need("xfm.train", "boto3")``)."""
    return require_modules


@pytest.fixture(scope="session", autouse=True)
def _clean_streaming_leftovers() -> Iterator[None]:
    """Remove shared memory and file locks that killed streaming runs may have left."""
    if importlib.util.find_spec("streaming") is not None:
        with contextlib.suppress(Exception):
            from streaming.base.util import clean_stale_shared_memory

            clean_stale_shared_memory()
    for path in glob.glob("/tmp/*_filelock"):
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    yield


@pytest.fixture
def s3_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A running ``moto_server`` on a free port and the standard variables that point at it."""
    exe = BIN / "moto_server"
    require("moto_server", exe.exists(), f"pip install 'moto[server]' next to {sys.executable}")
    require_modules("boto3", "s3fs")
    log = tmp_path / "moto.log"
    port = _free_port()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=fh, stderr=fh
        )
    try:
        _wait_port(port, proc, log)
        yield {
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

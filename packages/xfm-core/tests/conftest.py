"""Shared fixtures of the xfm-core tests.

``moto_s3`` starts a real S3-compatible server (moto) on a free local port, once per test
session, and creates a bucket. Tests that use it are marked ``@pytest.mark.cloud``; they are
skipped (with the reason) when ``moto_server``, ``boto3`` or ``s3fs`` is not installed. Other
packages can copy this fixture as it is.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class MotoS3:
    """A running moto S3 server: its endpoint, a bucket, and fsspec ``storage_options``."""

    endpoint_url: str
    bucket: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def url(self, name: str) -> str:
        """A fresh ``s3://`` URL in the bucket (unique per call, so tests do not collide)."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex[:8]}/{name}"


def _find_moto_server() -> str | None:
    beside_python = Path(sys.executable).parent / "moto_server"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("moto_server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"moto_server exited with code {proc.returncode}:\n{log.read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # the server answers (any HTTP status means it is up)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout} s")


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """A local moto S3 server with one bucket, for the whole session."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install s3fs)")
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install boto3)")
    exe = _find_moto_server()
    if exe is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    env = {**os.environ, **_CREDENTIALS}
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(endpoint, proc, log, timeout=30)
        bucket = "xfm-test"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=_CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        client.create_bucket(Bucket=bucket)
        yield MotoS3(
            endpoint_url=endpoint,
            bucket=bucket,
            storage_options={
                "key": _CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "secret": _CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                "client_kwargs": {
                    "endpoint_url": endpoint,
                    "region_name": _CREDENTIALS["AWS_DEFAULT_REGION"],
                },
            },
            env={**_CREDENTIALS, "S3_ENDPOINT_URL": endpoint},
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
        except ImportError:
            pass

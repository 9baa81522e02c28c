"""Shared fixtures of the xfm-train tests.

* ``synth_dir``: a tiny shapes-world dataset built once per session.
* ``moto_s3``: a real S3-compatible server (``moto_server``) on a free local port with a bucket;
  the AWS variables point boto3/streaming at it while the fixture is active.
* ``gcs_emulator``: ``gcp-storage-emulator`` on a free local port with a bucket, fake
  authorized-user credentials and ``STORAGE_EMULATOR_HOST`` set.

Tests that use the servers are marked ``cloud``; they are skipped with the reason when a
server binary or client library is missing. Stale streaming shared memory and file locks left
by killed runs are removed at the start of the session.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server did not open port {port} in {timeout}s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def _env(values: dict[str, str | None]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _clean_streaming() -> None:
    with contextlib.suppress(Exception):
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
    for path in glob.glob("/tmp/*_filelock"):
        with contextlib.suppress(OSError):
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


@pytest.fixture(scope="session", autouse=True)
def _streaming_clean_session() -> Iterator[None]:
    _clean_streaming()
    yield


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny shapes-world dataset: 48 train / 16 test images of 32 px, 64 text documents."""
    from xfm.train.data.synth import SynthConfig, build_synthetic

    out = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(seed=7, image_size=32, num_train=48, num_test=16, num_text=64, vocab_size=300)
    build_synthetic(out, cfg, progress=False)
    return out


@dataclass
class CloudServer:
    """A running object-store emulator: its endpoint, a bucket and the env it needs."""

    endpoint: str
    bucket: str
    env: dict[str, str]

    def url(self, *parts: str) -> str:
        """``s3://bucket/<unique>/parts`` (or ``gs://``): a fresh prefix per call."""
        scheme = "s3" if "S3_ENDPOINT_URL" in self.env else "gs"
        return "/".join([f"{scheme}://{self.bucket}", uuid.uuid4().hex[:8], *parts])


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def _moto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    exe = BIN / "moto_server"
    if not exe.exists():
        pytest.skip(
            f"moto_server not installed next to {sys.executable} (pip install 'moto[server]')"
        )
    pytest.importorskip("boto3")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = _free_port()
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=fh, stderr=fh
        )
    try:
        _wait_port(port, proc, log)
        endpoint = f"http://127.0.0.1:{port}"
        env = {**S3_ENV, "S3_ENDPOINT_URL": endpoint}
        with _env(
            {
                **env,
                "AWS_PROFILE": None,
                "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            }
        ):
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="xfm-test")
        yield CloudServer(endpoint, "xfm-test", env)
    finally:
        _stop(proc)


@pytest.fixture
def moto_s3(_moto_session: CloudServer) -> Iterator[CloudServer]:
    """The session's moto server with the AWS variables set for this test."""
    extra = {
        "AWS_PROFILE": None,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }
    with _env({**_moto_session.env, **extra}):
        yield _moto_session


@pytest.fixture(scope="session")
def _gcs_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    exe = BIN / "gcp-storage-emulator"
    if not exe.exists():
        pytest.skip(f"gcp-storage-emulator not installed next to {sys.executable}")
    pytest.importorskip("google.cloud.storage")
    tmp = tmp_path_factory.mktemp("gcs")
    log = tmp / "gcs.log"
    creds = tmp / "credentials.json"
    creds.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "xfm-test",
                "client_secret": "xfm-test",
                "refresh_token": "xfm-test",
                "token": "xfm-test",
                "expiry": "2099-01-01T00:00:00Z",
            }
        )
    )
    port = _free_port()
    cmd = [
        str(exe),
        "start",
        "-H",
        "127.0.0.1",
        "--port",
        str(port),
        "--default-bucket",
        "xfm-test",
        "--in-memory",
    ]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh)
    try:
        _wait_port(port, proc, log)
        env = {
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
            "GOOGLE_APPLICATION_CREDENTIALS": str(creds),
            "GOOGLE_CLOUD_PROJECT": "xfm-test",
        }
        yield CloudServer(env["STORAGE_EMULATOR_HOST"], "xfm-test", env)
    finally:
        _stop(proc)


@pytest.fixture
def gcs_emulator(_gcs_session: CloudServer) -> Iterator[CloudServer]:
    """The session's GCS emulator with its variables set for this test."""
    with _env({**_gcs_session.env, "GCS_KEY": None, "GCS_SECRET": None}):
        yield _gcs_session


# ----------------------------------------------------------------------------- golden model
#: The official X-FM golden vectors (tiny model in the official layout + official outputs),
#: kept in the repository by xfm-fusion's tests; ``XFM_GOLDEN_DIR`` points elsewhere.
GOLDEN = Path(
    os.environ.get(
        "XFM_GOLDEN_DIR",
        Path(__file__).resolve().parents[2] / "xfm-fusion" / "tests" / "data" / "golden",
    )
)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    assert (GOLDEN / "config.json").is_file(), f"golden data missing at {GOLDEN}"
    return GOLDEN


@pytest.fixture(scope="session")
def golden_inputs(golden_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(golden_dir / "inputs.safetensors"))


@pytest.fixture(scope="session")
def golden_outputs(golden_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(golden_dir / "outputs.safetensors"))


@pytest.fixture(scope="session")
def golden_routing(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "gradient_routing.json").read_text())


@pytest.fixture
def golden_model(golden_dir: Path):
    """A fresh official golden model (eval mode) loaded with the lead's official importer."""
    from xfm.fusion.official import from_official, xfm_config_from_golden

    cfg = json.loads((golden_dir / "config.json").read_text())
    return from_official(
        golden_dir / "model.safetensors", config=xfm_config_from_golden(cfg)
    ).eval()

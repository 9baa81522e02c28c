"""Data faults never hang (issue 18, item 3): a shard listed in ``index.json`` but missing is a
clear error naming the shard and the dataset within seconds, at start-up and mid-epoch, with
and without loader workers, locally and on S3; a malformed ``index.json`` is a clear error;
loader workers die with their parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from xfm.train.data import DataSourceError, ImageWriter, SourceDataset

SCRIPTS = Path(__file__).parent / "data_scripts"
XFM = Path(sys.executable).parent / "xfm"


def _write_images(url: str, n: int = 40) -> None:
    """``n`` tiny PNG images in several shards (about 7 samples per shard)."""
    w = ImageWriter(url, size_limit=1000, image_format="PNG")
    for i in range(n):
        w.write(Image.new("RGB", (16, 16), (i * 5, 0, 0)), id=f"x-{i}")
    w.close()


def _run_repetitions(url: str, shard: str, reps: int, cache: Path) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "missing_shard.py"), url, shard, str(reps), str(cache)],
        capture_output=True,
        text=True,
        timeout=240,  # a hang fails here
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    results = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(results) == reps, proc.stdout + proc.stderr[-3000:]
    return results


def _check(results: list[dict], url: str, shard: str) -> None:
    for r in results:
        assert r["error"] is not None, r
        assert r["error"].startswith("DataSourceError: "), r
        assert shard in r["error"] and url in r["error"], r
        assert "DataLoader worker" not in r["error"] and "Traceback" not in r["error"], r
        assert "timed out" not in r["error"] and "within 30s" not in r["error"], r


@pytest.mark.slow
def test_missing_local_shard_is_a_clear_error_in_20_repetitions(tmp_path: Path):
    url = str(tmp_path / "images")
    _write_images(url)
    results = _run_repetitions(url, "shard.00003.mds", 20, tmp_path / "cache")
    _check(results, url, "shard.00003.mds")
    # both paths were exercised: the start-up check and the workers meeting it mid-epoch
    assert {(r["late"], r["workers"]) for r in results} == {(a, b) for a in (0, 1) for b in (0, 2)}


@pytest.mark.slow
@pytest.mark.cloud
def test_missing_s3_shard_is_a_clear_error(moto_s3, tmp_path: Path):
    url = moto_s3.url("images")
    _write_images(url)
    results = _run_repetitions(url, "shard.00002.mds", 4, tmp_path / "cache")
    _check(results, url, "shard.00002.mds")


def test_malformed_index_is_a_clear_error(tmp_path: Path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "index.json").write_text('{"version": 2, "shards": [')
    with pytest.raises(DataSourceError, match=r"index\.json is malformed") as err:
        SourceDataset("image", str(d))
    assert str(d) in str(err.value)


def test_missing_shard_at_start_names_shard_and_dataset(tmp_path: Path):
    url = str(tmp_path / "images")
    _write_images(url)
    os.remove(tmp_path / "images" / "shard.00001.mds")
    os.remove(tmp_path / "images" / "shard.00004.mds")
    with pytest.raises(DataSourceError) as err:
        SourceDataset("image", url)
    msg = str(err.value)
    assert url in msg and "'shard.00001.mds' is listed in index.json but missing" in msg
    assert "2 of 6 shards missing" in msg and "shard.00004.mds" in msg


@pytest.mark.slow
def test_pretrain_with_malformed_index_is_one_error_line(tmp_path: Path, synth_dir: Path):
    import yaml

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.json").write_text("not json")
    cfg = yaml.safe_load((Path(__file__).parents[3] / "configs/pretrain/tiny.yaml").read_text())
    cfg["run_dir"] = str(tmp_path / "run")
    cfg["data"]["synth"] = None
    cfg["data"]["tokenizer"] = f"{synth_dir}/tokenizer"
    cfg["data"]["eval_url"] = f"{synth_dir}/mds/image_text/test"
    cfg["data"]["sources"] = {"image_text": {"url": str(bad), "batch_size": 8}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [str(XFM), "pretrain", "--config", str(path), "device=cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "index.json is malformed" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_stuck_workers_die_with_their_parent(tmp_path: Path):
    url = str(tmp_path / "images")
    _write_images(url, 8)
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "orphan_workers.py"), url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        time.sleep(1.0)  # the workers are inside the stuck sample now
        assert all(_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids), "loader workers outlived their parent"
    finally:
        proc.kill()
        for p in pids if "pids" in locals() else []:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.cloud
def test_data_synth_writes_to_s3(moto_s3, tmp_path: Path):
    """``xfm data synth --out s3://bucket/synth`` keeps the URL (it was mangled to ``s3:/``)."""
    from xfm.core.checkpoint.storage import resolve
    from xfm.train.data import LoaderConfig, SourceConfig, SourceLoader

    url = moto_s3.url("synth")
    args = ["data", "synth", "--out", url, "--num-train", "6", "--num-test", "4"]
    args += ["--num-text", "8", "--image-size", "32", "--vocab-size", "200", "--quiet"]
    proc = subprocess.run(
        [str(XFM), *args], capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "s3:").exists()
    fs, path = resolve(url)
    manifest = json.loads(fs.cat_file(path + "/synth.json"))
    assert manifest["format"] == "xfm-synth-shapes/2"
    assert fs.exists(path + "/tokenizer/tokenizer.json") or fs.ls(path + "/tokenizer")
    ld = SourceLoader(
        "image",
        SourceConfig(url + "/mds/image/train", 6, shuffle=False),
        LoaderConfig(cache_dir=str(tmp_path / "cache")),
    )
    assert len(ld.next_batch()) == 6
    ld.close()

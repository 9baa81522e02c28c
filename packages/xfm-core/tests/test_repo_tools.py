"""The repository's tools: ``tools/gpu_check.py`` (the one-command CUDA check: its CPU dry run,
usage errors, the entry-point metadata it writes for the working tree's packages) and the helpers
of the side-by-side benchmarks (``tools/bench/side_by_side.py``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "tools" / "gpu_check.py"
BENCH = REPO / "tools" / "bench"

pytestmark = pytest.mark.skipif(not TOOL.is_file(), reason="needs the repository checkout")


def test_dry_run_lists_every_stage_and_every_gpu_test_file(tmp_path):
    out = tmp_path / "check"
    res = subprocess.run(
        [sys.executable, str(TOOL), "--dry-run", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    stages = summary["stages"]
    assert list(stages) == [
        "tests",
        "train_small",
        "train_base_b64",
        "train_base_b128",
        "retrieval_base",
    ]
    assert sum(s["budget_s"] for s in stages.values()) <= 8 * 60
    marked = {
        str(p.relative_to(REPO))
        for p in REPO.glob("packages/*/tests/*.py")
        if any(
            line.strip().startswith("@pytest.mark.gpu")
            for line in p.read_text(encoding="utf-8").splitlines()
        )
    }
    assert marked, "no gpu-marked test found"
    cmd = stages["tests"]["cmd"].split()
    assert marked <= set(cmd) and cmd[len(cmd) - 1 - cmd[::-1].index("-m") + 1] == "gpu"
    assert "--config base --batch 128 --precisions bf16" in stages["train_base_b128"]["cmd"]
    assert "--preset base" in stages["retrieval_base"]["cmd"]
    assert "--k 256" in stages["retrieval_base"]["cmd"]
    for name in ("tests", "train_small", "retrieval_base"):
        assert f"[{name}]" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "the following arguments are required"), (["x", "--only", "nope"], "unknown stage")],
)
def test_usage_errors_end_in_one_error_line(args, message):
    res = subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, check=False
    )
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_dist_info_exposes_the_working_tree_entry_points(tmp_path):
    """In an interpreter without site-packages, the written metadata plus the ``src`` folders
    make the registry's entry points of every package visible."""
    site = tmp_path / "site"
    code = (
        "import importlib.metadata as md, json, sys\n"
        f"sys.path.insert(0, {str(TOOL.parent)!r})\n"
        "import gpu_check\n"
        f"gpu_check.write_dist_info(__import__('pathlib').Path({str(site)!r}))\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "print(json.dumps(sorted(e.name for e in md.entry_points(group='xfm.objective'))))\n"
        "print(md.version('xfm-vision'))\n"
    )
    res = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr
    pyproject = tomllib.loads((REPO / "packages/xfm-train/pyproject.toml").read_text())
    want = sorted(pyproject["project"]["entry-points"]["xfm.objective"])
    objectives, version = res.stdout.strip().splitlines()
    assert json.loads(objectives) == want
    vision = tomllib.loads((REPO / "packages/xfm-vision/pyproject.toml").read_text())
    static = vision["project"].get("version")
    if static:  # a static version, or hatch's dynamic one from __version__
        assert version == static
    else:
        init = (REPO / "packages/xfm-vision/src/xfm/vision/__init__.py").read_text()
        assert f'__version__ = "{version}"' in init


def _side_by_side():
    spec = importlib.util.spec_from_file_location("side_by_side", BENCH / "side_by_side.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ("fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16", ["amx_bf16", "avx512_bf16"]),
        ("fpu avx2 avx512f avx512_bf16", ["avx512_bf16"]),
        ("fpu avx2 fma", []),
    ],
)
def test_cpu_bf16_units_from_cpuinfo(tmp_path, flags, want):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert _side_by_side().cpu_bf16_units(cpuinfo) == want
    assert _side_by_side().cpu_bf16_units(tmp_path / "missing") is None


def test_run_measured_reports_each_childs_own_peak_rss():
    """From a small parent (as train_step.py's): a child that touches 300 MB and then a small
    one; the second's peak is its own, not the running maximum over all children that
    ``RUSAGE_CHILDREN`` gives."""
    big = "b = bytearray(300 * 2**20); print('{\"ok\": 1}')"
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "from side_by_side import last_json, run_measured\n"
        f"first = run_measured([sys.executable, '-c', {big!r}], {{}}, 60)\n"
        "second = run_measured([sys.executable, '-c', 'pass'], {}, 60)\n"
        "print(json.dumps([first['returncode'], last_json(first['stdout']), "
        "first['peak_rss_mb'], second['peak_rss_mb'], second['parent_peak_rss_mb']]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    code_, parsed, first, second, parent = json.loads(res.stdout)
    assert code_ == 0 and parsed == {"ok": 1}
    assert first > 300
    assert second < first - 250 and parent < 100


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_stage_rows_errors_and_timeout(tmp_path):
    """A stage's JSON rows are collected; a row with an error fails the stage; a stage over its
    budget is killed with its children and reported as timed out."""
    gc = _gpu_check()
    rows = 'print(\'{"pairs_per_s": 2.0}\'); print(\'{"impl": "official", "error": "x"}\')'
    rec = gc.run_stage(
        gc.Stage("rows", [sys.executable, "-c", rows], 30, ""), {}, tmp_path / "a", 30
    )
    assert rec["returncode"] == 0 and rec["row_errors"] == 1 and not rec["ok"]
    assert rec["rows"][0] == {"pairs_per_s": 2.0}
    sleeper = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    t0 = time.monotonic()
    rec = gc.run_stage(
        gc.Stage("slow", [sys.executable, "-c", sleeper], 1, ""), {}, tmp_path / "b", 2
    )
    assert rec["timed_out"] and not rec["ok"] and time.monotonic() - t0 < 30

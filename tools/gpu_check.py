"""Run xfm's CUDA checks in one command, in under 8 minutes, and write one JSON summary.

    python3 tools/gpu_check.py OUTDIR [--official DIR] [--carry DIR] [--budget-s 470]
        [--only tests train_small train_base_b64 train_base_b128 retrieval_base] [--dry-run]
    tools/gpu_check OUTDIR                     # the same, through the shell wrapper

Stages, each in a subprocess with its own time budget (killed with its children when it runs
over; the next stage still runs):

``tests``            every ``gpu``-marked test (the test files that hold ``pytest.mark.gpu``,
                     run with ``-m gpu``); log in ``OUTDIR/pytest.log``, JUnit XML in
                     ``OUTDIR/pytest.xml``
``train_small``      ``tools/bench/train_step.py``: small config, batch 16, fp32 and bf16,
                     beside the official ``bench_official_gpu.py``
``train_base_b64``   base config (the published model size), bf16, batch 64, beside the official
``train_base_b128``  the same at batch 128
``retrieval_base``   ``tools/bench/retrieval_eval.py --preset base`` (384 px, k = 256, 256 images
                     x 1280 captions, bf16 and fp32), beside ``bench_official_retrieval.py
                     --config base``

``OUTDIR/summary.json`` holds, per stage, the command, budget, wall time, exit status and the
JSON rows the benchmark printed, plus the test counts, the GPU, torch and which optional
packages loaded. Each stage's full output is in ``OUTDIR/<stage>.log``. Exit status 0 when every
stage passed, 1 otherwise. Without CUDA (or with ``--dry-run``) it prints what it would run,
writes ``summary.json`` with ``"dry_run": true`` and exits 0 (CI runs this).

Nothing is installed from the network. The xfm packages run from this working tree: their
``src`` folders go on ``PYTHONPATH`` and a minimal ``.dist-info`` per package (name, version,
entry points read from its ``pyproject.toml``) is written to a temporary folder so that the
plugin registry finds its entry points; no build backend is needed. Third-party packages the
machine lacks travel as wheels in the carry folder (``--carry``, default ``.gpu_carry`` in the
repository root) and are unpacked with ``pip install --no-index --no-deps --target`` into a
temporary folder put first on ``PYTHONPATH``::

    .gpu_carry/wheels/*.whl        installed as above (py3.12, manylinux x86-64 builds)
    .gpu_carry/official_bench/     the official benchmarks, when ../shared/official_bench does
                                   not travel (a copy of that folder)

Prepare the carry folder on a machine with network access, from the repository root (keep it
out of git with ``echo /.gpu_carry/ >> .git/info/exclude``)::

    mkdir -p .gpu_carry/wheels && cp -r ../shared/official_bench .gpu_carry/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .gpu_carry/wheels \\
        'transformers==4.57.6' 'huggingface-hub==0.36.2' 'tokenizers==0.22.2'

(the official code needs transformers < 5, which needs huggingface-hub < 1 and tokenizers
<= 0.23.0; the H200 image has transformers 5, huggingface-hub 1 and tokenizers 0.23.2, and
torch, timm, numpy, safetensors). Then, on the GPU machine, with ``.gpu_carry`` carried::

    python3 tools/gpu_check.py $OUT/gpu_check
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tools" / "bench"
PACKAGES = ("core", "text", "vision", "fusion", "train", "tasks")
TOTAL_BUDGET_S = 470.0  # under 8 minutes, set-up included


def fail(message: str) -> NoReturn:
    """A user error: one ``error: ...`` line, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


@dataclass
class Stage:
    """One step of the check: a command, its time budget and what it produced."""

    name: str
    cmd: list[str]
    budget_s: float
    what: str
    result: dict[str, Any] = field(default_factory=dict)


def gpu_test_files(root: Path = REPO) -> list[Path]:
    """The test files that hold ``gpu``-marked tests (``pytest.mark.gpu``)."""
    marker = re.compile(r"^\s*(@pytest\.mark\.gpu\b|pytestmark\s*=.*\bpytest\.mark\.gpu\b)", re.M)
    files = []
    for path in sorted(root.glob("packages/*/tests/**/*.py")):
        if marker.search(path.read_text(encoding="utf-8", errors="replace")):
            files.append(path)
    return files


def default_official(carry: Path) -> Path | None:
    """The official benchmark folder: ``../shared/official_bench`` beside the repository, else
    ``<carry>/official_bench``; ``None`` when neither holds ``bench_official_gpu.py``."""
    for candidate in (REPO.parent / "shared" / "official_bench", carry / "official_bench"):
        if (candidate / "bench_official_gpu.py").is_file():
            return candidate
    return None


def plan(outdir: Path, official: Path | None, python: str) -> list[Stage]:
    """The stages in the order they run."""
    off = ["--official", str(official)] if official else ["--no-official"]
    train = [python, str(BENCH / "train_step.py"), "--device", "cuda", "--steps", "image_text"]
    train += ["--warmup", "2", "--iters", "5", "--json", *off]
    tests = [str(p.relative_to(REPO)) for p in gpu_test_files()]
    return [
        Stage(
            "tests",
            [
                python, "-m", "pytest", *tests, "-m", "gpu", "-q", "-rA",
                "-p", "no:cacheprovider", f"--junitxml={outdir / 'pytest.xml'}",
            ],
            80.0,
            "every gpu-marked test",
        ),
        Stage(
            "train_small",
            [*train, "--config", "small", "--batch", "16", "--precisions", "fp32", "bf16"],
            95.0,
            "pretraining step, small config, batch 16, fp32 + bf16, vs official",
        ),
        Stage(
            "train_base_b64",
            [*train, "--config", "base", "--batch", "64", "--precisions", "bf16"],
            70.0,
            "pretraining step, base config, bf16, batch 64, vs official",
        ),
        Stage(
            "train_base_b128",
            [*train, "--config", "base", "--batch", "128", "--precisions", "bf16"],
            80.0,
            "pretraining step, base config, bf16, batch 128, vs official",
        ),
        Stage(
            "retrieval_base",
            [
                python, str(BENCH / "retrieval_eval.py"), "--preset", "base", "--device", "cuda",
                "--images", "256", "--k", "256", "--precision", "bf16", "fp32",
                "--repeats", "1", "--reference-sample", "16", "--itm-batch", "1024",
                "--kv-chunk", "256", "--json", *off,
            ],
            130.0,
            "retrieval evaluation, base preset, 384 px, k = 256, vs official",
        ),
    ]  # fmt: skip


def _dynamic_version(root: Path, project: dict[str, Any]) -> str:
    """``__version__`` of the file hatch reads a dynamic version from (``0`` when none)."""
    rel = project.get("tool", {}).get("hatch", {}).get("version", {}).get("path")
    if rel and (root / rel).is_file():
        found = re.search(r"^__version__\s*=\s*[\"']([^\"']+)", (root / rel).read_text(), re.M)
        if found:
            return found.group(1)
    return "0"


def write_dist_info(site: Path) -> list[str]:
    """A minimal ``.dist-info`` (METADATA, entry_points.txt) in ``site`` per xfm package that is
    not installed, so that the working tree's ``src`` folders on ``PYTHONPATH`` behave as
    installed packages; returns the names written."""
    names = []
    for short in PACKAGES:
        root = REPO / "packages" / f"xfm-{short}"
        project = tomllib.loads((root / "pyproject.toml").read_text())
        meta = project["project"]
        name, version = meta["name"], meta.get("version") or _dynamic_version(root, project)
        try:  # already installed (e.g. editable): its entry points are found; add none twice
            importlib.metadata.distribution(name)
            continue
        except importlib.metadata.PackageNotFoundError:
            pass
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
        )
        lines = []
        for group, entries in meta.get("entry-points", {}).items():
            lines.append(f"[{group}]")
            lines += [f"{key} = {value}" for key, value in entries.items()]
            lines.append("")
        for group, key in (("scripts", "console_scripts"), ("gui-scripts", "gui_scripts")):
            if meta.get(group):
                lines.append(f"[{key}]")
                lines += [f"{k} = {v}" for k, v in meta[group].items()]
                lines.append("")
        (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
        names.append(name)
    return names


def prepare_env(carry: Path, site: Path, dry_run: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """The children's environment (carried wheels, then the working tree's packages, first on
    ``PYTHONPATH``) and what was done to build it."""
    info: dict[str, Any] = {"site": str(site)}
    wheels = sorted((carry / "wheels").glob("*.whl")) if (carry / "wheels").is_dir() else []
    info["wheels"] = [w.name for w in wheels]
    pip = [
        sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels),
    ]  # fmt: skip
    if wheels:
        info["pip"] = shlex.join(pip)
    if not dry_run:
        site.mkdir(parents=True, exist_ok=True)
        if wheels:
            out = subprocess.run(pip, capture_output=True, text=True, check=False)
            info["pip_returncode"] = out.returncode
            if out.returncode != 0:
                info["pip_error"] = out.stderr[-2000:]
        info["dist_info"] = write_dist_info(site)
    srcs = [str(REPO / "packages" / f"xfm-{p}" / "src") for p in PACKAGES]
    old = os.environ.get("PYTHONPATH")
    path = os.pathsep.join([str(site), *srcs, *([old] if old else [])])
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    return env, info


def probe(env: dict[str, str]) -> dict[str, Any]:
    """Versions and capabilities seen by the children's interpreter."""
    code = r"""
import importlib, importlib.metadata as md, json
out = {}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name()
        out["capability"] = list(torch.cuda.get_device_capability())
except Exception as e:
    out["torch_error"] = repr(e)
for mod in ("transformers", "timm", "tokenizers", "xformers", "streaming"):
    try:
        out[mod] = importlib.import_module(mod).__version__
    except Exception as e:
        out[mod] = f"unavailable: {type(e).__name__}: {str(e)[:160]}"
try:
    import xfm.core, xfm.tasks, xfm.train
    from xfm.core.attention import runnable_backends
    out["xfm"] = "ok"
    out["objectives"] = sorted(e.name for e in md.entry_points(group="xfm.objective"))
    if out.get("cuda"):
        out["attention_backends"] = runnable_backends("cuda")
except Exception as e:
    out["xfm"] = f"error: {type(e).__name__}: {str(e)[:300]}"
print(json.dumps(out))
"""
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": res.stderr[-2000:]}


def run_stage(stage: Stage, env: dict[str, str], log: Path, timeout: float) -> dict[str, Any]:
    """Run one stage with ``timeout`` (its process group killed when over); its record."""
    t0 = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(stage.cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            stage.cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        timed_out = False
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    text = log.read_text(encoding="utf-8", errors="replace")
    rows = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    # a benchmark reports a failed row (xfm or official) in the row and still exits 0
    errors = [r for r in rows if "error" in r or "error" in r.get("official", {})]
    return {
        "cmd": shlex.join(stage.cmd),
        "budget_s": stage.budget_s,
        "timeout_s": round(timeout, 1),
        "wall_s": round(time.monotonic() - t0, 1),
        "returncode": code,
        "timed_out": timed_out,
        "row_errors": len(errors),
        "ok": code == 0 and not timed_out and not errors,
        "log": log.name,
        "rows": rows,
        "tail": text[-1500:] if code != 0 or timed_out else "",
    }


def junit_counts(path: Path) -> dict[str, int] | None:
    """Test counts from a JUnit XML file (``None`` if it is missing or unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def main(argv: list[str] | None = None) -> int:
    """Run (or on CPU, describe) every stage; write ``OUTDIR/summary.json``."""
    ap = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path, help="folder for summary.json and the logs")
    ap.add_argument("--official", type=Path, default=None, help="official benchmark folder")
    ap.add_argument("--carry", type=Path, default=REPO / ".gpu_carry", help="carried wheels etc.")
    ap.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="all stages together")
    ap.add_argument("--only", nargs="+", default=None, help="run only these stages")
    ap.add_argument("--dry-run", action="store_true", help="describe, run nothing")
    args = ap.parse_args(argv)
    started = time.monotonic()
    if args.budget_s <= 0:
        fail(f"--budget-s must be positive; got {args.budget_s}")
    if args.official is not None and not (args.official / "bench_official_gpu.py").is_file():
        fail(f"--official {args.official}: no bench_official_gpu.py there")
    if args.outdir.exists() and not args.outdir.is_dir():
        fail(f"{args.outdir} exists and is not a folder")
    official = args.official or default_official(args.carry)
    stages = plan(args.outdir.resolve(), official, sys.executable)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in stages})
        if unknown:
            fail(f"--only: unknown stage(s) {unknown}; stages: {[s.name for s in stages]}")
        stages = [s for s in stages if s.name in args.only]

    import torch  # after argument checks: a usage error answers at once

    cuda = torch.cuda.is_available()
    dry = args.dry_run or not cuda
    args.outdir.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.gettempdir()) / "xfm_gpu_check_site"
    env, setup = prepare_env(args.carry, site, dry)
    summary: dict[str, Any] = {
        "dry_run": dry,
        "reason": None if not dry else ("--dry-run" if cuda else "no CUDA device here"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "budget_s": args.budget_s,
        "official_dir": None if official is None else str(official),
        "setup": setup,
        "stages": {},
    }
    if dry:
        print(f"gpu_check: {summary['reason']}; would run (total budget {args.budget_s:.0f} s):")
        if setup.get("pip"):
            print(f"  setup: {setup['pip']}")
        print(f"  setup: PYTHONPATH={env['PYTHONPATH']} (+ xfm .dist-info in {site})")
        for s in stages:
            print(f"  [{s.name}] budget {s.budget_s:.0f} s: {s.what}\n    {shlex.join(s.cmd)}")
            summary["stages"][s.name] = {"cmd": shlex.join(s.cmd), "budget_s": s.budget_s}
        if official is None:
            print("  (no official benchmark folder found: the bench stages run xfm only)")
        (args.outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.outdir / 'summary.json'}")
        return 0

    summary["env"] = probe(env)
    print(f"gpu_check: {json.dumps(summary['env'])}", flush=True)
    ok = setup.get("pip_returncode", 0) == 0 and summary["env"].get("xfm") == "ok"
    for s in stages:
        left = args.budget_s - (time.monotonic() - started)
        if left < 5:
            summary["stages"][s.name] = {"cmd": shlex.join(s.cmd), "skipped": "out of budget"}
            ok = False
            continue
        log = args.outdir / ("pytest.log" if s.name == "tests" else f"{s.name}.log")
        print(f"[{s.name}] {s.what} (budget {min(s.budget_s, left):.0f} s)", flush=True)
        rec = run_stage(s, env, log, min(s.budget_s, left))
        if s.name == "tests":
            rec["counts"] = junit_counts(args.outdir / "pytest.xml")
        summary["stages"][s.name] = rec
        ok = ok and rec["ok"]
        state = "ok" if rec["ok"] else ("TIMEOUT" if rec["timed_out"] else "FAILED")
        print(f"[{s.name}] {state} in {rec['wall_s']:.0f} s", flush=True)
    summary["ok"] = ok
    summary["wall_s"] = round(time.monotonic() - started, 1)
    (args.outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"gpu_check: {'ok' if ok else 'FAILED'} in {summary['wall_s']:.0f} s; {args.outdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

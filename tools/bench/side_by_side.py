"""Helpers shared by the side-by-side benchmarks (``train_step.py``, ``retrieval_eval.py``) and
``tools/gpu_check.py``: user errors, the official benchmark folder, child processes with their
own peak RSS, the CPU's bf16 units."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[2]
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors end in one ``error: ...`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    """Report a user error as one ``error: ...`` line and exit with code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def cpu_bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str] | None:
    """The bf16 instruction sets the CPU advertises (``amx_bf16``, ``avx512_bf16``); ``[]`` when
    it has none, ``None`` when ``cpuinfo`` cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return [f for f in BF16_FLAGS if f in flags]


def default_official_dir() -> Path | None:
    """The official benchmarks: ``../shared/official_bench`` beside the repository, else the copy
    carried to a GPU machine in ``.gpu_carry/official_bench`` (see ``tools/gpu_check.py``)."""
    for here in (REPO.parent / "shared" / "official_bench", REPO / ".gpu_carry" / "official_bench"):
        if (here / "bench_official.py").is_file():
            return here
    return None


def own_hwm_mb() -> float:
    """This process's own resident high-water mark (MiB): ``VmHWM`` of its memory map, which is
    what a child inherits (``ru_maxrss`` also holds what this process inherited itself)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_measured(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``cmd`` to completion; its return code, stdout, stderr and own peak RSS (MiB).

    The peak RSS is this child's alone (``os.wait4``), not the maximum over every child so far
    as ``RUSAGE_CHILDREN`` would give. Linux carries the parent's peak RSS at spawn time into
    the child's figure (fork and exec keep the high-water mark), so it is exact only above
    ``parent_peak_rss_mb``, which is returned too: spawn from a small process (``train_step.py``'s
    parent imports no torch).
    """
    parent = own_hwm_mb()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                status = -1
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status) if status != -1 else -9
        out.seek(0)
        err.seek(0)
        return {
            "returncode": proc.returncode,
            "stdout": out.read(),
            "stderr": err.read(),
            "peak_rss_mb": usage.ru_maxrss / 1024,  # KiB on Linux
            "parent_peak_rss_mb": parent,
            "timed_out": status == -1,
        }


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None

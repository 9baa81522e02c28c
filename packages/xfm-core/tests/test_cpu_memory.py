"""``keep_freed_memory``: a process-wide glibc setting, so it runs in a child process here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xfm.core import cpu_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_takes_effect_on_glibc():
    code = (
        "import platform, torch\n"
        "from xfm.core.cpu_memory import keep_freed_memory\n"
        "print(platform.libc_ver()[0], keep_freed_memory())\n"
        "x = torch.ones(3_000_000); del x  # a 12 MB block: from the heap now, then kept\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    libc, ok = out.stdout.split()
    assert ok == ("True" if libc == "glibc" else "False")


def test_keep_freed_memory_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(cpu_memory.sys, "platform", "darwin")
    assert cpu_memory.keep_freed_memory() is False

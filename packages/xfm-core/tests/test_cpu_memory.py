"""``keep_freed_memory``: a process-wide glibc setting, so it runs in a child process here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xfm.core import cpu_memory

_FAULTS = """
import platform, resource, torch
from xfm.core.cpu_memory import keep_freed_memory
ok = keep_freed_memory() if {keep} else None

def faults():  # page faults of allocating and touching a 96 MB tensor freed just before
    first = torch.ones(24_001_000)  # a little larger: the aligned request fits in its block
    later = torch.ones(24_000_000)  # as in a training step: the freed block is not the top
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    again = torch.ones(24_000_000)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
print(platform.libc_ver()[0], ok, faults())
"""


def _second_faults(keep: bool) -> tuple[str, str, int]:
    code = _FAULTS.format(keep=keep)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    libc, ok, faults = out.stdout.split()
    return libc, ok, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_reuses_a_large_block_without_page_faults():
    libc, ok, kept = _second_faults(True)
    assert ok == ("True" if libc == "glibc" else "False")
    if libc != "glibc":
        pytest.skip("not glibc")
    _, _, default = _second_faults(False)
    # 96 MB = 23,437 pages of 4 KiB: glibc's default mmaps it afresh (every page faults again);
    # kept, the block is reused from the heap.
    assert default > 10_000
    assert kept < 1_000


def test_keep_freed_memory_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(cpu_memory.sys, "platform", "darwin")
    assert cpu_memory.keep_freed_memory() is False

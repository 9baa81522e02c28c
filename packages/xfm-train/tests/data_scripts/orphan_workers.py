"""Start a loader whose 2 workers get stuck in a slow sample, print their pids, then block.

Usage: python orphan_workers.py DATASET_DIR. The test SIGKILLs this process and checks that the
workers do not outlive it (used by test_trust_data).
"""

from __future__ import annotations

import sys
import time

from xfm.train.data import LoaderConfig, SourceConfig, SourceLoader


def stuck(raw: dict, sample_id: int, epoch: int) -> dict:
    """A processor that never returns (a hung decode or download)."""
    time.sleep(3600)
    return raw


def main() -> None:
    ld = SourceLoader(
        "image", SourceConfig(sys.argv[1], 2), LoaderConfig(num_workers=2), processor=stuck
    )
    ld._start_epoch()
    print(" ".join(str(w.pid) for w in ld._iter._workers), flush=True)
    ld.next_batch()


if __name__ == "__main__":
    main()

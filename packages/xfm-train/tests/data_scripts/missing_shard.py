"""Repeat the missing-shard case; print one JSON line per repetition (used by test_trust_data).

Usage: python missing_shard.py DATASET_URL SHARD_NAME REPETITIONS CACHE_DIR

Each repetition copies nothing: odd ones open the dataset after the shard is gone (the check at
start-up), even ones remove it after the loader was built (the workers meet it mid-epoch), with
0 or 2 loader workers in turn. The shard is put back after each repetition.
"""

from __future__ import annotations

import json
import sys
import time

from xfm.core.checkpoint.storage import resolve
from xfm.train.data import ImageProcessor, LoaderConfig, ProcessConfig, SourceConfig, SourceLoader


def main() -> None:
    url, shard, reps, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    fs, path = resolve(url)
    target = path.rstrip("/") + "/" + shard
    data = fs.cat_file(target)
    pc = ProcessConfig(image_size=16, patch_size=8, mim_ratio=0.5, seed=1)
    for rep in range(reps):
        workers = 2 * (rep // 2 % 2)
        late = rep % 2 == 0
        t0 = time.monotonic()
        ld = None
        try:
            if not late:
                fs.rm(target)
            ld = SourceLoader(
                "image",
                SourceConfig(url, 4),
                LoaderConfig(num_workers=workers, timeout_s=30, cache_dir=f"{cache}/{rep}"),
                processor=ImageProcessor(pc),
            )
            if late:
                fs.rm(target)
            for _ in range(100):
                ld.next_batch()
            result = {"error": None}
        except Exception as exc:  # what the user would see
            result = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            if ld is not None:
                ld.close()
            fs.pipe_file(target, data)
            fs.invalidate_cache()
        result.update(rep=rep, workers=workers, late=late, seconds=time.monotonic() - t0)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

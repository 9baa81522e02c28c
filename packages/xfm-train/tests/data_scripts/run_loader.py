"""Run a multi-source loader for some steps in a fresh process (used by the resume and
torchrun tests).

Usage: python run_loader.py CONFIG.json OUT.json

CONFIG: {"sources": {name: {"url", "batch_size"}}, "seed", "num_workers", "steps",
         "load_state": path or null, "save_state": path or null}
OUT: {"keys": {source: [sample keys in order]}, "rank": int}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from xfm.train.data import (
    ImageProcessor,
    LoaderConfig,
    MultiSourceLoader,
    ProcessConfig,
    SourceConfig,
)


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    sources = {n: SourceConfig(**s) for n, s in cfg["sources"].items()}
    pc = ProcessConfig(image_size=32, patch_size=8, seed=cfg["seed"])
    processors = {"image": ImageProcessor(pc)} if "image" in sources else {}
    loader = MultiSourceLoader(
        sources,
        LoaderConfig(seed=cfg["seed"], num_workers=cfg["num_workers"]),
        processors=processors,
    )
    if cfg.get("load_state"):
        loader.load_state_dict(json.loads(Path(cfg["load_state"]).read_text()))
    keys: dict[str, list[str]] = {n: [] for n in loader.sources}
    masks: list[list[bool]] = []
    for _ in range(cfg["steps"]):
        step = loader.next_step()
        for name, batch in step.items():
            if isinstance(batch, list):
                keys[name] += [s["id"] for s in batch]
            else:
                keys[name] += batch.keys
                if name == "image":
                    masks += batch.image_mask.tolist()
    if cfg.get("save_state"):
        Path(cfg["save_state"]).write_text(json.dumps(loader.state_dict()))
    loader.close()
    rank = int(os.environ.get("RANK", "0"))
    out = sys.argv[2].replace("RANK", str(rank))
    Path(out).write_text(json.dumps({"keys": keys, "rank": rank, "masks": masks}))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

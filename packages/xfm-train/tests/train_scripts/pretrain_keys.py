"""Run alone or under torchrun: pretrain with the Trainer and record the samples each rank reads.

``pretrain_keys.py CONFIG OUT RESUME UNTIL``: trains the run of ``CONFIG`` (resuming from the
checkpoint URL ``RESUME`` unless it is ``-``) up to step ``UNTIL`` (``-``: the configured
steps) and appends ``EPOCH KEY`` lines, one per ``image_text`` sample of the training steps,
to ``OUT-RANK.txt``.
"""

from __future__ import annotations

import sys
from typing import Any

from xfm.train.config import load_pretrain_config
from xfm.train.distributed import get_rank
from xfm.train.trainer import Trainer


def main() -> None:
    config, out, resume, until = sys.argv[1:5]
    trainer = Trainer(
        load_pretrain_config(config), resume=False if resume == "-" else resume, print_fn=print
    )
    lines: list[str] = []
    try:
        trainer.setup()  # (its probe step reads a batch and rewinds: not recorded)
        source = trainer.loader.loaders["image_text"]
        read = source.next_batch

        def recording() -> Any:
            batch = read()  # (``epoch`` is that of the batch once it is read)
            lines.extend(f"{source.epoch} {key}\n" for key in batch.keys)
            return batch

        source.next_batch = recording  # type: ignore[method-assign]
        trainer.fit(until=None if until == "-" else int(until))
        with open(f"{out}-{get_rank()}.txt", "a") as f:
            f.write("".join(lines))
    finally:
        trainer.close()


if __name__ == "__main__":
    main()

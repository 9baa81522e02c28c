"""``xfm finetune`` under torchrun (or one process as the reference), then every rank saves its
final weights and per-step losses (``python dist_finetune.py CONFIG OUT-RANK.pt [reference]``).

``reference`` (one process): the same optimizer steps on the union of what the ranks of a
two-rank run read per step: ``DistributedSampler``'s order of epoch 0 with one replica, in
batches of ``2 * batch_size * accumulate`` (what two ranks with ``accumulate`` micro-batches of
``batch_size`` take together), one micro-step each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(config: str, out: str, mode: str = "run") -> None:
    from torch.utils.data import DistributedSampler

    from xfm.core.config import load_config
    from xfm.tasks.base import FinetuneConfig
    from xfm.tasks.finetune import Finetuner, batch_samples, move_to
    from xfm.train.distributed import get_rank

    overrides = []
    if mode == "reference":  # its own run folder: the torchrun run's outputs are checked later
        overrides = ["train.accumulate=1", f"run_dir={Path(out).parent / 'reference_run'}"]
    cfg = load_config(FinetuneConfig, config, overrides)
    per_step = cfg.train.batch_size * 2 * (load_config(FinetuneConfig, config).train.accumulate)
    tuner = Finetuner(cfg, print_fn=lambda _: None)
    tuner.setup()
    if mode == "reference":
        data = tuner.train_data
        sampler = DistributedSampler(data.dataset, num_replicas=1, rank=0, seed=cfg.seed)
        sampler.set_epoch(0)
        order = list(sampler)
        chunks = iter([order[i : i + per_step] for i in range(0, len(order), per_step)])

        def next_batch():
            batch = data.collate([data.dataset[i] for i in next(chunks)])
            return move_to(batch, tuner.device), batch_samples(batch)

        tuner.model.train()
        for _ in range(cfg.train.steps):
            row = tuner.engine.train_step(next_batch, tuner.compute_loss)
            tuner.engine.history.append(row)
    else:
        tuner.fit()
    losses = [h["loss"] for h in tuner.engine.history]
    state = {k: v.detach().clone() for k, v in tuner.model.state_dict().items()}
    torch.save({"state": state, "losses": losses}, out.replace("RANK", str(get_rank())))
    tuner.close()


if __name__ == "__main__":
    main(*sys.argv[1:])

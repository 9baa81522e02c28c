"""Run under torchrun: ITC with all-gathered features on each rank's shard of a fixed batch.

Writes ``OUT-RANK.pt`` with the loss and the gradient of the local features.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from xfm.train.objectives import itc_loss


def main() -> None:
    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    # uneven shards: rank r holds 3 + r pairs
    sizes = [3 + r for r in range(world)]
    fi = torch.nn.functional.normalize(torch.randn(sum(sizes), 8, generator=g), dim=-1)
    ft = torch.nn.functional.normalize(torch.randn(sum(sizes), 8, generator=g), dim=-1)
    ids = torch.arange(sum(sizes)) // 2
    start = sum(sizes[:rank])
    local_i = fi[start : start + sizes[rank]].clone().requires_grad_(True)
    local_t = ft[start : start + sizes[rank]].clone().requires_grad_(True)
    temp = torch.tensor(0.1)
    loss = itc_loss(local_i, local_t, temp, ids[start : start + sizes[rank]], gather=True)
    loss.backward()
    torch.save(
        {"loss": loss.detach(), "grad_i": local_i.grad, "grad_t": local_t.grad, "start": start},
        out.replace("RANK", str(rank)),
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Retrieval score matrices of a fixed random model; under torchrun each rank takes its image
shard and rank 0 saves the result (``python dist_retrieval.py OUT``)."""

from __future__ import annotations

import sys

import torch

MODEL = {
    "embed_dim": 8,
    "text": {
        "name": "roberta",
        "vocab_size": 50,
        "width": 16,
        "layers": 1,
        "heads": 2,
        "ffn_dim": 32,
        "max_positions": 16,
        "type_vocab_size": 1,
    },
    "vision": {
        "name": "beit_v2",
        "image_size": 16,
        "patch_size": 8,
        "width": 16,
        "layers": 1,
        "heads": 2,
        "mlp_ratio": 2.0,
    },
    "fusion": {"name": "cross_attention", "layers": 2, "heads": 2, "ffn_dim": 32},
}


def compute() -> dict[str, torch.Tensor]:
    from xfm.tasks.retrieval import RetrievalModel, image_shard, retrieval_scores

    torch.manual_seed(0)
    model = RetrievalModel(MODEL).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.5)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(7, 3, 16, 16, generator=gen)
    ids = torch.randint(3, 50, (13, 6), generator=gen)
    mask = torch.ones(13, 6, dtype=torch.long)
    mask[::3, 4:] = 0
    shard = image_shard(7)
    res = retrieval_scores(
        model,
        images[shard.start : shard.stop].split(2),
        list(zip(ids.split(5), mask.split(5))),
        3,
        itm_batch_size=4,
        kv_chunk=2,
    )
    return {"sims_i2t": res.sims_i2t, "score_i2t": res.score_i2t, "score_t2i": res.score_t2i}


if __name__ == "__main__":
    import torch.distributed as dist

    dist.init_process_group("gloo")
    out = compute()
    if dist.get_rank() == 0:
        torch.save(out, sys.argv[1])
    dist.destroy_process_group()

"""Image-text retrieval (COCO / Flickr30k Karpathy splits): id-aware ITC + ITM fine-tuning and
the official two-stage evaluation, made fast.

Evaluation (SPEC section 6, golden_tasks/README.md): ``sims = image_feat @ text_feat.T`` (no
temperature); for each image the ``k_test`` texts with the highest sims get the ITM score
``itm_head(fusion(image, text))[:, 1]`` (raw logit), every other entry is -100.0; the same for
each text over images, independently. :func:`retrieval_scores` reproduces those matrices but

* encodes every image and every text once;
* computes the union of the (image, text) candidate pairs of both directions once (a pair
  that is a candidate both ways is fused once and written to both matrices);
* computes each image's per-layer cross-attention keys/values once and reuses them for all its
  candidates (the official loop recomputes them for every candidate row);
* runs the candidates in large batches of pairs from several images;
* shards the images over ranks under ``torchrun`` (each rank fuses the pairs of its images;
  the score matrices are summed over ranks), with a progress bar on rank 0;
* optionally runs under bf16 autocast (scores within the golden tolerance at small scale;
  check on your model with ``tools/bench/retrieval_eval.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from xfm.fusion.model import XFMConfig
from xfm.tasks.base import (
    Task,
    TaskData,
    TaskDataSection,
    TaskModel,
    concat_outputs,
    run_batches,
)
from xfm.tasks.base_data import ImageReader, read_annotations, require, tokenize
from xfm.tasks.metrics import retrieval_recall
from xfm.train.data.batches import ImageTextBatch
from xfm.train.distributed import get_rank, get_world_size, is_distributed
from xfm.train.objectives import ITC, ITM, BatchContext

__all__ = [
    "RetrievalModel",
    "RetrievalScores",
    "RetrievalTask",
    "encode_images",
    "encode_texts",
    "retrieval_scores",
]

FILLER = -100.0


class RetrievalModel(TaskModel):
    """``XFMForRetrieval``: the encoders, ``vision_proj``/``text_proj``/``temp`` and ``itm_head``
    (the fusion MLM head is kept as in the official layout)."""

    keep_heads: ClassVar[tuple[str, ...]] = (
        "fusion_mlm_head",
        "vision_proj",
        "text_proj",
        "temp",
        "itm_head",
    )
    task_name: ClassVar[str] = "retrieval"

    def forward(
        self,
        image: torch.Tensor,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        idx: torch.Tensor,
        generator: torch.Generator | None = None,
        negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
        itm_uniform_mix: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Training losses ``{"itc", "itm"}`` of pairs (``image`` ``[B,3,H,W]``, text ``[B,T]``)
        with image ids ``idx`` ``[B]``: id-aware ITC (all-gathered, logits / temp, no clamp)
        and ITM with hard negatives drawn with same-id entries excluded (or fixed
        ``negatives``; ``itm_uniform_mix``: see :class:`~xfm.train.objectives.ITM`)."""
        batch = ImageTextBatch(
            index=idx,
            keys=[""] * idx.shape[0],
            image=image,
            text_ids=text_ids,
            text_mask=text_mask,
            image_index=idx,
        )
        ctx = BatchContext(self, "image_text", batch, generator=generator, negatives=negatives)
        out = ITC(gather=True, id_aware=True)(ctx)
        out.update(ITM(id_aware=True, uniform_mix=itm_uniform_mix)(ctx))
        return out


# ----------------------------------------------------------------------------- encoding
def encode_images(
    model: nn.Module,
    images: Any,
    device: torch.device,
    autocast: Callable[[], Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision states ``[I, 1+N, Dv]`` and ITC features ``[I, E]`` (fp32) of image batches
    ``[b, 3, H, W]`` (any iterable), through the task evaluation loop."""

    def step(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        v = model.encode_image(batch)
        return {
            "states": v,
            "feat": nn.functional.normalize(model.vision_proj(v[:, 0]).float(), dim=-1),
        }

    out = concat_outputs(run_batches(images, step, device=device, autocast=autocast))
    return out["states"], out["feat"]


def _by_length(rows: torch.Tensor, lengths: torch.Tensor, size: int) -> Any:
    """``(batch rows, longest length in the batch)`` over ``rows`` sorted by ``lengths``
    (stable), ``size`` rows a batch: batches to run trimmed to their longest text."""
    order = rows[torch.sort(lengths[rows], stable=True).indices]
    for b in range(0, len(order), size):
        batch = order[b : b + size]
        yield batch, int(lengths[batch].max())


def encode_texts(
    model: nn.Module,
    texts: Any,
    device: torch.device,
    autocast: Callable[[], Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Text states ``[T, L, Dt]`` (zero-padded to the longest text), masks ``[T, L]`` and ITC
    features ``[T, E]`` of ``(ids, mask)`` batches (right-padded), through the task evaluation
    loop, in the input order.

    The texts are encoded sorted by length, in batches of the first input batch's size, each
    trimmed to its longest text: the same outputs as the input batches (padding keys are
    masked) without running the encoder on padding."""
    given = [(ids.cpu(), mask.cpu()) for ids, mask in texts]
    if not given:
        raise ValueError("encode_texts: no text batches")
    size = max(1, given[0][0].shape[0])
    width = max(ids.shape[1] for ids, _ in given)
    ids = torch.cat([nn.functional.pad(i, (0, width - i.shape[1])) for i, _ in given])
    mask = torch.cat([nn.functional.pad(m, (0, width - m.shape[1])) for _, m in given])
    lengths = (mask != 0).long().cumsum(1).argmax(1) + 1  # last real token + 1
    count = len(lengths)
    batches = (
        (rows, ids[rows, :n], mask[rows, :n])
        for rows, n in _by_length(torch.arange(count), lengths, size)
    )
    out: dict[str, torch.Tensor] = {}
    longest = int(lengths.max())

    def step(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows, ids, mask = batch
        s = model.encode_text(ids, mask)
        f = nn.functional.normalize(model.text_proj(s[:, 0]).float(), dim=-1)
        if not out:  # the outputs, in input order, filled batch by batch
            out["states"] = s.new_zeros(count, longest, s.shape[-1])
            out["feat"] = f.new_empty(count, f.shape[-1])
        out["states"][rows, : s.shape[1]] = s
        out["feat"][rows] = f
        return {}

    run_batches(batches, step, device=device, autocast=autocast)
    return out["states"], mask[:, :longest].to(out["states"].device), out["feat"]


# ---------------------------------------------------------------------------- ranking
@dataclass
class RetrievalScores:
    """The official evaluation matrices plus timings (seconds) and the pair count."""

    sims_i2t: torch.Tensor
    score_i2t: torch.Tensor
    score_t2i: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    pairs: int = 0


def _shard(n: int) -> tuple[int, int]:
    """Contiguous ``[start, end)`` of ``n`` items for this rank."""
    world, rank = get_world_size(), get_rank()
    per = -(-n // world)
    return min(n, rank * per), min(n, (rank + 1) * per)


def candidate_pairs(sims_i2t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``[I, T]`` masks of the official candidates: the top-``k`` texts of each image
    (``i2t``) and the top-``k`` images of each text (``t2i``, stored transposed)."""
    num_i, num_t = sims_i2t.shape
    i2t = torch.zeros_like(sims_i2t, dtype=torch.bool)
    i2t.scatter_(1, sims_i2t.topk(min(k, num_t), dim=1).indices, True)
    t2i = torch.zeros(num_t, num_i, dtype=torch.bool, device=sims_i2t.device)
    t2i.scatter_(1, sims_i2t.t().topk(min(k, num_i), dim=1).indices, True)
    return i2t, t2i.t()


def _pair_batches(
    pairs: torch.Tensor, sel: torch.Tensor, chunk: torch.Tensor, batch_size: int, per_image: bool
) -> Any:
    """``(pair indices, local image row or None)`` batches of a chunk's length-sorted pairs."""
    if not per_image:
        for b in range(0, len(sel), batch_size):
            yield sel[b : b + batch_size], None
        return
    local = torch.searchsorted(chunk, pairs[sel, 0])
    for row in range(len(chunk)):
        mine = sel[local == row]
        for b in range(0, len(mine), batch_size):
            yield mine[b : b + batch_size], row


def _itm_batches(
    pairs: torch.Tensor,
    lengths: torch.Tensor,
    batch_size: int,
    kv_chunk: int,
    per_image: bool,
) -> Any:
    """The re-ranking batches of :func:`itm_scores`: ``{"start": first image of the chunk,
    "chunk": image rows whose K/V are held, "idx": pair indices, "single": local image row or
    None}``, chunk by chunk."""
    images, counts = torch.unique_consecutive(pairs[:, 0], return_counts=True)
    ends = counts.cumsum(0).tolist()
    for c in range(0, len(images), kv_chunk):
        chunk = images[c : c + kv_chunk]
        lo = ends[c - 1] if c else 0
        hi = ends[min(c + kv_chunk, len(images)) - 1]
        sel = torch.arange(lo, hi, device=pairs.device)
        sel = sel[torch.sort(lengths[pairs[sel, 1]], stable=True).indices]
        for idx, single in _pair_batches(pairs, sel, chunk, batch_size, per_image):
            yield {"start": c, "chunk": chunk, "idx": idx, "single": single}


def _text_self_attention(
    encoder: nn.Module,
    text_states: torch.Tensor,
    text_mask: torch.Tensor,
    lengths: torch.Tensor,
    texts: torch.Tensor,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], Any] | None,
) -> torch.Tensor:
    """The fusion encoder's ``text_self_attention`` of the rows ``texts`` (others zero), in
    length-sorted batches trimmed to their longest text: ``[T, L, Dt]``."""
    out = torch.zeros_like(text_states)

    def step(batch: tuple[torch.Tensor, int]) -> dict[str, Any]:
        rows, n = batch
        out[rows, :n] = encoder.text_self_attention(text_states[rows, :n], text_mask[rows, :n])
        return {}

    run_batches(_by_length(texts, lengths, batch_size), step, device=device, autocast=autocast)
    return out


def itm_scores(
    model: nn.Module,
    image_states: torch.Tensor,
    text_states: torch.Tensor,
    text_mask: torch.Tensor,
    pairs: torch.Tensor,
    batch_size: int = 256,
    autocast: Callable[[], Any] | None = None,
    progress: bool = False,
    kv_chunk: int = 64,
    per_image: bool | None = None,
) -> torch.Tensor:
    """Raw ITM class-1 logits ``[P]`` (fp32) of ``pairs`` ``[P, 2]`` = (image row, text row).

    ``pairs`` must be sorted by image. Images are taken ``kv_chunk`` at a time: their per-layer
    cross-attention keys/values are computed once, then the chunk's pairs run sorted by text
    length in batches of ``batch_size``, each trimmed to its longest text, gathering the K/V rows
    of their images (memory: ``kv_chunk`` images' K/V plus one batch's). With ``per_image``
    (default: when images have at least 32 candidates on average) each batch
    holds the candidates of one image and runs through the model's ``pair_vectors`` (the fusion
    encoder's unpadded path: :mod:`xfm.fusion.packed`; the first layer's self-attention of each
    text is then computed once, not once per image) or reads its K/V as a broadcast view.
    The batches run through the task evaluation loop (:func:`~xfm.tasks.base.run_batches`).
    """
    device = image_states.device
    pairs = pairs.to(device)
    out = torch.empty(pairs.shape[0], dtype=torch.float32, device=device)
    if pairs.numel() == 0:
        return out
    lengths = text_mask.sum(1)
    if per_image is None:
        per_image = pairs.shape[0] >= 32 * len(torch.unique_consecutive(pairs[:, 0]))
    enc = getattr(model, "fusion_encoder", None)
    shared = None  # the first fusion layer's self-attention of each text, computed once
    if per_image and hasattr(enc, "text_self_attention") and not enc.training:
        shared = _text_self_attention(
            enc,
            text_states,
            text_mask,
            lengths,
            pairs[:, 1].unique(),
            batch_size,
            device,
            autocast,
        )
    packed = getattr(model, "pair_vectors", None)
    held: dict[str, Any] = {}  # the K/V of the current chunk of images

    def step(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        chunk, idx, single = batch["chunk"], batch["idx"], batch["single"]
        if held.get("start") != batch["start"]:
            held.clear()
            held["kv"] = model.fusion_image_kv(image_states[chunk])
            held["start"] = batch["start"]
        kv = held["kv"]
        texts = pairs[idx, 1]
        length = int(lengths[texts].max())
        if single is not None and (shared is not None or packed is not None):
            one = [(k[single : single + 1], v[single : single + 1]) for k, v in kv]
            mask = text_mask[texts, :length]
            if shared is not None:  # one image, packed, the texts' own first sublayer done
                vectors = enc.pair_vectors(shared[texts, :length], mask, one, text_done=True)
            else:  # one image, packed (no padding)
                vectors = packed(text_states[texts, :length], mask, one)
            return {"idx": idx, "score": model.itm_logits(vectors[:, None])[:, 1].float()}
        if single is not None:
            shape = (len(idx), -1, -1, -1)
            kv_b = [
                (k[single : single + 1].expand(shape), v[single : single + 1].expand(shape))
                for k, v in kv
            ]
        else:
            rows = torch.searchsorted(chunk, pairs[idx, 0])
            kv_b = [(k[rows], v[rows]) for k, v in kv]
        fused = model.fuse(text_states[texts, :length], text_mask[texts, :length], image_kv=kv_b)
        return {"idx": idx, "score": model.itm_logits(fused)[:, 1].float()}

    parts = run_batches(
        _itm_batches(pairs, lengths, batch_size, kv_chunk, per_image),
        step,
        device=device,
        autocast=autocast,
        progress=progress,
        desc="ITM re-ranking",
        unit="pair",
        total=pairs.shape[0],
        size=lambda batch: len(batch["idx"]),
    )
    held.clear()
    out[torch.cat(parts["idx"])] = torch.cat(parts["score"])
    return out


@torch.no_grad()
def retrieval_scores(
    model: nn.Module,
    image_batches: Any,
    text_batches: Any,
    k_test: int,
    *,
    device: torch.device | None = None,
    autocast: Callable[[], Any] | None = None,
    itm_batch_size: int = 256,
    kv_chunk: int = 64,
    progress: bool = False,
) -> RetrievalScores:
    """The official retrieval score matrices (see the module docstring).

    Args:
        model: a :class:`RetrievalModel` (or any XFM with ITC/ITM heads), in eval mode.
        image_batches: iterable of ``[b, 3, H, W]`` image batches in gallery order. Under
            ``torchrun`` each rank passes its contiguous shard (see :func:`image_shard`), in
            rank order.
        text_batches: iterable of ``(ids, mask)`` ``[b, L]`` batches (all texts, every rank).
        k_test: candidates re-ranked per image and per text.
        itm_batch_size: pairs per fusion pass; kv_chunk: images whose K/V are held at once.

    Returns:
        :class:`RetrievalScores` with ``sims_i2t`` ``[I, T]``, ``score_i2t`` ``[I, T]``,
        ``score_t2i`` ``[T, I]`` (fp32, -100.0 outside the candidates).
    """
    device = device or next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    image_states, image_feat = encode_images(model, image_batches, device, autocast)
    text_states, text_mask, text_feat = encode_texts(model, text_batches, device, autocast)
    start = 0
    if is_distributed():
        sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(get_world_size())]
        dist.all_gather(sizes, torch.tensor([image_feat.shape[0]], device=device))
        start = int(sum(int(s) for s in sizes[: get_rank()]))
        from xfm.train.distributed import all_gather_no_grad

        image_feat = torch.cat(all_gather_no_grad(image_feat))
    sync()
    t1 = time.perf_counter()
    sims = image_feat @ text_feat.t()
    i2t, t2i = candidate_pairs(sims, k_test)
    need = i2t | t2i
    local = need[start : start + image_states.shape[0]]
    pairs = local.nonzero()  # sorted by image row, then text
    sync()
    t2 = time.perf_counter()
    scores = itm_scores(
        model,
        image_states,
        text_states,
        text_mask,
        pairs,
        itm_batch_size,
        autocast,
        progress,
        kv_chunk,
    )
    dense = torch.zeros_like(sims)
    dense[pairs[:, 0] + start, pairs[:, 1]] = scores
    if is_distributed():
        dist.all_reduce(dense)
    filler = torch.full_like(sims, FILLER)
    score_i2t = torch.where(i2t, dense, filler)
    score_t2i = torch.where(t2i, dense, filler).t().contiguous()
    sync()
    t3 = time.perf_counter()
    return RetrievalScores(
        sims,
        score_i2t,
        score_t2i,
        {"encode": t1 - t0, "itc_rank": t2 - t1, "itm_rerank": t3 - t2},
        int(pairs.shape[0]),
    )


def image_shard(num_images: int) -> range:
    """The gallery rows this rank encodes under ``torchrun`` (contiguous)."""
    s, e = _shard(num_images)
    return range(s, e)


# -------------------------------------------------------------------------------- data
def _captions(item: dict[str, Any]) -> list[str]:
    cap = item["caption"]
    return [cap] if isinstance(cap, str) else list(cap)


class RetrievalTrainSet(torch.utils.data.Dataset):
    """One item per (image, caption) of a Karpathy-style annotation list
    (``{"image", "caption": str | [str], "image_id"}``); ``idx`` = index of the image id."""

    def __init__(self, items: list[dict[str, Any]], reader: ImageReader, seed: int = 0) -> None:
        self.reader = reader
        self.seed = seed
        ids: dict[str, int] = {}
        self.pairs: list[tuple[str, str, int]] = []
        for n, item in enumerate(items):
            require(item, ("image", "caption"), f"retrieval annotation #{n}")
            key = str(item.get("image_id", item["image"]))
            idx = ids.setdefault(key, len(ids))
            self.pairs += [(item["image"], c, idx) for c in _captions(item)]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int]:
        path, caption, idx = self.pairs[i]
        image, _ = self.reader(path, seed=self.seed * 1_000_003 + i)
        return image, caption, idx


class RetrievalEvalSet:
    """A retrieval test split: images (a dataset of tensors), texts, ``txt2img`` ``[T]``."""

    def __init__(self, items: list[dict[str, Any]], reader: ImageReader) -> None:
        self.images: list[str] = []
        self.texts: list[str] = []
        txt2img: list[int] = []
        for n, item in enumerate(items):
            require(item, ("image", "caption"), f"retrieval annotation #{n}")
            for c in _captions(item):
                self.texts.append(c)
                txt2img.append(n)
            self.images.append(item["image"])
        self.txt2img = torch.tensor(txt2img, dtype=torch.long)
        self.reader = reader

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.reader(self.images[i])[0]


def _train_collate(tokenizer: Any, max_tokens: int) -> Callable[[list[Any]], dict[str, Any]]:
    def collate(items: list[Any]) -> dict[str, Any]:
        ids, mask = tokenize(tokenizer, [c for _, c, _ in items], max_tokens)
        return {
            "image": torch.stack([im for im, _, _ in items]),
            "text_ids": ids,
            "text_mask": mask,
            "idx": torch.tensor([i for _, _, i in items], dtype=torch.long),
        }

    return collate


# -------------------------------------------------------------------------------- task
class RetrievalTask(Task):
    """Image-text retrieval. Options: ``k_test`` (candidates re-ranked by ITM: 256 COCO, 128
    Flickr), ``itm_batch_size`` (pairs per fusion pass in evaluation), ``kv_chunk`` (images
    whose cross-attention K/V are held at once), ``itc_weight`` /
    ``itm_weight``, ``itm_uniform_mix`` (share of uniform ITM negatives; 0 = official),
    ``max_eval_images`` (0: all; for quick checks)."""

    name: ClassVar[str] = "retrieval"
    metric: ClassVar[str] = "r_mean"
    official_layout: ClassVar[str | None] = "retrieval"
    default_options: ClassVar[dict[str, Any]] = {
        "k_test": 256,
        "itm_batch_size": 256,
        "kv_chunk": 64,
        "itc_weight": 1.0,
        "itm_weight": 1.0,
        "itm_uniform_mix": 0.0,
        "max_eval_images": 0,
    }

    def build_model(self, model_config: Mapping[str, Any] | XFMConfig) -> RetrievalModel:
        return RetrievalModel(model_config)

    def train_data(self, data: TaskDataSection, tokenizer: Any) -> TaskData:
        items = read_annotations(data.expand(data.train), "retrieval train")
        reader = ImageReader(data.expand(data.root), data.image_size, data.augment)
        return TaskData(
            RetrievalTrainSet(items, reader), _train_collate(tokenizer, data.max_tokens)
        )

    def eval_data(self, data: TaskDataSection, split: str, tokenizer: Any) -> TaskData:
        items = read_annotations(data.expand(data.eval[split]), f"retrieval {split}")
        if self.options["max_eval_images"]:
            items = items[: self.options["max_eval_images"]]
        reader = ImageReader(data.expand(data.root), data.image_size)
        gallery = RetrievalEvalSet(items, reader)
        max_tokens = data.max_tokens

        def texts(batch_size: int) -> Any:
            for s in range(0, len(gallery.texts), batch_size):
                yield tokenize(tokenizer, gallery.texts[s : s + batch_size], max_tokens)

        gallery.text_batches = texts  # type: ignore[attr-defined]
        return TaskData(gallery, torch.stack)

    def loss(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        parts = model(
            batch["image"],
            batch["text_ids"],
            batch["text_mask"],
            batch["idx"],
            generator,
            itm_uniform_mix=float(self.options["itm_uniform_mix"]),
        )
        total = (
            self.options["itc_weight"] * parts["itc"] + self.options["itm_weight"] * parts["itm"]
        )
        return {"loss": total, **parts}

    def scores(
        self,
        model: nn.Module,
        data: TaskData,
        *,
        batch_size: int = 64,
        device: torch.device | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: bool = False,
    ) -> RetrievalScores:
        """The official score matrices of a gallery (this rank's image shard under torchrun)."""
        gallery = data.dataset
        shard = image_shard(len(gallery))
        subset = torch.utils.data.Subset(gallery, list(shard))
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, collate_fn=data.collate)
        return retrieval_scores(
            model,
            loader,
            gallery.text_batches(batch_size),
            self.options["k_test"],
            device=device,
            autocast=autocast,
            itm_batch_size=self.options["itm_batch_size"],
            kv_chunk=self.options["kv_chunk"],
            progress=progress,
        )

    def evaluate(
        self,
        model: nn.Module,
        data: TaskData,
        *,
        batch_size: int = 64,
        device: torch.device | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: bool = False,
    ) -> dict[str, float]:
        result = self.scores(
            model, data, batch_size=batch_size, device=device, autocast=autocast, progress=progress
        )
        metrics = retrieval_recall(result.score_i2t, result.score_t2i, data.dataset.txt2img)
        itc_only = retrieval_recall(result.sims_i2t, result.sims_i2t.t(), data.dataset.txt2img)
        metrics["itc_r_mean"] = itc_only["r_mean"]
        metrics["chance_r1"] = 100.0 / len(data.dataset)
        return metrics

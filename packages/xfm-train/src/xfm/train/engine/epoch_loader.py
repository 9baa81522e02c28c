"""Endless training batches of a map-style dataset, epoch after epoch, resumable mid-epoch.

Fine-tuning datasets are map-style (``len`` + ``__getitem__``). :class:`EpochLoader` yields
their batches in a shuffled order per epoch (one process: a ``RandomSampler`` stream seeded
once; under ``torchrun``: ``DistributedSampler`` with ``set_epoch``) and its
:meth:`~EpochLoader.state_dict` (epoch, batches taken, the sampler generator at the start of
the epoch, the loader seed drawn at its start) lets a resumed run continue with exactly the batches the uninterrupted run takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from xfm.train.distributed import get_rank, get_world_size

__all__ = ["EpochLoader"]


class EpochLoader:
    """Batches of ``dataset`` forever; :meth:`next` returns the next one.

    Args:
        dataset: a map-style dataset.
        batch_size: per-rank batch size.
        collate: ``collate(list_of_items) -> batch``.
        seed: the order of every epoch (and the loader workers' seeds) follows from it.
        shuffle: shuffle each epoch (else dataset order).
        num_workers: data-loader worker processes.
        drop_last: drop an incomplete last batch (default: when the dataset holds at least
            one batch per rank).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        seed: int,
        shuffle: bool = True,
        num_workers: int = 0,
        drop_last: bool | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.world, self.rank = get_world_size(), get_rank()
        if drop_last is None:
            drop_last = len(dataset) >= batch_size * self.world  # type: ignore[arg-type]
        self.drop_last = drop_last
        self.epoch = 0
        self.batch_in_epoch = 0
        self._order = torch.Generator().manual_seed(seed)
        self._epoch_start = self._order.get_state()
        self._loader_seed: int | None = None
        self._it: Iterator[Any] | None = None

    def _indices(self) -> list[int]:
        """The sample order of the current epoch (this rank's part under torchrun)."""
        if self.world > 1:
            sampler = DistributedSampler(
                self.dataset, self.world, self.rank, shuffle=self.shuffle, seed=self.seed
            )
            sampler.set_epoch(self.epoch)
            return list(sampler)
        if not self.shuffle:
            return list(range(len(self.dataset)))  # type: ignore[arg-type]
        self._order.set_state(self._epoch_start)
        return list(RandomSampler(self.dataset, generator=self._order))

    def _start_epoch(self) -> None:
        if self._loader_seed is None:
            # as torch's DataLoader does at each epoch: the worker seed comes from the global
            # RNG (so the model's RNG stream is that of a plain DataLoader); a resumed run
            # restores it from the state instead of drawing again
            self._loader_seed = int(torch.empty((), dtype=torch.int64).random_().item())
        skip = self.batch_in_epoch * self.batch_size
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._indices()[skip:],
            collate_fn=self.collate,
            num_workers=self.num_workers,
            drop_last=self.drop_last,
            generator=torch.Generator().manual_seed(self._loader_seed),
        )
        self._it = iter(loader)

    def next(self) -> Any:
        """The next batch (a new epoch starts when the current one is exhausted)."""
        if self._it is None:
            self._start_epoch()
        assert self._it is not None
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch += 1
            self.batch_in_epoch = 0
            self._epoch_start = self._order.get_state()
            self._loader_seed = None
            self._start_epoch()
            batch = next(self._it)
        self.batch_in_epoch += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Position (epoch, batches taken in it) and the epoch's order generator state."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "order": self._epoch_start.clone(),
            "loader_seed": self._loader_seed,
            "world_size": self.world,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (same dataset, batch size and world size)."""
        for key in ("world_size", "batch_size"):
            mine = self.world if key == "world_size" else self.batch_size
            if int(state.get(key, mine)) != mine:
                raise ValueError(
                    f"cannot resume the data order: the checkpoint was taken with {key} "
                    f"{state[key]}, this run has {mine}"
                )
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self._epoch_start = state["order"].clone()
        self._loader_seed = state.get("loader_seed")
        self._it = None

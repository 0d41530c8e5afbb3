"""The order of training samples: shuffled per epoch, split across processes, resumable mid-epoch."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[int]):
    """Shuffled indices for one epoch, split across processes, able to start mid-epoch.

    The permutation depends only on (seed, epoch); process ``rank`` takes every ``world``-th
    index of it, so a resumed or distributed run sees exactly the samples it would have seen.
    """

    def __init__(self, length: int, *, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.length, self.seed, self.rank, self.world, self.shuffle = length, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch ``epoch``'s order, skipping this process's first ``start`` samples."""
        self.epoch, self.start = int(epoch), int(start)

    def per_rank(self) -> int:
        return self.length // self.world

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        mine = order[: self.per_rank() * self.world][self.rank :: self.world]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)

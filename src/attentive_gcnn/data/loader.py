"""``make_loader``: a DataLoader over batched ``__getitems__`` whose order and augmentation follow one seed."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler


class SeededBatch(list):
    """A list of indices carrying ``seed``, the seed of its batch's augmentation randomness, and its place in that
    batch: rows ``offset .. offset + len`` of ``total`` (a data-parallel rank's slice; the whole batch otherwise)."""

    def __init__(self, indices, seed: int, offset: int = 0, total: int | None = None):
        super().__init__(indices)
        self.seed, self.offset = seed, offset
        self.total = len(self) if total is None else total

    def __reduce__(self):  # pickles (to workers) with its seed and place
        return (SeededBatch, (list(self), self.seed, self.offset, self.total))


class SeededBatchSampler(Sampler[SeededBatch]):
    """Batches of ``sampler``'s indices; batch ``k`` carries the seed ``SeedSequence([seed, k])`` draws, so the
    augmentation of a batch depends only on (seed, k), never on the process or worker that loads it.

    With ``world`` > 1 it yields rank ``rank``'s slice of each batch, rows ``[rank * n // world, (rank + 1) * n //
    world)`` of its ``n``: the ranks together see exactly the batches of one process, each row once.
    """

    def __init__(
        self, sampler: Sampler[int], batch_size: int, seed: int, drop_last: bool = False, rank: int = 0, world: int = 1
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world), got rank {rank} of {world}")
        self.sampler, self.batch_size, self.seed, self.drop_last = sampler, batch_size, seed, drop_last
        self.rank, self.world = rank, world

    def _slice(self, batch: list[int], k: int) -> SeededBatch:
        n = len(batch)
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        return SeededBatch(batch[lo:hi], self._seed(k), offset=lo, total=n)

    def _seed(self, k: int) -> int:
        return int(np.random.SeedSequence([self.seed, k]).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def __iter__(self) -> Iterator[SeededBatch]:
        batch, k = [], 0
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield self._slice(batch, k)
                batch, k = [], k + 1
        if batch and not self.drop_last:
            yield self._slice(batch, k)

    def __len__(self) -> int:
        n = len(self.sampler) if isinstance(self.sampler, Sized) else 0
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def totals(self) -> list[int]:
        """The size of each whole batch (all ranks' slices together), in order."""
        n = len(self.sampler)
        sizes = [self.batch_size] * (n // self.batch_size)
        return sizes + ([n % self.batch_size] if n % self.batch_size and not self.drop_last else [])


def pass_through(batch):
    """Collate function for datasets whose ``__getitems__`` already returns the (x, y) batch."""
    return batch


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """A DataLoader yielding ``(x [B, C, H, W] float32, y [B] int64)`` from ``dataset.__getitems__``.

    Determinism: everything random is a function of ``seed`` (an int >= 0) alone. The shuffled order comes from a
    ``torch.Generator`` seeded with ``seed``; batch ``k`` carries the augmentation seed ``SeedSequence([seed, k])``,
    from which the dataset seeds a private generator, so augmentation never touches the global torch RNG and the
    batches are identical for ``num_workers=0`` and any ``num_workers > 0``. The workers' own seeds (torch,
    numpy, random) also derive from ``seed`` through the loader's generator. Pass a new seed every epoch (the
    trainer derives it from the run seed and the epoch) for fresh but reproducible shuffles and augmentations.
    ``rank``/``world``: a data-parallel rank's slice of every batch (:class:`SeededBatchSampler`).
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_sampler=SeededBatchSampler(sampler, batch_size, seed, drop_last, rank, world),
        collate_fn=pass_through,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )

"""``make_loader``: a DataLoader over batched ``__getitems__`` whose order and augmentation follow one seed."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler


class SeededBatch(list):
    """A list of indices carrying ``seed``: the seed of this batch's augmentation randomness."""

    def __init__(self, indices, seed: int):
        super().__init__(indices)
        self.seed = seed

    def __reduce__(self):  # pickles (to workers) with its seed
        return (SeededBatch, (list(self), self.seed))


class SeededBatchSampler(Sampler[SeededBatch]):
    """Batches of ``sampler``'s indices; batch ``k`` carries the seed ``SeedSequence([seed, k])`` draws, so the
    augmentation of a batch depends only on (seed, k), never on the process or worker that loads it."""

    def __init__(self, sampler: Sampler[int], batch_size: int, seed: int, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler, self.batch_size, self.seed, self.drop_last = sampler, batch_size, seed, drop_last

    def _seed(self, k: int) -> int:
        return int(np.random.SeedSequence([self.seed, k]).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def __iter__(self) -> Iterator[SeededBatch]:
        batch, k = [], 0
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield SeededBatch(batch, self._seed(k))
                batch, k = [], k + 1
        if batch and not self.drop_last:
            yield SeededBatch(batch, self._seed(k))

    def __len__(self) -> int:
        n = len(self.sampler) if isinstance(self.sampler, Sized) else 0
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


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
) -> DataLoader:
    """A DataLoader yielding ``(x [B, C, H, W] float32, y [B] int64)`` from ``dataset.__getitems__``.

    Determinism: everything random is a function of ``seed`` (an int >= 0) alone. The shuffled order comes from a
    ``torch.Generator`` seeded with ``seed``; batch ``k`` carries the augmentation seed ``SeedSequence([seed, k])``,
    from which the dataset seeds a private generator, so augmentation never touches the global torch RNG and the
    batches are identical for ``num_workers=0`` and any ``num_workers > 0``. The workers' own seeds (torch,
    numpy, random) also derive from ``seed`` through the loader's generator. Pass a new seed every epoch (the
    trainer derives it from the run seed and the epoch) for fresh but reproducible shuffles and augmentations.
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
        batch_sampler=SeededBatchSampler(sampler, batch_size, seed, drop_last),
        collate_fn=pass_through,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )

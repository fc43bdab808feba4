"""A training data stream that is a function of (seed, iteration), so that a
resumed run sees exactly the batches the uninterrupted run saw.

Detectron2's ``TrainingSampler`` is an infinite shuffled stream seeded once:
after ``--resume`` it starts over, and the augmentations' random state (numpy's
global RNG, in each data-loader worker) starts over too. Here:

* epoch ``e`` visits the images in a permutation drawn from ``(seed, e)``; the
  stream of epochs is split between ranks as Detectron2 splits it (rank ``r``
  takes positions ``r, r + world_size, ...``);
* each rank groups its share into batches, by orientation as Detectron2's
  aspect-ratio grouping does, using the sizes in the dataset dicts (no image is
  read); batch ``i`` is the ``i``-th of this stream, so starting at iteration
  ``k`` replays the index stream up to ``k`` (cheap) and carries on;
* every sample is mapped with python's, numpy's and torch's RNGs seeded by
  ``(seed, rank, iteration, slot in the batch, image)``, whichever worker maps it.

The sampler's state is therefore the iteration alone, which the checkpoint
already holds.
"""
import contextlib
import itertools
import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils import data as torchdata

from detectron2.data.build import trivial_batch_collator
from detectron2.data.common import DatasetFromList

from sact_det.utils.errors import InputError

__all__ = ["derived_seed", "seeded_rngs", "ResumableBatchSampler", "SeededMapDataset", "ResumableTrainLoader",
           "build_resumable_train_loader"]

# What a derived seed is for: keeps the streams independent.
EPOCH_ORDER, SAMPLE, FALLBACK, MODEL, LOADER = range(5)


def derived_seed(*keys: int) -> int:
    """A 32-bit seed mixed from non-negative integer keys (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Python's, numpy's and torch's (CPU) global RNGs seeded with ``seed`` inside
    the block, and put back as they were after it."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _permutation(size: int, seed: int) -> List[int]:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(size, generator=generator).tolist()


class ResumableBatchSampler(torchdata.Sampler):
    """This rank's infinite stream of batches, ``[(iteration, slot, index), ...]``;
    set ``start_iter`` before iterating to start where a run stopped."""

    def __init__(self, image_sizes: Sequence[Tuple[int, int]], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, group_by_aspect: bool = True):
        """
        Args:
            image_sizes: (height, width) of every image of the dataset.
            batch_size: images per batch on this rank.
        """
        self._landscape = [width > height for height, width in image_sizes]
        self._batch_size = batch_size
        self._seed, self._rank, self._world_size = seed, rank, world_size
        self._group_by_aspect = group_by_aspect
        self.start_iter = 0

    def _indices(self):
        for epoch in itertools.count():
            yield from _permutation(len(self._landscape), derived_seed(self._seed, EPOCH_ORDER, epoch))

    def _batches(self):
        mine = itertools.islice(self._indices(), self._rank, None, self._world_size)
        if not self._group_by_aspect:
            while True:
                yield list(itertools.islice(mine, self._batch_size))
        buckets = {True: [], False: []}
        for index in mine:
            bucket = buckets[self._landscape[index]]
            bucket.append(index)
            if len(bucket) == self._batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self):
        for iteration, batch in enumerate(self._batches()):
            if iteration >= self.start_iter:
                yield [(iteration, slot, index) for slot, index in enumerate(batch)]


class _NoReadableImage:
    """Returned instead of a sample when no image can be read; the loader raises
    in the main process (an exception raised in a worker would arrive wrapped in
    the worker's traceback)."""

    def __init__(self, message: str):
        self.message = message


class SeededMapDataset(torchdata.Dataset):
    """Dataset dicts mapped by ``mapper`` with seeded randomness (module docstring).

    A sample the mapper cannot use (it returns None: an unreadable image) is
    replaced by the next usable image in an order seeded like the sample, so the
    replacement is the same in a resumed run.
    """

    def __init__(self, dataset_dicts: List[dict], mapper: Callable[[dict], Optional[dict]], seed: int,
                 rank: int = 0, names: Sequence[str] = ()):
        self._dicts = DatasetFromList(dataset_dicts, copy=False)  # serialised: workers share it
        self._mapper = mapper
        self._seed, self._rank = seed, rank
        self._names = tuple(names)
        self._unreadable = set()  # per process: images not to try again

    def __len__(self):
        return len(self._dicts)

    def _candidates(self, iteration: int, slot: int, index: int):
        yield index
        order = _permutation(len(self._dicts), derived_seed(self._seed, FALLBACK, self._rank, iteration, slot))
        yield from (i for i in order if i != index and i not in self._unreadable)

    def __getitem__(self, key: Tuple[int, int, int]):
        iteration, slot, index = key
        for candidate in self._candidates(iteration, slot, index):
            with seeded_rngs(derived_seed(self._seed, SAMPLE, self._rank, iteration, slot, candidate)):
                sample = self._mapper(self._dicts[candidate])
            if sample is not None:
                return sample
            self._unreadable.add(candidate)
        return _NoReadableImage(
            f"none of the {len(self._dicts)} training images of {', '.join(self._names) or 'the dataset'} "
            f"could be read (e.g. {self._dicts[index]['file_name']}; see the warnings above): check the "
            "image directory of DATASETS.TRAIN")


class ResumableTrainLoader:
    """Iterable of training batches (lists of mapped dicts); :meth:`start_at`
    before the first iteration continues the stream at an iteration."""

    def __init__(self, loader: torchdata.DataLoader, sampler: ResumableBatchSampler):
        self.loader, self.sampler = loader, sampler

    def start_at(self, iteration: int) -> None:
        self.sampler.start_iter = iteration

    def __iter__(self):
        for batch in self.loader:
            for sample in batch:
                if isinstance(sample, _NoReadableImage):
                    raise InputError(sample.message)
            yield batch


def build_resumable_train_loader(dataset_dicts: List[dict], mapper: Callable[[dict], Optional[dict]],
                                 batch_size: int, seed: int, num_workers: int = 0, rank: int = 0,
                                 world_size: int = 1, group_by_aspect: bool = True,
                                 names: Sequence[str] = ()) -> ResumableTrainLoader:
    """The training loader of one rank; ``batch_size`` images per batch on this rank."""
    # Classification dicts carry no sizes: they are never grouped by orientation.
    sizes = [(d["height"], d["width"]) if group_by_aspect else (1, 1) for d in dataset_dicts]
    sampler = ResumableBatchSampler(sizes, batch_size, seed,
                                    rank, world_size, group_by_aspect)
    dataset = SeededMapDataset(dataset_dicts, mapper, seed, rank, names)
    # Its own generator: the loader draws its workers' base seed when iterated,
    # which must not shift the model's draws from the global RNG.
    generator = torch.Generator().manual_seed(derived_seed(seed, LOADER, rank))
    loader = torchdata.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                  collate_fn=trivial_batch_collator, generator=generator)
    return ResumableTrainLoader(loader, sampler)

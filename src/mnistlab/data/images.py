"""The data layer every dataset shares: images decoded once into uint8 tensors, batches gathered
with one index operation, scaling and normalization once per batch on the batch's device.

A dataset is a subclass of `ImageDataModule` that says how to read its files: `load(split)`
returns uint8 images (N, C, H, W), int labels (N,) and the class names. Everything else comes
from here: the seeded validation split, the epoch-seeded training order and its exact mid-epoch
resume state, in-order DDP shards that count every image once, the input spec (channels, size,
classes, mean, std) that the networks, eval, predict, export and the dashboard read.
"""

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from mnistlab.data.decode import to_array
from mnistlab.data.in_memory import (
    EpochSampler,
    InMemoryImages,
    ShardSampler,
    Split,
    already_batched,
    fields,
    size_of,
    subset,
)
from mnistlab.lab import UserError
from mnistlab.lab.compat import batches_done
from mnistlab.lab.spec import InputSpec


class ImageDataModule(LightningDataModule):
    """The machinery of every image-classification dataset; subclasses implement `load`."""

    def __init__(
        self,
        channels: int,
        image_size: int | Sequence[int],
        classes: Sequence[str],
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_size: int | float = 0.1,
        split_seed: int = 42,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        on_device: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: Callable | None = None,
        batch_augment: Callable | None = None,
    ):
        """`channels`, `image_size`, `classes`: the input spec the networks are built for; the
        loaded data must match it. `val_size`: images held out of the training split when the
        dataset has no validation split of its own (a count, or a fraction in (0, 1)).
        `seed`: the training order, epoch by epoch (independent of the global RNG, so resumable).
        `batch_size`: per process; under DDP each step trains on `batch_size` x processes images.
        `eval_batch_size`: for validation and test (default: `batch_size`); results do not depend on it.
        `on_device`: keep the whole dataset on the accelerator and gather each batch there.
        `mean`, `std`: per channel, normalizing batches after ToTensor's scaling to [0, 1];
        None: measured on the training split.
        `augment`: a transform per training image, on uint8 (C, H, W) tensors.
        `batch_augment`: a transform of each training batch on the device, on float images in
        [0, 1], given a generator seeded from `seed`, the global step and the rank (so resumable
        exactly): `mnistlab.data.augment.DigitAugment`."""
        super().__init__()
        self.channels, (self.height, self.width) = channels, size_of(image_size)
        self.classes = [str(c) for c in classes]
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
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                raise UserError(f"data.{name} has {len(values)} values for {channels} channels")
        self.augment, self.batch_augment = augment, batch_augment
        # A label-aware one (DigitAugment's serifs on the 1s) is given the labels too.
        self._augment_by_label = batch_augment is not None and "labels" in (
            inspect.signature(batch_augment).parameters
        )
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.train_set = self.val_set = self.test_set = None
        self.sampler: EpochSampler | None = None
        self._position = (0, 0)  # (epoch, batches done) to start from, set when resuming

    # ------------------------------------------------------------------ what a dataset provides

    def load(self, split: str) -> Split | None:
        """The images of `split` ("train", "val" or "test"); None for "val" when the dataset
        has no validation split of its own (then it is held out of "train")."""
        raise NotImplementedError

    def prepare_image(self, image) -> np.ndarray:
        """A PIL image as this dataset's uint8 (C, H, W) array, as `load` would have made it:
        for predicting on new files. Default: `to_array`."""
        return to_array(image, self.channels, self.height, self.width)

    # ------------------------------------------------------------------ the spec

    @property
    def spec(self) -> InputSpec:
        """The input spec; mean and std are known once `setup` has run (or when configured)."""
        if self.mean is None or self.std is None:
            raise UserError("the input spec's mean/std are measured in setup(): call it first")
        mean, std = (v * self.channels if len(v) == 1 else v for v in (self.mean, self.std))
        return InputSpec(self.channels, self.height, self.width, tuple(self.classes),
                         tuple(mean), tuple(std))  # fmt: skip

    # ------------------------------------------------------------------ setup and loaders

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train = self._checked(self.load("train"), "train")
        images, labels = train.images, train.labels
        val = self.load("val")
        if val is None:  # held out of train with its own seed: the same images in every run
            n = len(labels)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
            val_idx, train_idx = order[: self._n_val(n)], order[self._n_val(n) :]
            self.val_indices, self.train_indices = val_idx, train_idx
            self.train_set = subset(images, labels, train_idx, self.augment)
            self.val_set = subset(images, labels, val_idx)
        else:
            self.train_set = subset(images, labels, None, self.augment)
            self.val_set = subset(*fields(self._checked(val, "val")), None)
        self.test_set = subset(*fields(self._checked(self.load("test"), "test")), None)
        if self.mean is None or self.std is None:
            self._measure(self.train_set)
        self.sampler = EpochSampler(len(self.train_set), self.seed, *self._shard())
        self._seek(*self._position)

    def _checked(self, split: Split | None, name: str) -> Split:
        """The split, as torch tensors, refused in one line when it is not what the spec says."""
        where = f"{type(self).__name__}.load({name!r})"
        if split is None:
            raise UserError(f"{where} returned nothing")
        shape = tuple(split.images.shape[1:])
        if shape != (self.channels, self.height, self.width):
            raise UserError(
                f"{where}: images of shape {shape}, but data.channels={self.channels} and"
                f" data.image_size={[self.height, self.width]} say"
                f" {(self.channels, self.height, self.width)}"
            )
        if list(split.classes) != self.classes:
            raise UserError(
                f"{where}: classes {list(split.classes)[:12]} differ from data.classes"
                f" {self.classes[:12]}: train, val and test need the same classes in the same order"
            )
        images = split.images
        if not isinstance(images, np.memmap):
            images = torch.as_tensor(images)
        labels = torch.as_tensor(np.asarray(split.labels), dtype=torch.int64)
        if len(labels) != len(images):
            raise UserError(f"{where}: {len(images)} images for {len(labels)} labels")
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.classes):
            raise UserError(f"{where}: labels outside 0..{len(self.classes) - 1}")
        return Split(images, labels, split.classes)

    def _measure(self, dataset: InMemoryImages) -> None:
        """Per-channel mean and std of the training images, scaled to [0, 1], from exact
        per-channel counts of the 256 pixel values."""
        counts = torch.zeros(self.channels, 256, dtype=torch.float64)
        chunk = 8192
        for start in range(0, len(dataset), chunk):
            x, _ = dataset.gather(range(start, min(start + chunk, len(dataset))))
            for c in range(self.channels):
                counts[c] += torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256)
        values = torch.arange(256, dtype=torch.float64) / 255
        total = counts.sum(1).clamp(min=1)
        mean = (counts * values).sum(1) / total
        std = ((counts * values.square()).sum(1) / total - mean.square()).clamp(min=0).sqrt()
        self.mean = [round(float(v), 6) for v in mean]
        self.std = [round(max(float(v), 1e-3), 6) for v in std]

    def _shard(self) -> tuple[int, int]:
        """(processes, this process's rank) of the trainer using this data module."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _on_device(self, dataset: InMemoryImages) -> InMemoryImages:
        if self.on_device and self.trainer is not None:
            dataset.to(self.trainer.strategy.root_device)
        return dataset

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
            collate_fn=already_batched,
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

    # ------------------------------------------------------------------ resume state

    def state_dict(self) -> dict:
        """Where training stands in the data, and the measured spec: saved in every checkpoint."""
        if self.trainer is None:
            return {}
        done = batches_done(self.trainer)
        epoch = self.trainer.current_epoch
        if done >= self.trainer.num_training_batches:  # a finished epoch: the next one is due
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done, "processes": self._shard()[0]}

    def load_state_dict(self, state: dict) -> None:
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

    # ------------------------------------------------------------------ per batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        trainer = self.trainer
        if self.batch_augment is not None and trainer is not None and trainer.training:
            from mnistlab.data.augment import batch_generator

            draw = batch_generator(
                images.device, self.seed, trainer.global_step, trainer.global_rank
            )
            given = {"labels": labels} if self._augment_by_label else {}
            return self.normalize(
                self.batch_augment(images.to(torch.float32).div(255), draw, **given)
            ), labels
        return self.to_input(images), labels

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) to the network's input, with exactly the arithmetic of
        torchvision's ToTensor (x / 255) and Normalize ((x - mean) / std)."""
        return self.normalize(images.to(torch.float32).div(255))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] (B, C, H, W), normalized in place: (x - mean) / std."""
        if images.device not in self._stats:  # built once per device, not per batch
            spec = self.spec
            stats = (torch.tensor(v, device=images.device).view(-1, 1, 1)
                     for v in (spec.mean, spec.std))  # fmt: skip
            self._stats[images.device] = tuple(stats)
        mean, std = self._stats[images.device]
        return images.sub_(mean).div_(std)

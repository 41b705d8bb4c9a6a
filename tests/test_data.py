"""The DataModule on synthetic IDX files: shapes, values, splits, loaders, the exact transform."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

from mnistlab.data.in_memory import EpochSampler, ShardSampler
from mnistlab.data.mnist import MNISTDataModule
from mnistlab.lab import UserError


def make_dm(synthetic_mnist, **kwargs) -> MNISTDataModule:
    kwargs = {
        "batch_size": 32,
        "val_size": 100,
        "mean": [0.5],
        "std": [0.5],
    } | kwargs
    dm = MNISTDataModule(
        str(synthetic_mnist.root), sources=["local"], checksums=synthetic_mnist.checksums, **kwargs
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_shapes_dtypes_and_range(synthetic_mnist):
    dm = make_dm(synthetic_mnist)
    x, y = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.5 and x.max() > 0.5
    assert set(y.tolist()) <= set(range(10))


@pytest.mark.parametrize(("mean", "std"), [(0.5, 0.5), (0.1307, 0.3081)])
def test_batched_transform_equals_totensor_normalize_exactly(synthetic_mnist, mean, std):
    dm = make_dm(synthetic_mnist, mean=[mean], std=[std])
    images, _ = next(iter(dm.test_dataloader()))  # uint8 (B, 1, 28, 28)
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    expected = torch.stack([reference(Image.fromarray(im[0].numpy(), mode="L")) for im in images])
    assert torch.equal(dm.to_input(images), expected)  # bitwise, not approximately


def test_split_sizes_disjoint_and_deterministic(synthetic_mnist):
    dm = make_dm(synthetic_mnist)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (500, 100, 200)
    train, val = set(dm.train_indices.tolist()), set(dm.val_indices.tolist())
    assert not train & val and len(train | val) == 600
    assert torch.equal(make_dm(synthetic_mnist).val_indices, dm.val_indices)
    assert not torch.equal(make_dm(synthetic_mnist, split_seed=7).val_indices, dm.val_indices)
    assert len(make_dm(synthetic_mnist, val_size=0.25).val_set) == 150


@pytest.mark.parametrize("val_size", [0, 600, 1.0])
def test_impossible_val_size_is_refused(synthetic_mnist, val_size):
    with pytest.raises(UserError, match=r"data\.val_size"):
        make_dm(synthetic_mnist, val_size=val_size)


def test_eval_loaders_keep_order_and_every_image(synthetic_mnist):
    dm = make_dm(synthetic_mnist, batch_size=64)
    for loader, dataset in ((dm.val_dataloader(), dm.val_set), (dm.test_dataloader(), dm.test_set)):
        assert isinstance(loader.sampler, ShardSampler) and not loader.drop_last
        labels = torch.cat([y for _, y in loader])
        assert torch.equal(labels, dataset.labels)  # 200 test images: 64+64+64+8, none dropped
    assert isinstance(dm.train_dataloader().sampler, EpochSampler)


def test_training_order_is_a_function_of_seed_and_epoch():
    """What an exact resume rests on: any epoch's order can be rebuilt, and part of it skipped."""
    sampler = EpochSampler(100, seed=7)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == sorted(second) == list(range(100)) and first != second
    again = EpochSampler(100, seed=7)
    again.set_epoch(1)
    again.skip = 30
    assert list(again) == second[30:] and len(again) == 100
    again.set_epoch(2)  # a new epoch starts from its beginning
    assert again.skip == 0 and list(again) != second


def test_augment_runs_per_training_image_on_uint8(synthetic_mnist):
    seen = []

    def augment(img):
        seen.append((img.shape, img.dtype))
        return torch.flip(img, dims=[-1])

    dm = make_dm(synthetic_mnist, augment=augment)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and len(seen) == 32 and seen[0] == ((1, 28, 28), torch.uint8)
    next(iter(dm.val_dataloader()))
    assert len(seen) == 32  # evaluation is never augmented


def test_workers_deliver_the_same_batches(synthetic_mnist):
    plain = make_dm(synthetic_mnist)
    workers = make_dm(synthetic_mnist, num_workers=1, persistent_workers=True)
    for (xa, ya), (xb, yb) in zip(plain.test_dataloader(), workers.test_dataloader(), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_missing_files_name_the_path(synthetic_mnist, tmp_path):
    dm = MNISTDataModule(str(tmp_path), sources=["local"], checksums=synthetic_mnist.checksums)
    with pytest.raises(UserError, match=str(tmp_path / "MNIST" / "raw")):
        dm.prepare_data()


def test_relative_data_dir_is_taken_from_the_project_root():
    from mnistlab.lab.config import ROOT

    assert MNISTDataModule("data").raw_dir == ROOT / "data" / "MNIST" / "raw"
    assert MNISTDataModule("/abs/x").raw_dir == Path("/abs/x/MNIST/raw")


def test_mean_and_std_not_given_are_measured_on_the_training_split(synthetic_mnist):
    dm = make_dm(synthetic_mnist, mean=None, std=None)
    x = dm.train_set.images.double() / 255  # the training split only, not val or test
    assert dm.spec.mean == pytest.approx((x.mean().item(),), abs=1e-6)
    assert dm.spec.std == pytest.approx((x.std(unbiased=False).item(),), abs=1e-6)


def test_images_that_do_not_match_the_spec_are_refused_in_one_line(synthetic_mnist):
    with pytest.raises(
        UserError,
        match=r"shape \(1, 28, 28\), but data\.channels=1 and data\.image_size=\[32, 32\]",
    ):
        make_dm(synthetic_mnist, image_size=32)
    with pytest.raises(UserError, match=r"load\('train'\): labels outside 0\.\.8"):
        make_dm(synthetic_mnist, classes=[str(d) for d in range(9)])


def test_memory_mapped_images_give_the_same_batches_without_a_copy(synthetic_mnist, tmp_path):
    import numpy as np

    from mnistlab.data.in_memory import subset as _subset

    dm = make_dm(synthetic_mnist)
    images, labels = dm._checked(dm.load("train"), "train").images, dm.train_set.labels
    np.save(tmp_path / "images.npy", images.numpy())
    mapped = _subset(
        np.load(tmp_path / "images.npy", mmap_mode="c"),
        dm._checked(dm.load("train"), "train").labels,
        dm.train_indices,
    )
    assert mapped.indices is not None and len(mapped) == len(dm.train_set)
    for batch in ([0, 5, 7], list(range(len(labels) - 40, len(labels)))):
        x, y = mapped.__getitems__(batch)
        assert torch.equal(x, dm.train_set.__getitems__(batch)[0]) and torch.equal(y, labels[batch])

"""Shared fixtures: synthetic MNIST-format data in tmp folders and the real config, shrunk."""

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from mnistlab.data.idx import encode_idx
from mnistlab.lab.config import CONF_DIR

NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def missing(reason: str) -> None:
    """An optional package, tool or data set is missing: a skip on a workstation, a failure under
    CI=true, where .ci/run provides every one of them, so that no test quietly stops running."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: missing here is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def need_modules(*names: str, install: str) -> None:
    """Skip (fail under CI=true) unless every module in `names` can be imported."""
    absent = [name for name in names if importlib.util.find_spec(name) is None]
    if absent:
        missing(f"{', '.join(absent)} not installed: {install}")


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable stand-ins for digits: one blocky template per class, shifted and noisy, uint8."""
    templates = np.random.default_rng(0).random((10, 7, 7)) > 0.6  # the same for every split
    templates = templates.repeat(4, axis=1).repeat(4, axis=2)  # (10, 28, 28)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = templates[labels] * 180.0 + rng.random((n, 28, 28)) * 75
    shifts = rng.integers(-2, 3, (n, 2))
    images = np.stack(
        [np.roll(im, tuple(s), axis=(0, 1)) for im, s in zip(images, shifts, strict=True)]
    )
    return images.astype(np.uint8), labels.astype(np.uint8)


def idx_files(n_train: int = 600, n_test: int = 200) -> dict[str, bytes]:
    files = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic_digits(n, seed)
        files[NAMES[split, "images"]] = encode_idx(images)
        files[NAMES[split, "labels"]] = encode_idx(labels)
    return files


def checksums_of(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


class SyntheticMNIST:
    """A data root holding MNIST/raw/ with synthetic IDX files, and their checksums."""

    def __init__(self, root: Path, n_train: int = 600, n_test: int = 200):
        self.root, self.raw = root, root / "MNIST" / "raw"
        self.raw.mkdir(parents=True)
        self.files = idx_files(n_train, n_test)
        for name, data in self.files.items():
            (self.raw / name).write_bytes(data)
        self.checksums = checksums_of(self.files)


SHAPES = ["ring", "cross", "stripes", "blob", "corner"]  # 5 classes, names not digits


def write_image_folder(root: Path, n_train: int = 40, n_test: int = 16, seed: int = 0) -> Path:
    """A learnable image folder: root/{train,test}/<class>/, RGB, sides 20-70 px with varied
    aspect ratios, PNG and JPEG. Each class is a coloured 6x6 template, scaled up, noisy."""
    from PIL import Image

    templates = np.random.default_rng(0).random((len(SHAPES), 6, 6, 3))  # the same in every split
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(SHAPES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                height, width = rng.integers(20, 71, 2)
                up = np.kron(templates[label], np.ones((12, 12, 1)))  # (72, 72, 3)
                pixels = up * 200 + rng.random((72, 72, 3)) * 55
                image = Image.fromarray(pixels.astype(np.uint8)).resize((int(width), int(height)))
                suffix = ".png" if i % 2 else ".jpg"
                image.save(folder / f"{split}_{i:03d}{suffix}", quality=95)
    return root


@pytest.fixture
def fresh_logging():
    """The commands called in process set up logging to the stderr of their test, closed after
    it: no test may log to another test's stream."""
    logging.getLogger().handlers.clear()
    yield
    logging.getLogger().handlers.clear()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def synthetic_mnist(tmp_path_factory) -> SyntheticMNIST:
    return SyntheticMNIST(tmp_path_factory.mktemp("data"))


def compose_train(overrides: list[str] = ()) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def tiny_cfg(tmp_path, synthetic_mnist):
    """The real train config on synthetic data, CPU, a few batches, everything under tmp_path."""

    def make(*overrides: str) -> DictConfig:
        cfg = compose_train(
            [
                f"paths.data_dir={synthetic_mnist.root}",
                f"paths.log_dir={tmp_path / 'logs'}",
                f"paths.output_dir={tmp_path / 'run'}",
                "data.sources=[local]",
                "data.val_size=100",
                "trainer=cpu",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=4",
                "trainer.limit_val_batches=2",
                "trainer.limit_test_batches=2",
                "trainer.log_every_n_steps=1",
                *overrides,
            ]
        )
        with open_dict(cfg):
            cfg.data.checksums = synthetic_mnist.checksums
        return cfg

    return make

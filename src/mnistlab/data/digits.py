"""The UCI handwritten digits that scikit-learn ships inside its wheel: 1,797 grayscale 8x8
images, no download (`pip install -e '.[digits]'`). A second real dataset on the shared layer:
a different size, a fixed seeded test split, nothing else to write."""

import numpy as np
import torch

from mnistlab.data.images import ImageDataModule, Split
from mnistlab.data.mnist import DIGITS
from mnistlab.lab import UserError


class DigitsDataModule(ImageDataModule):
    def __init__(self, test_size: float = 0.25, test_seed: int = 0, **kwargs):
        """`test_size`: the share of the 1,797 images held out for testing, chosen with
        `test_seed` (fixed, so every run tests on the same images). Other arguments:
        `ImageDataModule`'s (channels 1, image_size 8, the ten digits)."""
        super().__init__(**{"channels": 1, "image_size": 8, "classes": DIGITS} | kwargs)
        self.test_size, self.test_seed = test_size, test_seed

    def load(self, split: str) -> Split | None:
        if split == "val":
            return None  # held out of train by the data layer
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise UserError("data=digits needs scikit-learn: pip install -e '.[digits]'") from None
        digits = load_digits()  # images (1797, 8, 8), values 0..16
        images = torch.from_numpy(np.round(digits.images * 255 / 16).astype(np.uint8))[:, None]
        labels = torch.from_numpy(digits.target).long()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.test_seed))
        n_test = round(self.test_size * len(labels))
        chosen = order[:n_test] if split == "test" else order[n_test:]
        return Split(images[chosen], labels[chosen], DIGITS)

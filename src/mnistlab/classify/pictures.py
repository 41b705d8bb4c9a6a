"""The dashboard's pictures of a classifier, drawn with matplotlib into TensorBoard's Images tab:

- `val/predictions`: a fixed sample of validation images with the predicted and true class
  names, every epoch (the same images each time, so cost and disk stay flat);
- `test/confusion_matrix`: true rows, predicted columns, the class names on both axes, the
  counts in the cells (and as a text table, exact however many classes there are);
- `test/most_confident_errors`: the test images it got wrong with the most confidence.
What it needs of the run is `mnistlab.classify.check`'s; `callbacks.pictures=null` leaves it out.
"""

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

from mnistlab.classify import check, probabilities
from mnistlab.lab.dashboard import tensorboard_writer

CELL = 84  # pixels per image in a grid: 4 columns are drawn unscaled in TensorBoard's card
COLUMNS = 4
FONT_PX = 13  # captions, legible at the browser's default zoom
DPI = 100
ERRORS_SHOWN = 16


class Pictures(Callback):
    def __init__(self, sample_size: int = 16):
        self.sample_size = sample_size
        self._errors: list[tuple[float, torch.Tensor, str]] = []  # (confidence, pixels, caption)
        self._confusion: MulticlassConfusionMatrix | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        check(pl_module, trainer.datamodule, "callbacks.pictures (set it to null to leave it out)")
        classes = len(trainer.datamodule.classes)
        self._confusion = MulticlassConfusionMatrix(classes, validate_args=False).to(
            pl_module.device
        )

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        images, labels = datamodule.val_set.gather(
            range(min(self.sample_size, len(datamodule.val_set)))
        )
        with torch.no_grad():
            predicted = pl_module(datamodule.to_input(images.to(pl_module.device))).argmax(1)
        names, predicted, labels = datamodule.classes, predicted.cpu(), labels.cpu()
        captions = [f"{names[p]} ({names[t]})" for p, t in zip(predicted, labels, strict=True)]
        grid = labelled_grid(images, captions, wrong=(predicted != labels).tolist())
        writer.add_image("val/predictions", grid, trainer.global_step,
                         dataformats="HWC")  # fmt: skip

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        """Count the batch into the confusion matrix, and keep the most confident errors so far;
        from the logits the test step returned, else from the model's forward."""
        x, y = batch  # already normalized by the data module
        logits = outputs if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 else None
        if logits is None:
            with torch.no_grad():
                logits = pl_module(x)
        self._confusion.update(logits, y)
        confidence, predicted = probabilities(pl_module, logits).max(1)
        wrong = (predicted != y).nonzero().flatten()
        worst = wrong[confidence[wrong].argsort(descending=True)][:ERRORS_SHOWN].tolist()
        spec, names = trainer.datamodule.spec, trainer.datamodule.classes
        mean, std = (torch.tensor(v, device=x.device).view(-1, 1, 1) for v in (spec.mean, spec.std))
        pixels = ((x[worst] * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).cpu()
        found = [(confidence[i].item(), pixels[k],
                  f"{names[predicted[i]]} ({names[y[i]]}) {confidence[i]:.2f}")
                 for k, i in enumerate(worst)]  # fmt: skip
        self._errors = sorted(self._errors + found, key=lambda e: -e[0])[:ERRORS_SHOWN]

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        errors, self._errors = self._errors, []
        matrix = self._confusion.compute().cpu()  # summed over processes by torchmetrics
        self._confusion.reset()
        if trainer.world_size > 1:  # each process kept its own: the surest of all, on rank 0
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, errors)
            errors = sorted((e for share in shares for e in share), key=lambda e: -e[0])
            errors = errors[:ERRORS_SHOWN]
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        classes, step = list(trainer.datamodule.classes), trainer.global_step
        tag = "test/confusion_matrix"
        writer.add_image(tag, confusion_image(matrix, classes), step, dataformats="HWC")
        writer.add_text(tag, confusion_table(matrix, classes), step)
        shape = trainer.datamodule.spec.shape
        pixels = torch.stack([e[1] for e in errors]) if errors else torch.zeros(0, *shape)
        grid = labelled_grid(pixels, [e[2] for e in errors], wrong=[True] * len(errors))
        writer.add_image("test/most_confident_errors", grid, step,
                         dataformats="HWC")  # fmt: skip
        writer.flush()


def _rendered(figure: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _caption_lines(caption: str, width: int) -> list[str]:
    """A caption as it fits a cell `width` characters wide: split before its `(` if it must
    be (`cat (dog) 0.97` with long class names), each line cut visibly."""
    parts = [caption]
    if len(caption) > width and " (" in caption:
        parts = [caption[: caption.index(" (")], caption[caption.index(" (") + 1 :]]
    return [p if len(p) <= width else p[: width - 1] + "…" for p in parts]


def labelled_grid(
    images: torch.Tensor, captions: list[str], wrong: list[bool], columns: int = COLUMNS
) -> np.ndarray:
    """uint8 images (N, C, H, W), grayscale or RGB, in a grid `columns` wide, each scaled to
    its cell with its caption below (red when wrong): an (H, W, 3) picture, CELL pixels a
    column. The pixels are placed as they are (`figimage`), the captions drawn as text."""
    width = (CELL - 4) * 10 // (FONT_PX * 7)  # characters a cell holds, about
    lines = [_caption_lines(c, width) for c in captions]
    band = (FONT_PX + 5) * max((len(t) for t in lines), default=1)
    rows = max(1, -(-len(images) // columns))
    w, h = columns * CELL, rows * (CELL + band)
    canvas = np.full((h, w, 3), 255, np.uint8)
    if len(images):
        x = images.float()
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        scale = (CELL - 8) / max(x.shape[-2:])
        size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
        fitted = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
        fitted = fitted.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, picture in enumerate(fitted):
            left, top = (i % columns) * CELL + 4, (i // columns) * (CELL + band) + 4
            canvas[top : top + size[0], left : left + size[1]] = picture
    figure = Figure(figsize=(w / DPI, h / DPI), dpi=DPI, facecolor="white")
    figure.figimage(canvas, origin="upper")
    if not len(images):
        figure.text(0.05, 0.5, "none", fontsize=FONT_PX * 72 / DPI)
    for i, text in enumerate(lines):
        left, top = (i % columns) * CELL, (i // columns) * (CELL + band)
        figure.text((left + CELL / 2) / w, 1 - (top + CELL - 2) / h, "\n".join(text),
                    color="red" if wrong[i] else "black", fontsize=FONT_PX * 72 / DPI,
                    ha="center", va="top", linespacing=1.1)  # fmt: skip
    return _rendered(figure)


def confusion_image(matrix: torch.Tensor, classes: list[str]) -> np.ndarray:
    """A confusion matrix (true rows, predicted columns), each row shaded by its shares, with
    the class names on both axes, axis titles, and the counts in the cells up to 20 classes."""
    n = len(classes)
    side = min(12.0, max(4.0, 0.45 * n + 2.0))
    figure = Figure(figsize=(side, side), dpi=DPI, facecolor="white")
    names = [c[:16] for c in classes]
    longest = max(len(c) for c in names)
    turned = longest > 3  # column names read upwards when they would overlap
    margin = min(0.4, 0.08 + 0.11 * longest / side)  # room for the names, in figure units
    bottom = margin if turned else 0.1
    axes = figure.add_axes((margin, bottom, 0.97 - margin, 0.97 - bottom))
    share = (matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)).numpy()
    axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    every = max(1, n // 40)  # a label for every class while they fit
    axes.set_xticks(range(0, n, every), names[::every], rotation=90 if turned else 0)
    axes.set_yticks(range(0, n, every), names[::every])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if n <= 20:
        for t in range(n):
            for p in range(n):
                axes.text(p, t, int(matrix[t, p]), ha="center", va="center", fontsize=8,
                          color="white" if share[t, p] > 0.6 else "black")  # fmt: skip
    return _rendered(figure)


def confusion_table(matrix: torch.Tensor, classes: list[str]) -> str:
    """The confusion matrix as a markdown table (true rows, predicted columns): exact counts."""
    lines = [
        "| true \\ predicted | " + " | ".join(classes) + " |",
        "|---" * (len(classes) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |"
              for name, row in zip(classes, matrix.tolist(), strict=True)]  # fmt: skip
    return "\n".join(lines)

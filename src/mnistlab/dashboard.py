"""What TensorBoard shows beyond the metrics the system logs: speed, pictures and provenance.

- `perf/epoch_time_s`, `perf/images_per_s` after every training epoch;
- `val/predictions`: a fixed sample of validation digits with predicted and true labels, every
  epoch (the same images each time, so cost and disk stay flat);
- `test/confusion_matrix` and `test/most_confident_errors` when testing ends;
- `run/config` (the composed config as YAML) and `run/git` (the commit of the code);
- optional: weight and gradient histograms (`histograms`), the model graph (`graph`).
Pictures are drawn with PIL: no plotting library needed.
"""

import subprocess
import time

import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw

from mnistlab.config import ROOT

CELL = 42  # pixels per digit in a labelled grid: the 28x28 digit scaled up, a caption below


class Dashboard(Callback):
    def __init__(self, sample_size: int = 32, histograms: bool = False, graph: bool = False):
        self.sample_size, self.histograms, self.graph = sample_size, histograms, graph
        self._epoch_start, self._images = 0.0, 0
        self._test: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def _writer(trainer):
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def on_fit_start(self, trainer, pl_module) -> None:
        writer = self._writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        config = yaml.safe_dump(dict(pl_module.hparams), sort_keys=False)
        writer.add_text("run/config", f"```yaml\n{config}```", trainer.global_step)
        writer.add_text("run/git", _git_description(), trainer.global_step)
        if self.graph:
            writer.add_graph(pl_module.net, torch.zeros(1, 1, 28, 28, device=pl_module.device))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._epoch_start
        # Under DDP: the slowest process's time, and the images of all processes per second.
        pl_module.log("perf/epoch_time_s", seconds, sync_dist=True, reduce_fx="max")
        pl_module.log("perf/images_per_s", self._images / seconds, sync_dist=True, reduce_fx="sum")
        writer = self._writer(trainer)
        if self.histograms and writer is not None:
            for name, p in pl_module.net.named_parameters():
                writer.add_histogram(f"weights/{name}", p, trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """The gradients of the epoch's last step (they are cleared after each step)."""
        writer = self._writer(trainer)
        if not (self.histograms and writer is not None):
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            for name, p in pl_module.net.named_parameters():
                if p.grad is not None:
                    writer.add_histogram(f"grads/{name}", p.grad, trainer.global_step)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = self._writer(trainer)
        if writer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not _draws(trainer.datamodule):
            return
        dataset = trainer.datamodule.val_set
        images, labels = dataset.images[: self.sample_size], dataset.labels[: self.sample_size]
        with torch.no_grad():
            x = trainer.datamodule.to_input(images.to(pl_module.device))
            predicted = pl_module(x).argmax(1).cpu()
        grid = labelled_grid(images, [f"{p} ({t})" for p, t in zip(predicted, labels, strict=True)],
                             wrong=(predicted != labels).tolist())  # fmt: skip
        writer.add_image("val/predictions", grid, trainer.global_step, dataformats="HWC")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        x, y = batch  # already normalized by the data module
        with torch.no_grad():
            probs = pl_module(x).softmax(1)
        self._test.append((x.cpu(), y.cpu(), probs.cpu()))

    def on_test_end(self, trainer, pl_module) -> None:
        parts, self._test = self._test, []
        if not _draws(trainer.datamodule):
            return
        matrix, errors = self._summarize_test(parts, trainer.datamodule) if parts else (None, [])
        if trainer.world_size > 1:  # each process tested its share: combine them on rank 0
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, (matrix, errors))
            matrix = sum((m for m, _ in shares if m is not None), start=0)
            errors = sorted((e for _, es in shares for e in es), key=lambda e: -e[0])[:16]
        writer = self._writer(trainer)
        if writer is None or not trainer.is_global_zero or not isinstance(matrix, torch.Tensor):
            return
        writer.add_image("test/confusion_matrix", confusion_image(matrix), trainer.global_step,
                         dataformats="HWC")  # fmt: skip
        pixels = (
            torch.stack([e[1] for e in errors])
            if errors
            else torch.zeros(0, 1, 28, 28, dtype=torch.uint8)
        )
        grid = labelled_grid(pixels, [e[2] for e in errors], wrong=[True] * len(errors))
        writer.add_image("test/most_confident_errors", grid, trainer.global_step, dataformats="HWC")
        writer.flush()

    @staticmethod
    def _summarize_test(parts, datamodule) -> tuple[torch.Tensor, list]:
        """This process's confusion matrix and its 16 most confident errors (confidence, uint8
        pixels, caption)."""
        x, y, probs = (torch.cat(p) for p in zip(*parts, strict=True))
        confidence, predicted = probs.max(1)
        classes = probs.shape[1]
        matrix = torch.bincount(y * classes + predicted, minlength=classes**2)
        wrong = (predicted != y).nonzero().flatten()
        worst = wrong[confidence[wrong].argsort(descending=True)][:16]
        mean, std = datamodule.mean[0], datamodule.std[0]
        pixels = ((x[worst] * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
        errors = [(confidence[i].item(), pixels[k], f"{predicted[i]} ({y[i]}) {confidence[i]:.2f}")
                  for k, i in enumerate(worst.tolist())]  # fmt: skip
        return matrix.view(classes, classes), errors


def _draws(datamodule) -> bool:
    """Digits are drawn from data modules shaped like MNISTDataModule (uint8 images in `val_set`,
    `to_input`, `mean`, `std`); with any other, the pictures are left out and the rest stays."""
    return all(hasattr(datamodule, a) for a in ("val_set", "to_input", "mean", "std"))


def labelled_grid(
    images: torch.Tensor, captions: list[str], wrong: list[bool], columns: int = 8
) -> np.ndarray:
    """uint8 digits (N, 1, 28, 28) in a grid, each with a caption (red when wrong): (H, W, 3)."""
    rows = max(1, (len(images) + columns - 1) // columns)
    canvas = Image.new("RGB", (columns * CELL * 2, rows * (CELL * 2 + 14)), "white")
    draw = ImageDraw.Draw(canvas)
    if not len(images):
        draw.text((8, 8), "none", fill="black")
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        left, top = (i % columns) * CELL * 2, (i // columns) * (CELL * 2 + 14)
        digit = Image.fromarray(image[0].cpu().numpy()).resize((CELL * 2 - 8, CELL * 2 - 8))
        canvas.paste(digit.convert("RGB"), (left + 4, top + 4))
        draw.text((left + 6, top + CELL * 2 - 2), caption, fill="red" if wrong[i] else "black")
    return np.asarray(canvas)


def confusion_image(matrix: torch.Tensor) -> np.ndarray:
    """A confusion matrix (true rows, predicted columns) as shaded cells with counts: (H, W, 3)."""
    n, cell, margin = len(matrix), 36, 24
    canvas = Image.new("RGB", (margin + n * cell, margin + n * cell), "white")
    draw = ImageDraw.Draw(canvas)
    share = matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)
    for t in range(n):
        draw.text((6, margin + t * cell + 12), str(t), fill="black")
        draw.text((margin + t * cell + 14, 6), str(t), fill="black")
        for p in range(n):
            shade = int(255 - 200 * share[t, p].item())
            box = (
                margin + p * cell,
                margin + t * cell,
                margin + (p + 1) * cell - 1,
                margin + (t + 1) * cell - 1,
            )
            draw.rectangle(box, fill=(shade, shade, 255) if t == p else (255, shade, shade))
            draw.text((box[0] + 4, box[1] + 12), str(int(matrix[t, p])), fill="black")
    return np.asarray(canvas)


def _git_description() -> str:
    """The commit of the code that ran, and whether it had uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return f"{commit}{' with uncommitted changes' if dirty else ''}"

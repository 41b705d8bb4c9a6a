"""What TensorBoard shows beyond the metrics the system logs: speed, pictures and provenance.

- `perf/epoch_time_s`, `perf/images_per_s` after every training epoch;
- `val/predictions`: a fixed sample of validation images with predicted and true class names,
  every epoch (the same images each time, so cost and disk stay flat);
- `test/confusion_matrix` (a picture with the class names, and the exact counts as a text
  table), from the system's `test_confusion` (torchmetrics, summed over processes), and
  `test/most_confident_errors` (kept while testing from the test step's logits) when testing ends;
- `run/config` (the composed config as YAML) and `run/git` (the commit of the code);
- optional: weight and gradient histograms (`histograms`), the model graph (`graph`).
Pictures are drawn with PIL. `TensorBoard` is the logger, arranged so that TensorBoard's first
screen shows the curves (see `tensorboard_tag`), and `hparams` the HParams tab's columns.
"""

import subprocess
import time
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont

from mnistlab.config import ROOT

CELL = 84  # pixels per image in a labelled grid: the image scaled to fit, a caption below
COLUMNS = 4  # a grid 4 x 84 px wide is drawn at its own size in TensorBoard's image card
ERRORS_SHOWN = 16  # the most confident test errors drawn
FONT_PX = 13  # captions and labels, legible at the browser's default zoom
CURVES = ("train", "val")  # the tag groups TensorBoard opens first


def tensorboard_tag(name: str) -> str:
    """Where a logged value goes in TensorBoard. Its Time Series page groups the charts by the
    text before the first `/`, sorts the groups by name and opens only the first two, collapsing
    the rest. Those two are the curves, `train` and `val`; every other group (`test`, one point
    each, `perf`, the learning rate, your own) gets a leading `~`, which sorts after them."""
    return name if name.partition("/")[0] in CURVES else f"~{name}"


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoard logger with the charts named by `tensorboard_tag`, no `epoch`
    staircase (Lightning adds one to every log call; the step is the x axis), and an HParams
    record without one-point copies of the metrics. Arguments as TensorBoardLogger's.

    The record is the run's hyperparameters and its end, not an experiment summary: TensorBoard
    then builds the HParams table from all the runs it sees, marks the hyperparameters whose
    values differ between them, shows those first, and takes every chart's last value as a
    metric (val/acc_best's last value is the best one). A summary written by each run would be
    one run's columns for all."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        shown = {tensorboard_tag(k): v for k, v in metrics.items() if k != "epoch"}
        if shown:
            super().log_metrics(shown, step)

    @rank_zero_only
    def log_hyperparams(self, params, metrics: dict[str, float] | None = None, step=None) -> None:
        super().log_hyperparams(params, None, step)  # hparams.yaml
        if not metrics:  # the start: the record is written at the end, with the metrics there
            return
        from torch.utils.tensorboard.summary import hparams as summaries

        plain = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in params.items()
        }
        _, start, end = summaries(plain, {tensorboard_tag(k): v for k, v in metrics.items()})
        # Private API, checked against torch 2.14.1: the open event file (None after close()), as
        # Lightning's own log_hyperparams reaches it.
        writer = self.experiment._get_file_writer()
        for summary in (start, end):
            writer.add_summary(summary, step)
        writer.flush()


def hparams(cfg, choices: dict | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """The HParams tab's columns: the experiment and `name`, every key set on the command line
    (so a sweep's varied keys are all there; `paths.*` and `hydra.*` aside), then `log_hparams`.
    `choices` and `overrides`: Hydra's config group choices and the run's overrides."""
    from omegaconf import OmegaConf

    from mnistlab.config import to_plain

    choices = choices or {}
    named = {str(v)[2:-1]: k for k, v in OmegaConf.to_container(cfg.log_hparams).items()
             if isinstance(v, str) and v.startswith("${") and v.endswith("}")}  # fmt: skip
    columns = {"experiment": choices.get("experiment") or "none"}
    if cfg.get("name"):
        columns["name"] = cfg.name
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in ("name", "resume") or key.startswith(("hydra", "paths.")):
            continue  # a label, or where the run is rather than what it is
        if key in choices:  # a config group: model/net=two_conv
            columns[key] = choices[key]
            continue
        if key in named:  # a log_hparams column already: lr for model.optimizer.lr
            continue
        found = OmegaConf.select(cfg, key, default=value, throw_on_missing=False)
        columns[key] = found if isinstance(found, int | float | str | bool) else str(found)
    return {**columns, **to_plain(cfg.log_hparams)}


class Dashboard(Callback):
    def __init__(self, sample_size: int = 16, histograms: bool = False, graph: bool = False):
        self.sample_size, self.histograms, self.graph = sample_size, histograms, graph
        self._epoch_start, self._images, self._last_batch = 0.0, 0, False
        self._errors: list[tuple[float, torch.Tensor, str]] = []  # (confidence, pixels, caption)

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
        if self.graph and _draws(trainer.datamodule):
            shape = trainer.datamodule.spec.shape
            writer.add_graph(pl_module.net, torch.zeros(1, *shape, device=pl_module.device))

    def on_train_start(self, trainer, pl_module) -> None:
        # Resumed part-way through an epoch, Lightning calls no on_train_epoch_start for it.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start, self._images = time.perf_counter(), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._last_batch = batch_idx + 1 >= trainer.num_training_batches

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
                writer.add_histogram(tensorboard_tag(f"weights/{name}"), p, trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """The gradients of the epoch's last step (they are cleared after each step)."""
        writer = self._writer(trainer)
        if not (self.histograms and writer is not None):
            return
        if self._last_batch:
            for name, p in pl_module.net.named_parameters():
                if p.grad is not None:
                    writer.add_histogram(
                        tensorboard_tag(f"grads/{name}"), p.grad, trainer.global_step
                    )

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = self._writer(trainer)
        if writer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not _draws(trainer.datamodule):
            return
        datamodule = trainer.datamodule
        images, labels = datamodule.val_set.gather(
            range(min(self.sample_size, len(datamodule.val_set)))
        )
        with torch.no_grad():
            x = datamodule.to_input(images.to(pl_module.device))
            predicted = pl_module(x).argmax(1).cpu()
        names = datamodule.classes
        captions = [
            f"{names[p]} ({names[t]})" for p, t in zip(predicted, labels.cpu(), strict=True)
        ]
        grid = labelled_grid(images, captions, wrong=(predicted != labels.cpu()).tolist())
        writer.add_image(
            tensorboard_tag("val/predictions"), grid, trainer.global_step, dataformats="HWC"
        )

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        """Keep the most confident errors so far, from the logits the test step returned."""
        if not (isinstance(outputs, torch.Tensor) and self._writer(trainer) is not None):
            return
        if not _draws(trainer.datamodule):
            return
        x, y = batch  # already normalized by the data module
        probabilities = getattr(pl_module, "probabilities", lambda z: z.softmax(1))  # calibrated
        confidence, predicted = probabilities(outputs).max(1)
        wrong = (predicted != y).nonzero().flatten()
        worst = wrong[confidence[wrong].argsort(descending=True)][:ERRORS_SHOWN].tolist()
        if not worst:
            return
        spec, names = trainer.datamodule.spec, trainer.datamodule.classes
        mean, std = (torch.tensor(v, device=x.device).view(-1, 1, 1) for v in (spec.mean, spec.std))
        pixels = ((x[worst] * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).cpu()
        found = [(confidence[i].item(), pixels[k],
                  f"{names[predicted[i]]} ({names[y[i]]}) {confidence[i]:.2f}")
                 for k, i in enumerate(worst)]  # fmt: skip
        self._errors = sorted(self._errors + found, key=lambda e: -e[0])[:ERRORS_SHOWN]

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        errors, self._errors = self._errors, []
        confusion = getattr(pl_module, "test_confusion", None)
        writer = self._writer(trainer)
        if writer is None or confusion is None or not _draws(trainer.datamodule):
            return
        matrix = confusion.compute().cpu()  # summed over processes by torchmetrics
        if trainer.world_size > 1:  # each process kept its own: the surest of all, on rank 0
            shares = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, errors)
            errors = sorted((e for share in shares for e in share), key=lambda e: -e[0])
            errors = errors[:ERRORS_SHOWN]
        if not trainer.is_global_zero:
            return
        classes = list(trainer.datamodule.spec.classes)
        writer.add_image(tensorboard_tag("test/confusion_matrix"), confusion_image(matrix, classes),
                         trainer.global_step, dataformats="HWC")  # fmt: skip
        writer.add_text(tensorboard_tag("test/confusion_matrix"), confusion_table(matrix, classes),
                        trainer.global_step)  # fmt: skip
        shape = trainer.datamodule.spec.shape
        pixels = (
            torch.stack([e[1] for e in errors])
            if errors
            else torch.zeros(0, *shape, dtype=torch.uint8)
        )
        grid = labelled_grid(pixels, [e[2] for e in errors], wrong=[True] * len(errors))
        writer.add_image(
            tensorboard_tag("test/most_confident_errors"),
            grid,
            trainer.global_step,
            dataformats="HWC",
        )
        writer.flush()


def _draws(datamodule) -> bool:
    """Pictures are drawn from an ImageDataModule (its input spec, `val_set`, `to_input`); with
    any other data module they are left out and the rest stays."""
    from mnistlab.data import ImageDataModule

    return isinstance(datamodule, ImageDataModule)


def _font(size: int = FONT_PX) -> ImageFont.FreeTypeFont:
    """Pillow's own scalable font: no system font needed."""
    return ImageFont.load_default(size=size)


def labelled_grid(
    images: torch.Tensor, captions: list[str], wrong: list[bool], columns: int = COLUMNS
) -> np.ndarray:
    """uint8 images (N, C, H, W), grayscale or RGB, in a grid, each with a caption (red when
    wrong): (H, W, 3). Narrow enough that TensorBoard shows it unscaled, captions legible: a
    caption too wide for its cell (`cat (dog) 0.97` with long class names) takes two lines,
    split before its `(`, each cut to the cell if it must be."""
    font = _font()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def fitted(text):
        while len(text) > 3 and draw.textlength(text, font=font) > CELL - 4:
            text = text[:-2] + "…"  # cut to the cell, visibly
        return text

    lines = [[c] if draw.textlength(c, font=font) <= CELL - 4 or " (" not in c
             else [c[: c.index(" (")], c[c.index(" (") + 1 :]] for c in captions]  # fmt: skip
    line = FONT_PX + 5
    band = line * max((len(t) for t in lines), default=1)  # the caption's height under each cell
    rows = max(1, (len(images) + columns - 1) // columns)
    canvas = Image.new("RGB", (columns * CELL, rows * (CELL + band)), "white")
    draw = ImageDraw.Draw(canvas)
    if not len(images):
        draw.text((8, 8), "none", fill="black", font=font)
    for i, (image, text) in enumerate(zip(images, lines, strict=True)):
        left, top = (i % columns) * CELL, (i // columns) * (CELL + band)
        pixels = image.cpu().numpy()
        picture = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
        scale = (CELL - 8) / max(picture.size)
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)))
        canvas.paste(picture.convert("RGB"), (left + 4, top + 4))
        for k, part in enumerate(text):
            draw.text((left + 2, top + CELL - 2 + k * line), fitted(part),
                      fill="red" if wrong[i] else "black", font=font)  # fmt: skip
    return np.asarray(canvas)


def confusion_image(matrix: torch.Tensor, classes: list[str]) -> np.ndarray:
    """A confusion matrix (true rows, predicted columns) as shaded cells with counts and the
    class names on both axes (columns numbered, names listed by row): (H, W, 3)."""
    n = len(matrix)
    font = _font(FONT_PX if n <= 20 else 10)
    names = [(c if c == str(i) else f"{i} {c}")[:16] for i, c in enumerate(classes)]
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = 10 + max(round(draw.textlength(s, font=font)) for s in names)
    # Up to ten classes within COLUMNS * CELL, drawn unscaled like the grids; a hundred still fit
    # on a screen.
    cell = max(30, min(34, (COLUMNS * CELL - margin) // n)) if n <= 20 else max(6, 720 // n)
    top = FONT_PX + 10
    canvas = Image.new("RGB", (margin + n * cell, top + n * cell), "white")
    draw = ImageDraw.Draw(canvas)
    share = matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)
    for t in range(n):
        if cell >= 12:
            draw.text((4, top + t * cell + cell // 2), names[t], fill="black", font=font,
                      anchor="lm")  # fmt: skip
            draw.text((margin + t * cell + cell // 2, top // 2), str(t), fill="black", font=font,
                      anchor="mm")  # fmt: skip
        for p in range(n):
            shade = int(255 - 200 * share[t, p].item())
            box = (margin + p * cell, top + t * cell,
                   margin + (p + 1) * cell - 1, top + (t + 1) * cell - 1)  # fmt: skip
            draw.rectangle(box, fill=(shade, shade, 255) if t == p else (255, shade, shade))
            if cell >= 30:
                count = int(matrix[t, p])
                small = _font(FONT_PX if count < 1000 else 10)
                draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), str(count),
                          fill="black", font=small, anchor="mm")  # fmt: skip
    return np.asarray(canvas)


def confusion_table(matrix: torch.Tensor, classes: list[str]) -> str:
    """The confusion matrix as a markdown table (true rows, predicted columns): exact counts,
    however many classes the picture has to draw without them."""
    lines = [
        "| true \\ predicted | " + " | ".join(classes) + " |",
        "|---" * (len(classes) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |"
              for name, row in zip(classes, matrix.tolist(), strict=True)]  # fmt: skip
    return "\n".join(lines)


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

"""What TensorBoard shows beyond the metrics the LightningModule logs: speed and provenance.

- `perf/epoch_time_s`, `perf/images_per_s` after every training epoch;
- `run/config` (the composed config as YAML) and `run/git` (the commit of the code);
- optional: weight and gradient histograms (`histograms`), the model graph (`graph`, traced
  with the module's `example_input_array`, or one input of the data module's input spec).
`TensorBoard` is the logger: every chart is named as the metric is (`test/acc`, as results.json
and tools such as tbparse know it); `make tensorboard` (scripts/tensorboard.py) pins the
validation curves at the top of the first screen. `hparams` gives the HParams tab's columns. A classifier's pictures are
`mnistlab.classify.pictures`; any module may draw its own through `tensorboard_writer`.
"""

import subprocess
import time
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from mnistlab.lab.config import ROOT


class TensorBoard(TensorBoardLogger):
    """Lightning's TensorBoard logger with no `epoch`
    staircase (Lightning adds one to every log call; the step is the x axis), and an HParams
    record without one-point copies of the metrics. Arguments as TensorBoardLogger's.

    The record is the run's hyperparameters and its end, not an experiment summary: TensorBoard
    then builds the HParams table from all the runs it sees, marks the hyperparameters whose
    values differ between them, shows those first, and takes every chart's last value as a
    metric (val/acc_best's last value is the best one). A summary written by each run would be
    one run's columns for all."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        shown = {k: v for k, v in metrics.items() if k != "epoch"}
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
        _, start, end = summaries(plain, metrics)
        from mnistlab.lab.compat import event_file_writer

        writer = event_file_writer(self.experiment)
        for summary in (start, end):
            writer.add_summary(summary, step)
        writer.flush()


def hparams(cfg, choices: dict | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """The HParams tab's columns: the experiment and `name`, every key set on the command line
    (so a sweep's varied keys are all there; `paths.*` and `hydra.*` aside), then `log_hparams`.
    `choices` and `overrides`: Hydra's config group choices and the run's overrides."""
    from omegaconf import OmegaConf

    from mnistlab.lab.config import to_plain

    choices = choices or {}
    named = {_key_of(v): k for k, v in OmegaConf.to_container(cfg.log_hparams).items()
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


def tensorboard_writer(trainer):
    """The run's TensorBoard SummaryWriter, None when it logs elsewhere (`logger=csv`)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _key_of(interpolation: str) -> str:
    """The key a `log_hparams` column shows: `${a.b}` and `${oc.select:a.b,default}` -> a.b."""
    inner = interpolation[2:-1]
    return inner.removeprefix("oc.select:").split(",")[0]


class Dashboard(Callback):
    def __init__(self, histograms: bool = False, graph: bool = False):
        self.histograms, self.graph = histograms, graph
        self._epoch_start, self._images, self._last_batch = 0.0, 0, False

    def on_fit_start(self, trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        config = yaml.safe_dump(dict(pl_module.hparams), sort_keys=False)
        writer.add_text("run/config", f"```yaml\n{config}```", trainer.global_step)
        writer.add_text("run/git", _git_description(), trainer.global_step)
        example = pl_module.example_input_array
        spec = getattr(trainer.datamodule, "spec", None)
        if example is None and spec is not None:
            example = torch.zeros(1, *spec.shape)
        if self.graph and isinstance(example, torch.Tensor):
            writer.add_graph(pl_module, example.to(pl_module.device))

    def on_train_start(self, trainer, pl_module) -> None:
        # Resumed part-way through an epoch, Lightning calls no on_train_epoch_start for it.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start, self._images = time.perf_counter(), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._last_batch = batch_idx + 1 >= trainer.num_training_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        first = batch[0] if isinstance(batch, list | tuple) else batch
        self._images += len(first)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._epoch_start
        # Under DDP: the slowest process's time, and the images of all processes per second.
        pl_module.log("perf/epoch_time_s", seconds, sync_dist=True, reduce_fx="max")
        pl_module.log("perf/images_per_s", self._images / seconds, sync_dist=True, reduce_fx="sum")
        writer = tensorboard_writer(trainer)
        if self.histograms and writer is not None:
            for name, p in pl_module.named_parameters():
                writer.add_histogram(f"weights/{name}", p, trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """The gradients of the epoch's last step (they are cleared after each step)."""
        writer = tensorboard_writer(trainer)
        if not (self.histograms and writer is not None and self._last_batch):
            return
        for name, p in pl_module.named_parameters():
            if p.grad is not None:
                writer.add_histogram(f"grads/{name}", p.grad, trainer.global_step)


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

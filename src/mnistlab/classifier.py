"""The training system: any classifier network, cross-entropy, accuracy, and its optimizer."""

from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric, Metric
from torchmetrics.classification import MulticlassCalibrationError, MulticlassConfusionMatrix

from mnistlab.classify import scores
from mnistlab.classify.calibration import BINS, TemperatureFit
from mnistlab.lab import UserError

STAGES = ("train", "val", "test")


class Classifier(LightningModule):
    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., Optimizer],
        loss: nn.Module | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        num_classes: int = 10,
        channels_last: bool = False,
        compile: bool = False,
    ):
        """`optimizer` and `scheduler` are factories (Hydra `_partial_` nodes) called with the
        parameters and the optimizer. Lightning's `monitor` for a plateau scheduler is val/loss.
        `loss`: per-image losses from (logits, labels), `reduction="none"`; `CrossEntropy()`
        when not given.
        `channels_last`: NHWC memory layout, which CPU convolution and pooling kernels run faster.
        `compile`: `torch.compile` the network in place, so its weights keep their names."""
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.memory_format)
        if compile:
            self.net.compile()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.criterion = CrossEntropy() if loss is None else loss  # per image: exact epoch means
        if getattr(self.criterion, "reduction", "none") != "none":
            raise UserError("model.loss: set reduction: none (the system averages the losses)")
        weight = getattr(self.criterion, "weight", None)
        if weight is not None and weight.numel() != num_classes:
            raise UserError(
                f"model.loss.weight has {weight.numel()} values for {num_classes} classes:"
                " give one weight per class, in the order of data.classes"
            )
        # Per stage: accuracy and mean loss, updated every step and logged once per epoch (in
        # Lightning 2.6 each `self.log` call costs ~1 ms on a CPU, a tenth of a training step).
        for stage in STAGES:
            setattr(self, f"{stage}_metrics", StageMetrics())
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints, so that a run resumed part-way reports what an unbroken one would.
        for metric in (self.train_metrics, self.val_acc_best):
            metric.persistent(True)
        # Calibration (mnistlab.classify.calibration): the temperature fitted on the validation split at
        # every validation, saved with the weights it fits; the test's calibration error with
        # and without it.
        self.register_buffer("temperature", torch.tensor(1.0))
        self.val_temperature = TemperatureFit()
        self.test_ece, self.test_ece_uncalibrated = (
            MulticlassCalibrationError(num_classes, n_bins=BINS, validate_args=False) for _ in "ab"
        )
        # Per-class precision, recall, F1 and support of the test (`extra_results`).
        self.test_confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.test_per_class: dict[str, dict] = {}

    def __setattr__(self, name: str, value) -> None:
        # Lightning records the running hook's name on the module around every hook call, some
        # 30 times per training step; nn.Module's checks for parameters, buffers and submodules
        # make each assignment ~2 us on a CPU, a plain attribute ~0.2 us.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.contiguous(memory_format=self.memory_format))

    def probabilities(self, logits: Tensor) -> Tensor:
        """Calibrated class probabilities: softmax(logits / temperature)."""
        return (logits / self.temperature).softmax(dim=1)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> tuple[Tensor, Tensor]:
        """The batch's mean loss and its logits; the stage's metrics updated."""
        x, y = batch
        logits = self(x)
        losses = self.criterion(logits, y)  # (B,)
        getattr(self, f"{stage}_metrics").update(logits.detach(), y, losses.detach())
        if stage == "val":
            self.val_temperature.update(logits.detach(), y)
        elif stage == "test":
            self.test_ece.update(self.probabilities(logits), y)
            self.test_ece_uncalibrated.update(logits.softmax(dim=1), y)
            self.test_confusion.update(logits.detach(), y)
        return losses.mean(), logits

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss, _ = self._step(batch, "train")
        # Logged only on the steps the logger writes (Lightning's rule), as each call costs ~1 ms.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        """The logits, for callbacks (`outputs` of `on_test_batch_end`: the dashboard's errors)."""
        return self._step(batch, "test")[1].detach()

    def _log_epoch(self, stage: str, loss_name: str) -> Tensor:
        metrics = getattr(self, f"{stage}_metrics")
        acc, loss, images = metrics.compute()  # summed over processes by torchmetrics
        values = {f"{stage}/acc": acc, loss_name: loss}
        if stage == "test":  # how many images the accuracy covers: 10,000 under DDP too
            values["test/images"] = images.float()
        self.log_global(values, prog_bar=stage != "train")
        metrics.reset()
        return acc

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train", "train/loss_epoch")

    def on_validation_epoch_end(self) -> None:
        acc = self._log_epoch("val", "val/loss")
        if not self.trainer.sanity_checking:
            self.val_acc_best(acc)
            self.log_global({"val/acc_best": self.val_acc_best.compute()}, prog_bar=True)
            self.temperature.fill_(self.val_temperature.compute())  # saved with these weights
            self.log_global({"val/temperature": self.temperature.clone()})
        self.val_temperature.reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", "test/loss")
        self.log_global({"test/ece": self.test_ece.compute().float(),
                         "test/ece_uncalibrated": self.test_ece_uncalibrated.compute().float()})  # fmt: skip
        self.test_ece.reset()
        self.test_ece_uncalibrated.reset()
        matrix = self.test_confusion.compute()  # summed over processes by torchmetrics
        self.test_confusion.reset()
        names = getattr(self.trainer.datamodule, "classes", None) or range(len(matrix))
        table = scores.per_class(matrix, [str(n) for n in names])
        f1 = scores.macro_f1(table, matrix)
        self.log_global({"test/f1_macro": torch.tensor(f1, dtype=torch.float32)})
        self.test_per_class = scores.as_record(table)

    def extra_results(self) -> dict:
        """Kept in results.json beside the metrics: the last test's scores per class."""
        return {"per_class": self.test_per_class} if self.test_per_class else {}

    def log_global(self, values: dict, prog_bar: bool = False) -> None:
        """Log epoch values that are the same in every process (torchmetrics synced them). Under
        DDP Lightning asks for `sync_dist`; the max of equal values is exact, where a mean of
        three equal floats need not be."""
        self.log_dict(values, prog_bar=prog_bar, sync_dist=True, reduce_fx="max")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_interval,
                "monitor": "val/loss",
            },
        }


class CrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy per image, as a config gives it: `weight` a list of one weight per class
    (an image's loss is multiplied by its class's weight), `label_smoothing` in [0, 1]."""

    def __init__(self, weight: list[float] | None = None, label_smoothing: float = 0.0):
        weights = None if weight is None else torch.tensor(list(weight), dtype=torch.float32)
        super().__init__(weight=weights, reduction="none", label_smoothing=label_smoothing)


class StageMetrics(Metric):
    """Accuracy and mean per-image loss of one stage over an epoch, as three sums (correct
    predictions, images, losses) that torchmetrics keeps, resets, checkpoints and sums over
    processes. Three in-place tensor additions per step: torchmetrics' MulticlassAccuracy and
    MeanMetric cost ~130 us per training step together, a sixtieth of the step on a CPU."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, losses: Tensor) -> None:
        self.correct.add_((logits.argmax(1) == target).sum())
        self.images.add_(target.numel())
        self.loss_sum.add_(losses.sum())

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        """(accuracy, mean loss, images)"""
        return self.correct / self.images, self.loss_sum / self.images, self.images

"""The training system: any classifier network, cross-entropy, accuracy, and its optimizer."""

from collections.abc import Callable

from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy


class Classifier(LightningModule):
    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        num_classes: int = 10,
    ):
        """`optimizer` and `scheduler` are factories (Hydra `_partial_` nodes) called with the
        parameters and the optimizer. Lightning's `monitor` for a plateau scheduler is val/loss."""
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.criterion = nn.CrossEntropyLoss()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = self.criterion(logits, y)
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, y)
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
            self.log("train/loss_epoch", loss, on_step=False, on_epoch=True)
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity check's validation

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

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

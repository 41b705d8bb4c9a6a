"""Progress output: Rich bars in a terminal, one plain line per epoch in logs and CI."""

import logging
import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

from mnistlab.lab.stats import number

log = logging.getLogger(__name__)


def progress_bar(refresh_rate: int = 1) -> ProgressBar:
    if sys.stdout.isatty():
        return RichProgressBar(refresh_rate=refresh_rate)
    return LineProgressBar()


class LineProgressBar(ProgressBar):
    """One log line per epoch with its time and the metrics marked for the progress bar, a
    step value replaced by its epoch mean where the module logs one (`train/loss_epoch` for
    `train/loss`). Callbacks end an epoch before the LightningModule does, so the line is
    written once the module's `on_train_epoch_end` has logged its means: when the next epoch
    or the training starts or ends."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._epoch_start = 0.0
        self._ended: tuple[int, float] | None = None  # (epoch, seconds) not yet written

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        # Resumed part-way through an epoch, Lightning calls no on_train_epoch_start for it.
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._ended = (trainer.current_epoch, time.perf_counter() - self._epoch_start)

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._write(trainer, pl_module)

    def _write(self, trainer, pl_module) -> None:
        ended, self._ended = self._ended, None
        if ended is None or not (self._enabled and trainer.is_global_zero):
            return
        logged = trainer.callback_metrics
        # The monitored metric too, where the module did not put it on the progress bar.
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        metrics = {**self.get_metrics(trainer, pl_module),
                   **{k: float(v) for k, v in logged.items() if k.endswith("_epoch")
                      or k == monitor}}  # fmt: skip
        shown = "  ".join(f"{k} {number(v)}" for k, v in metrics.items()
                          if isinstance(v, float) and f"{k}_epoch" not in metrics)  # fmt: skip
        log.info("epoch %d/%d  %.1fs  %s", ended[0] + 1, trainer.max_epochs, ended[1], shown)

"""Progress output: Rich bars in a terminal, one plain line per epoch in logs and CI."""

import logging
import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

log = logging.getLogger(__name__)


def progress_bar(refresh_rate: int = 1) -> ProgressBar:
    if sys.stdout.isatty():
        return RichProgressBar(refresh_rate=refresh_rate)
    return LineProgressBar()


class LineProgressBar(ProgressBar):
    """One log line per epoch with its time and the metrics marked for the progress bar."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._epoch_start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        # Resumed part-way through an epoch, Lightning calls no on_train_epoch_start for it.
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        log.info(
            "epoch %d/%d  %.1fs  %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            time.perf_counter() - self._epoch_start,
            shown,
        )

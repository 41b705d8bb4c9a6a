"""The callback that times the template for scripts/bench.py (kept apart: it imports Lightning)."""

from bench import Recorder
from lightning.pytorch.callbacks import Callback


class BenchTimer(Callback):
    """Added on the template's command line: `+callbacks.bench_timer._target_=bench_timer.BenchTimer`."""

    def __init__(self):
        self.rec = Recorder()

    def on_train_batch_end(self, trainer, *args):
        self.rec.step_end()

    def on_train_epoch_start(self, trainer, pl_module):
        self.rec.epoch_start()

    def on_train_epoch_end(self, trainer, pl_module):  # runs after this epoch's validation
        self.rec.epoch_end()

    def on_train_end(self, trainer, pl_module):
        """With `--profile`: Lightning's SimpleProfiler's time per action (each hook of each
        callback, the step, the optimizer), summed over the fit."""
        durations = getattr(trainer.profiler, "recorded_durations", None)
        if durations:
            self.rec.result["profile"] = {k: [sum(v), len(v)] for k, v in durations.items()}

    def on_test_end(self, trainer, pl_module):
        n_train = len(trainer.datamodule.train_set)
        self.rec.write(float(trainer.callback_metrics["test/acc"]), n_train)

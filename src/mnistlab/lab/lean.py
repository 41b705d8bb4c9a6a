"""Less of Lightning's fixed cost per training step, for the same results.

Lightning spends a fixed amount of Python time on every step, whatever the network, which on a
CPU is several percent of a small network's step (`make bench` measures it: docs/speed.md).
Costs that do nothing for the template are removed here; the rest is Lightning's loop.
"""

import os
from contextlib import nullcontext

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import Profiler

from mnistlab.lab.compat import skip_hook

# Hooks Lightning calls on every callback at every batch.
PER_BATCH_HOOKS = (
    *(f"on_{stage}_batch_{when}" for stage in ("train", "validation", "test", "predict")
      for when in ("start", "end")),
    "on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
)  # fmt: skip


def skip_empty_hooks(callbacks) -> None:
    """Stop Lightning from calling per-batch hooks that a callback inherits and does not override.

    Lightning calls every hook on every callback. Each call builds a profiler context and a
    formatted name, even when the hook does nothing. For the template's seven callbacks that is
    about 130 us per training step. Lightning skips a hook attribute that is not callable, so the
    inherited ones are set to None on the instance. Hooks a callback defines still run as before.
    (`mnistlab.lab.compat.skip_hook`)."""
    for callback in callbacks:
        for hook in PER_BATCH_HOOKS:
            if getattr(type(callback), hook, None) is getattr(Callback, hook):
                skip_hook(callback, hook)


class NoProfiler(Profiler):
    """The Trainer's profiler when none is configured. Lightning wraps every hook, step and batch
    in `profiler.profile(name)`, some 30 times per training step. Its default PassThroughProfiler
    does that with a generator-based context manager (~2.8 us a call on this CPU); this one
    returns a shared no-op context (~0.4 us)."""

    _nothing = nullcontext()

    def profile(self, action_name: str):
        return self._nothing

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def summary(self) -> str:
        return ""


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


class NoCudaProbe(Callback):
    """No CUDA query at every optimizer step of a run on the CPU.

    `import lightning` sets PYTORCH_NVML_BASED_CUDA_CHECK=1 for the whole process, so that
    looking for GPUs before a forked DDP launch does not initialize CUDA. With it set, and CUDA
    not initialized, `torch.cuda.is_available()` asks NVML through ctypes (a `dlopen`) on every
    call, and torch's optimizers call it in every `step()` (their graph-capture check): ~70 us a
    call on this CPU with a CUDA build of torch, against ~1.5 us without it. A run on the GPU has
    CUDA initialized, where the answer is cached. A run on the CPU uses no CUDA, so the variable
    is unset for its fit (in the training process, after any fork) and restored when the fit
    ends, failed or not."""

    def __init__(self):
        self.saved: str | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cpu":
            self.saved = os.environ.pop(NVML_CHECK, None)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.restore()  # Lightning calls no teardown hook then

    def restore(self) -> None:
        if self.saved is not None:
            os.environ[NVML_CHECK], self.saved = self.saved, None

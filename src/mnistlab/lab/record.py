"""What every run's checkpoints hold beside the weights and Lightning's own state, whatever the
LightningModule: the global RNG states (`RNGState`), and the run's record (`RunRecord`): its epoch
metrics, its data's input spec, where it came from (`mnistlab.lab.provenance`), and the refusal
to write weights or train on a loss that is not finite. `mnistlab.train` puts both on every
Trainer."""

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from mnistlab.lab import UserError


class RNGState(Callback):
    """Puts the global random states (torch, CUDA, numpy, random) in every checkpoint and restores
    them on resume. The data loaders draw from their own generators, so these states are the
    model's alone (dropout) and an interrupted run goes on drawing what an unbroken one would."""

    def state_dict(self) -> dict:
        """Under DDP, every process's states (each draws its own dropout masks), by rank."""
        state = self._states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, state)
            return {"ranks": states}
        return state

    def load_state_dict(self, state: dict) -> None:
        if "ranks" in state:
            ranks = state["ranks"]
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            state = ranks[rank] if rank < len(ranks) else ranks[0]  # more processes than before
        self._restore(state)

    @staticmethod
    def _states() -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, py_state, py_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(py_state), py_gauss],
        }

    @staticmethod
    def _restore(state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, py_state, py_gauss = state["python"]
        random.setstate((version, tuple(py_state), py_gauss))


class NonFinite(UserError):
    """The loss or the weights became NaN or infinite."""


class RunRecord(Callback):
    """What every run's checkpoints carry for the machinery, whatever the LightningModule: the
    epoch metrics so far (a run resumed after its last epoch, killed while testing, has none
    left to log and still reports them: `restored`), and the data module's input spec when it
    has one (eval, predict and export prepare inputs from it). And what is never written: a
    checkpoint of weights that are not finite. A loss that is not finite stops the run before
    its backward, while the weights are still those of the last good step."""

    def __init__(self, folder: str | None = None):
        self.restored: dict[str, float] = {}
        self.folder, self.provenance = folder, {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Rank 0, when training starts: this start's entry in the run folder's run.json."""
        if stage == "fit" and self.folder and trainer.is_global_zero:
            from mnistlab.lab import provenance

            device = trainer.strategy.root_device
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
            processes = f" x {trainer.world_size} processes" if trainer.world_size > 1 else ""
            self.provenance = provenance.start(self.folder, f"{device} {name}".strip() + processes)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.provenance:
            from mnistlab.lab import provenance
            from mnistlab.lab.preemption import Interrupted

            stopped = isinstance(exception, Interrupted | KeyboardInterrupt)
            provenance.end(self.folder, "interrupted" if stopped else "failed")

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if loss.numel() != 1 and getattr(pl_module, "automatic_optimization", True):
            # what backward would refuse (manual_backward may pass a gradient), said of its step
            raise UserError(f"{type(pl_module).__name__}.training_step returned a loss of shape"
                            f" {tuple(loss.shape)}: the loss must be one number (.mean()?)")  # fmt: skip
        finite = bool(torch.isfinite(loss))
        if trainer.world_size > 1:  # by every process together, or the others wait forever
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            value = loss.item() if not torch.isfinite(loss) else "not finite in another process"
            raise NonFinite(
                f"loss is {value} at epoch {trainer.current_epoch + 1}, step"
                f" {trainer.global_step + 1}: training stopped, no checkpoint of this state"
                " written; lower model.optimizer.lr or check the data"
            )

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        """The metric that picks the best checkpoint, checked against what the module logged in
        the sanity check's validation steps: a wrong name stops the run now, not after an epoch."""
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        logged = sorted(trainer.callback_metrics)
        if monitor and logged and monitor not in logged and not monitor.startswith("train"):
            raise UserError(
                f"monitor={monitor}: the model logs no such metric in validation (it logs"
                f" {', '.join(logged)}); set monitor= (and mode=) to one of them"
            )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        bad = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()]
        if bad:  # a checkpoint that cannot be resumed from is worse than none
            raise NonFinite(
                f"weights {', '.join(bad[:3])} are not finite at step {trainer.global_step}:"
                " checkpoint not written; lower model.optimizer.lr or check the data"
            )
        spec = getattr(trainer.datamodule, "spec", None)
        if spec is not None:
            checkpoint["input_spec"] = spec.as_dict()
        if self.provenance:
            checkpoint["provenance"] = self.provenance
        checkpoint["callback_metrics"] = {k: float(v) for k, v in
                                          trainer.callback_metrics.items() if v.numel() == 1}  # fmt: skip

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self.restored = dict(checkpoint.get("callback_metrics", {}))

"""Resuming, in process on tiny data: exact continuation, the latest checkpoint, logs, changed configs."""

import logging
import os
import signal
import time
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_checkpoint import RunsCode

from mnistlab.lab import UserError, checkpoint, record
from mnistlab.lab.preemption import Interrupted
from mnistlab.train import train

EXACT = (
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "data.batch_size=32",  # 500 images: 16 steps an epoch
    "model.net.dropout=0.25",  # draws from the global RNG every step
)


class SignalAt(Callback):
    """Sends `signum` to this process at the end of training step `step`."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class Probe(Callback):
    """Records, at the start of every epoch and at the end, the global step in last.ckpt and the
    trainer's (in a class attribute: the instance is built by Hydra)."""

    seen: ClassVar[list[tuple[int, int]]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch > 0:
            Probe.seen.append(self._pair(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        Probe.seen.append(self._pair(trainer))

    @staticmethod
    def _pair(trainer) -> tuple[int, int]:
        last = trainer.checkpoint_callback.last_model_path
        return torch.load(last, weights_only=True)["global_step"], trainer.global_step


def weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def timeless(metrics: dict) -> dict:
    """All but the timings (perf/...), which no two runs share."""
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir)).Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def test_stop_mid_epoch_and_resume_is_exact(tiny_cfg, tmp_path):
    """SIGTERM at step 21 (epoch 2 of 3), then the same config with resume=auto: the weights,
    global step, metrics and TensorBoard curves equal those of a run never stopped."""
    started = time.monotonic()
    whole = train(tiny_cfg(*EXACT, f"paths.output_dir={tmp_path / 'whole'}"))

    cfg = tiny_cfg(*EXACT, f"paths.output_dir={tmp_path / 'cut'}", "resume=auto")
    with open_dict(cfg):
        cfg.callbacks.signal = {"_target_": "test_resume.SignalAt", "step": 21}
    with pytest.raises(Interrupted) as stop:
        train(cfg)
    assert stop.value.exit_code == 143 and stop.value.checkpoint.endswith("last.ckpt")
    assert torch.load(stop.value.checkpoint, weights_only=True)["global_step"] == 21
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back

    with open_dict(cfg):
        del cfg.callbacks.signal
    resumed = train(cfg)

    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) == 0.0
    assert timeless(resumed) == timeless(whole)
    assert (
        torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=True)["global_step"] == 48
    )
    assert timeless(scalars(tmp_path / "cut")) == timeless(scalars(tmp_path / "whole"))
    assert [p.name for p in (tmp_path / "cut").iterdir() if p.is_dir()] == ["checkpoints"]
    # The resumed part-epoch is timed from the resume, not from an epoch start it never saw.
    times = [s for _, s in scalars(tmp_path / "cut")["perf/epoch_time_s"]]
    assert max(times) <= time.monotonic() - started, times


def test_latest_checkpoint_follows_every_epoch_when_the_metric_stalls(tiny_cfg):
    """lr 1e-12: val/acc never improves after epoch 1, so Lightning alone would leave last.ckpt
    at step 4; here it holds the trainer's step after every epoch."""
    Probe.seen = []
    cfg = tiny_cfg("trainer.max_epochs=3", "model.optimizer.lr=1e-12")
    with open_dict(cfg):
        cfg.callbacks.probe = {"_target_": "test_resume.Probe"}
    train(cfg)
    assert Probe.seen == [(4, 4), (8, 8), (12, 12)]


def test_resume_warns_of_changed_settings_and_refuses_another_model(tiny_cfg, tmp_path, caplog):
    out = f"paths.output_dir={tmp_path / 'run'}"
    train(tiny_cfg(out))
    with caplog.at_level(logging.WARNING, logger="mnistlab"):
        train(tiny_cfg(out, "resume=auto", "trainer.max_epochs=2", "model.optimizer.lr=0.002"))
    (changed,) = [r.getMessage() for r in caplog.records if "changed config" in r.getMessage()]
    assert "model.optimizer.lr 0.001 -> 0.002" in changed and "trainer.max_epochs 1 -> 2" in changed
    assert "log_hparams" not in changed or "lr" in changed

    with pytest.raises(UserError, match=r"does not fit .*missing: net\.layers\.3\.weight") as err:
        train(tiny_cfg(out, "resume=auto", "trainer.max_epochs=3", "model.net.channels=[16,32]"))
    assert "\n" not in str(err.value) and "unexpected" in str(err.value)


def test_resume_auto_passes_over_a_damaged_checkpoint_and_says_so(tiny_cfg, tmp_path, caplog):
    out = f"paths.output_dir={tmp_path / 'run'}"
    train(tiny_cfg(out, "trainer.max_epochs=2", "model.optimizer.lr=1e-12"))  # best: epoch 1
    folder = tmp_path / "run" / "checkpoints"
    last = folder / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01
    last.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="mnistlab"):
        train(tiny_cfg(out, "trainer.max_epochs=3", "model.optimizer.lr=1e-12", "resume=auto"))
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "Not resuming from last.ckpt (sha256" in messages
    assert "Resuming from" in messages and "epoch000" in messages and "newest intact" in messages


def test_resume_must_names_the_folder_when_there_is_no_checkpoint(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match=r"resume=must: no intact checkpoint in .*run/checkpoints"):
        train(tiny_cfg(f"paths.output_dir={tmp_path / 'run'}", "resume=must"))


def test_nan_loss_stops_at_its_step_and_writes_no_checkpoint(tiny_cfg, tmp_path):
    """lr 1e30: the first update sends the weights to ~1e30, the second forward overflows."""
    cfg = tiny_cfg(f"paths.output_dir={tmp_path / 'run'}", "model.optimizer.lr=1e30")
    with pytest.raises(UserError, match=r"loss is (nan|inf) at epoch 1, step \d+") as err:
        train(cfg)
    assert "model.optimizer.lr" in str(err.value)
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_resume_and_ckpt_path_refuse_a_checkpoint_that_would_run_code(tiny_cfg, tmp_path):
    out = f"paths.output_dir={tmp_path / 'run'}"
    train(tiny_cfg(out))
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.save({"state_dict": {}, "x": RunsCode(marker)}, evil)  # newest, checksum matches
    with pytest.raises(checkpoint.CheckpointError, match=r"refused checkpoint .*last\.ckpt"):
        train(tiny_cfg(out, "resume=auto", "trainer.max_epochs=2"))
    with pytest.raises(checkpoint.CheckpointError, match=r"refused checkpoint .*last\.ckpt"):
        train(tiny_cfg(f"paths.output_dir={tmp_path / 'new'}", f"ckpt_path={evil}"))
    assert not marker.exists()


def test_weights_that_are_not_finite_are_never_checkpointed(tiny_cfg):
    """Whatever the LightningModule: the run's record (a callback of every run) refuses them."""
    model = instantiate(tiny_cfg().model)
    with torch.no_grad():
        next(model.net.parameters())[0] = float("nan")
    trainer = SimpleNamespace(global_step=3, datamodule=None, callback_metrics={})
    with pytest.raises(UserError, match=r"weights net\.layers\.0\.weight are not finite at step 3"):
        record.RunRecord().on_save_checkpoint(trainer, model, {})


def test_a_loss_that_is_not_one_number_is_named_with_the_step_that_made_it():
    """A training_step of one's own returning per-sample losses: said of training_step, not as
    a crash in the finiteness check that runs before backward."""
    trainer = SimpleNamespace(world_size=1, current_epoch=0, global_step=0)
    with pytest.raises(UserError, match=r"Linear\.training_step returned a loss of shape \(4, 1\)"):
        record.RunRecord().on_before_backward(trainer, torch.nn.Linear(1, 1), torch.ones(4, 1))


def test_a_checkpoint_from_before_stage_metrics_is_refused_in_one_line(tiny_cfg, tmp_path):
    """Checkpoints written with torchmetrics' MulticlassAccuracy and MeanMetric as the train
    metrics (before StageMetrics, 0.1.0's development) are not migrated: named and refused."""
    from mnistlab.lab.checkpoint import check_fits

    model = instantiate(tiny_cfg().model)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("train_metrics.")}
    state |= {"train_acc.tp": torch.tensor(7), "train_loss.mean_value": torch.tensor(5.0)}
    with pytest.raises(UserError, match=r"missing: train_metrics\.correct.*unexpected: train_acc"):
        check_fits(state, model, tmp_path / "old.ckpt")


def test_submitit_s_signal_checkpoints_first_then_submitit_requeues(
    tiny_cfg, tmp_path, monkeypatch
):
    """In a job submitit started, its SIGUSR2 handler (here a stand-in) requeues the job and
    exits. The checkpoint is written first, and is the step the signal arrived at."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    seen = []

    def submitit_handler(signum, frame):  # what submitit installs before calling the job
        last = tmp_path / "run" / "checkpoints" / "last.ckpt"
        seen.append(torch.load(last, weights_only=True)["global_step"])

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        cfg = tiny_cfg("trainer.max_epochs=3", "logger=none")
        with open_dict(cfg):
            cfg.callbacks.signal = {"_target_": "test_resume.SignalAt", "step": 6,
                                    "signum": int(signal.SIGUSR2)}  # fmt: skip
        with pytest.raises(Interrupted) as stop:
            train(cfg)
        assert seen == [6] and stop.value.exit_code == 128 + signal.SIGUSR2
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # given back
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_requeued_sweep_job_continues_from_its_checkpoint(tiny_cfg, monkeypatch):
    from mnistlab.lab.launch import _continue_if_requeued

    cfg = tiny_cfg()
    _continue_if_requeued(cfg)
    assert cfg.resume == "never"  # a first start
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _continue_if_requeued(cfg)
    assert cfg.resume == "auto"


def test_a_run_folder_has_one_writer_and_a_dead_holder_s_lock_is_taken_over(tmp_path):
    import subprocess
    import sys
    import time

    from mnistlab.lab.run_folder import hold

    folder = tmp_path / "run"
    with hold(folder):  # noqa: SIM117 (a second hold, even in the same process, is refused)
        with pytest.raises(UserError, match=rf"in use by pid {os.getpid()} on "):
            hold(folder).__enter__()
    with hold(folder):  # released at the end: taken again
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mnistlab.lab.run_folder import hold\n"
         f"with hold({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with (
        pytest.raises(UserError, match=rf"run folder is in use by pid {holder.pid} "),
        hold(folder),
    ):
        pass
    holder.kill()  # kill -9: its lock ends with it
    holder.wait(timeout=10)
    deadline = time.monotonic() + 5
    with hold(folder):
        assert f"pid {os.getpid()} " in (folder / ".lock").read_text()
    assert time.monotonic() < deadline


def test_hydra_s_own_settings_are_not_part_of_what_makes_two_commands_the_same_run():
    """Hydra records `hydra.*` overrides apart from the task's: a command with
    `hydra.searchpath=...` (a config folder of one's own) must still find its run."""
    from mnistlab.lab.run_folder import identity

    given = ["model=plain", "hydra.searchpath=[file:///x/conf]", "resume=auto", "seed=1"]
    assert identity(given) == identity(["seed=1", "model=plain"])


def test_a_damaged_results_json_is_said_and_the_run_taken_as_unfinished(tmp_path, caplog):
    from mnistlab.lab.run_folder import finished

    (tmp_path / "results.json").write_text('{"metrics": {"test/acc": 0.9')  # cut short
    with caplog.at_level("WARNING"):
        assert finished(tmp_path, 5, -1) is None
    assert "results.json cannot be read" in caplog.text and "taken as unfinished" in caplog.text
    assert finished(tmp_path / "none", 5, -1) is None  # no results yet: nothing to say

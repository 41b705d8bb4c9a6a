"""Running the real command line in a subprocess, on synthetic data, everything under tmp folders."""

import os
import subprocess
import sys
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

TESTS = Path(__file__).parent


def cli_env(env: dict | None = None) -> dict:
    """This environment, with the tests folder importable (for test callbacks named in configs)."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **(env or {})}


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnistlab.train", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def cli_args(synthetic_mnist, run_dir: Path) -> list[str]:
    sums = ",".join(f"{k}:{v}" for k, v in synthetic_mnist.checksums.items())
    return [
        f"hydra.run.dir={run_dir}",
        f"paths.data_dir={synthetic_mnist.root}",
        f"paths.log_dir={run_dir.parent}",
        f"data.checksums={{{sums}}}",
        "data.sources=[local]",
        "data.val_size=100",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_test_batches=2",
        "trainer.log_every_n_steps=1",
    ]


def trained(synthetic_mnist, run_dir: Path, *overrides: str) -> Path:
    """`run_dir`, a run of the real command line on the synthetic data."""
    proc = run_cli(*cli_args(synthetic_mnist, run_dir), *overrides, cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def base_args(synthetic_mnist, log_dir: Path, *overrides: str) -> list[str]:
    """cli_args without a fixed run folder: runs land in log_dir/train/runs/<timestamp>."""
    args = [a for a in cli_args(synthetic_mnist, log_dir / "x") if not a.startswith("hydra.run")]
    return [*args, *overrides]


def start_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mnistlab.train", *args],
        cwd=cwd,
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"run ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


class PauseAt(Callback):
    """At training step `step`, once (the file `marker` records it): create `marker`, then wait
    until a stop signal has been noted (or `wait_s`), so that a test can signal or kill the run
    at a known step. Named in configs as `runner.PauseAt`."""

    def __init__(self, step: int, marker: str, wait_s: float = 60):
        self.step, self.marker, self.wait_s = step, Path(marker), wait_s

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step != self.step or self.marker.exists() or not trainer.is_global_zero:
            return  # under DDP rank 0 pauses; the others wait for it at their next collective
        self.marker.touch()
        (preemption,) = [c for c in trainer.callbacks if type(c).__name__ == "Preemption"]
        deadline = time.monotonic() + self.wait_s
        while preemption.pending is None and time.monotonic() < deadline:
            time.sleep(0.02)


class FailOnce(Callback):
    """Raises at the start of epoch 2 of a run with learning rate `lr`, the first time only (the
    file `marker` records it): a job that crashes after its first checkpoint, once."""

    def __init__(self, lr: float, marker: str):
        self.lr, self.marker = lr, Path(marker)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        if trainer.current_epoch == 1 and abs(lr - self.lr) < 1e-12 and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError("injected failure in epoch 2")


class FailInTrial(Callback):
    """Raises at the start of epoch 2 in the job of Optuna trial `trial` (the sweeper tells a job
    its trial in its environment): a crashed job in the middle of a study."""

    def __init__(self, trial: int):
        self.trial = trial

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        import base64
        import json
        import os

        spec = json.loads(base64.urlsafe_b64decode(os.environ["MNISTLAB_OPTUNA_TRIAL"]))
        if trainer.current_epoch == 1 and spec["trial"] == self.trial:
            raise RuntimeError(f"injected failure in trial {self.trial}")


class PauseInTest(Callback):
    """At the first test batch, once: create `marker`, then wait (a minute at most), so that a
    test can kill the run while it tests its best checkpoint. Named as `runner.PauseInTest`."""

    def __init__(self, marker: str):
        self.marker = Path(marker)

    def on_test_batch_start(self, *args) -> None:
        if self.marker.exists():
            return
        self.marker.touch()
        time.sleep(60)


class NaNOnRank(Callback):
    """At training step `step`, in the process of global rank `rank` only: the first weight
    becomes NaN, so that this process alone computes a NaN loss. Named as `runner.NaNOnRank`."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            import torch

            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


KILL_AT = "MNISTLAB_TEST_KILL_AT"
PHASES = ("sanity", "train", "val", "ckpt", "test", "results")


class KillAt(Callback):
    """`kill -9` of its own process at the point `$MNISTLAB_TEST_KILL_AT` names, `phase:n`: the
    n-th sanity-check, training, validation or test batch of this process, or its n-th rename
    of a checkpoint file or sidecar into place (`ckpt`), or just before `results.json` is put in
    place (`results`). Unset: it does nothing, so the command stays the same. Named in configs
    as `runner.KillAt`."""

    def __init__(self):
        phase, _, n = os.environ.get(KILL_AT, "").partition(":")
        self.phase, self.n, self.seen = phase, int(n or 0), 0
        if phase in ("ckpt", "results"):
            replace = os.replace

            def replace_or_die(src, dst, *args, **kwargs):
                name = str(dst)
                if (phase == "ckpt" and name.endswith((".ckpt", ".sha256"))) or (
                    phase == "results" and name.endswith("results.json")
                ):
                    self._count()
                return replace(src, dst, *args, **kwargs)

            os.replace = replace_or_die

    def _count(self) -> None:
        self.seen += 1
        if self.seen == self.n:
            os.kill(os.getpid(), 9)

    def on_validation_batch_end(self, trainer, *args) -> None:
        if self.phase == ("sanity" if trainer.sanity_checking else "val"):
            self._count()

    def on_train_batch_end(self, *args) -> None:
        if self.phase == "train":
            self._count()

    def on_test_batch_end(self, *args) -> None:
        if self.phase == "test":
            self._count()


STOP_AT = "MNISTLAB_TEST_STOP_AT"


class StopAt(Callback):
    """Holds sweep job `job` at the point `$MNISTLAB_TEST_STOP_AT` names, `job:phase:n:marker`:
    the n-th training, validation or test batch that job's process runs; there it creates
    `marker` and waits (a minute at most) until a stop is noted, so that a test can signal or kill
    the sweep's own process at a known point. A job numbered after it, running beside it (joblib),
    waits the same way at its first training batch: it cannot finish first. Unset: it does
    nothing, so the command stays the same. Named in configs as `runner.StopAt`."""

    def __init__(self):
        from hydra.core.hydra_config import HydraConfig

        job, phase, n, marker = (os.environ.get(STOP_AT) or "-1:-:0:").split(":", 3)
        self.phase, self.n, self.marker, self.seen = phase, int(n), Path(marker), 0
        this = HydraConfig.get().job.num
        self.later = int(job) >= 0 and this > int(job)
        if int(job) != this:
            self.phase = None

    def _count(self, trainer, phase: str) -> None:
        if phase != self.phase:
            return
        self.seen += 1
        if self.seen == self.n:
            self.marker.touch()
            self._wait(trainer)

    def _wait(self, trainer) -> None:
        (preemption,) = [c for c in trainer.callbacks if type(c).__name__ == "Preemption"]
        deadline = time.monotonic() + 60
        while preemption.pending is None and time.monotonic() < deadline:
            time.sleep(0.02)  # outside training a SIGTERM raises here

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.later:
            self.later = False
            self._wait(trainer)
        self._count(trainer, "train")

    def on_validation_batch_end(self, trainer, *args) -> None:
        self._count(trainer, "sanity" if trainer.sanity_checking else "val")

    def on_test_batch_end(self, trainer, *args) -> None:
        self._count(trainer, "test")


class FillDisk(Callback):
    """At the start of epoch `epoch` (0-based), the first time only (the file `marker` records
    it): fills the file system that holds the run folder up to its last `leave` bytes (the file
    `filler` there), so that the next checkpoint meets a really full disk. Named in configs as
    `runner.FillDisk`."""

    def __init__(self, epoch: int, marker: str, leave: int = 1 << 16):
        self.epoch, self.marker, self.leave = epoch, Path(marker), leave

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch or self.marker.exists():
            return
        self.marker.touch()
        filler = Path(trainer.default_root_dir) / "filler"
        disk = os.statvfs(filler.parent)
        free = disk.f_bavail * disk.f_frsize - self.leave
        with filler.open("wb") as f:
            while free > 0:
                free -= f.write(b"\0" * min(free, 1 << 20))

"""Stopping cleanly on a signal: SIGTERM (preemption), SIGINT (Ctrl-C), SIGUSR1 (SLURM's warning).

Inside training the handler only notes the signal; at the next batch boundary `last.ckpt` is
written and the run stops with exit status 128 + the signal's number (143, 130), so that a
scheduler sees an interrupted job, not a finished one (Lightning 2.6 exits 0 on SIGTERM). The
same command with `resume=auto` continues from that checkpoint. Outside training there is
nothing to save and the run stops at once; so does a second Ctrl-C. Under SLURM (SLURM_JOB_ID
set), SIGUSR1 also requeues the job, once. In a job submitit started (hydra/launcher=slurm),
submitit's own signal (SIGUSR2) first writes the checkpoint, then goes to submitit, which
requeues the job; the requeued job continues from the checkpoint (mnistlab.lab.launch).

Why not Lightning's own SLURM auto-requeue (`SLURMEnvironment(auto_requeue=True)`, checked on
lightning 2.6.6): its SIGUSR1 handler saves `hpc_ckpt_<n>.ckpt` inside the signal handler, at
whatever point of a step the signal lands (under DDP each process at its own point, and the save
is collective), marks the loggers finished, and then lets training run on until SLURM kills it;
the requeued run resumes only from `ckpt_path="hpc"`. Here the processes agree on a step, stop
at its boundary with an exact `last.ckpt` and exit 138, and `resume=auto` continues from it. As
these handlers are installed before the Trainer starts, Lightning does not install its own.

A sweep's worker process (joblib's, submitit_local's) outlives no sweep, even one killed by
`kill -9`: it checks every half second that the sweep's process ($MNISTLAB_SWEEP_PID) still
runs; once it does not, a job in progress stops as on SIGTERM (a checkpoint, its record), then
the worker exits.
"""

import logging
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from mnistlab.lab.checkpoint import RunCheckpoint
from mnistlab.lab.compat import log_train_step_metrics
from mnistlab.lab.distributed import launched_rank, stop_watching_children
from mnistlab.lab.sweeps import SWEEP_PID

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """The run was stopped by a signal; `checkpoint` is where it can resume from."""

    def __init__(self, signum: int, checkpoint: str | None = None, requeued: bool = False):
        self.signum, self.checkpoint, self.requeued = signum, checkpoint, requeued
        super().__init__(f"Stopped by {signal.Signals(signum).name}")

    def __reduce__(self):  # pickled as it was made: a job in a worker process returns it
        return type(self), (self.signum, self.checkpoint, self.requeued)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Preemption(Callback):
    """Use as a context manager around the whole run, and as a callback of its Trainer."""

    def __init__(self):
        self.slurm_job = _slurm_job_id()
        self.signals = [signal.SIGTERM, signal.SIGINT] + (
            [signal.SIGUSR1] if self.slurm_job else []
        )
        self.submitit_signal = _submitit_signal()
        if self.submitit_signal is not None:
            self.signals.append(self.submitit_signal)
        self.pending: int | None = None
        self.armed = False  # inside training, where stopping waits for a batch boundary
        self.requeued = False
        self._previous = {}

    def __enter__(self):
        self._install()
        if _watching and stop_noted():  # came to a sweep's worker before these handlers: stop
            self.__exit__()
            raise Interrupted(stop_noted())
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (a threaded launcher keeps its own)
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def _handle(self, signum: int, frame) -> None:
        if self.pending is not None and not signum == signal.SIGINT == self.pending:
            return  # stopping already: the checkpoint, then a requeue, whose SIGTERM lands here
        if not self.armed or (signum == signal.SIGINT and self.pending == signal.SIGINT):
            # Nothing to save (starting, testing). SLURM's warning still means the time is up:
            # the job is requeued, and the requeued job starts, or tests, again.
            requeue = signum == signal.SIGUSR1 and self.slurm_job and launched_rank() == 0
            raise Interrupted(signum, requeued=bool(requeue) and self._requeue())
        self.pending = signum
        log.warning(
            "%s received: stopping after this batch with a checkpoint%s",
            signal.Signals(signum).name,
            " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "",
        )

    # Lightning registers its own SIGTERM handler (which exits 0) when fit starts: ours replaces it.
    def on_train_start(self, trainer, pl_module) -> None:
        self._install()
        self.armed = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.world_size == 1:  # a signal during validation: last.ckpt is already current
            self._stop_if_asked(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.pending is not None:
            # What Lightning does right after this hook, so that this step's metrics are logged:
            # the resumed run starts with the next step and would never log them.
            log_train_step_metrics(trainer)
        self._stop_if_asked(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop_if_asked(trainer)
        self.armed = False

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.armed = False
        stop_watching_children()  # under DDP: this process reports and exits as itself

    def _stop_if_asked(self, trainer) -> None:
        if trainer.world_size > 1:
            self._agree(trainer)
        if self.pending is None:
            return
        self.armed = False
        path = None
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, RunCheckpoint):
            path = ckpt.save_latest(trainer)
        if self.pending == signal.SIGUSR1 and trainer.is_global_zero:
            self.requeued = self._requeue()
        if self.pending == self.submitit_signal and callable(self._previous.get(self.pending)):
            log.info("Checkpoint written: submitit requeues the job")
            self._previous[self.pending](self.pending, None)  # rank 0: requeues, then exits
        raise Interrupted(self.pending, path, self.requeued)

    def _agree(self, trainer) -> None:
        """Under DDP the processes stop at the same step, or those still training would wait for
        the others forever: a signal any of them received stops them all (one all-reduce)."""
        import torch

        flag = torch.tensor([self.pending or 0], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.pending is None:
            self.pending = int(flag.item())

    def _requeue(self) -> bool:
        if self.requeued:
            return True
        try:
            proc = subprocess.run(["scontrol", "requeue", self.slurm_job],
                                  capture_output=True, text=True, timeout=30)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            log.error("scontrol requeue %s failed: %s", self.slurm_job, e)
            return False
        if proc.returncode != 0:
            log.error("scontrol requeue %s failed: %s", self.slurm_job, proc.stderr.strip())
            return False
        log.info("Requeued SLURM job %s", self.slurm_job)
        return True


def _submitit_signal() -> int | None:
    """The signal submitit (hydra/launcher=slurm) requeues a job on, when it started this one."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def _slurm_job_id() -> str | None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


_in_job = threading.Event()
_watching: list[int] = []
_stops: list[int] = []  # the signals that stopped a job of this process, or came between jobs


def note_stop(signum: int, frame=None) -> None:
    """A sweep's jobs not yet started in this process will not start (their record says so)."""
    _stops.append(signum)


def stop_noted() -> int | None:
    return _stops[0] if _stops else None


@contextmanager
def sweep_job():
    """Around one sweep job. In a worker process: the watch on the sweep's process (above), and
    a stop signal between jobs is noted, not fatal: the worker's next job does not start (and a
    worker the sweep passed SIGTERM on to while it had no job does not die, which would break
    the launcher)."""
    sweep = int(os.environ.get(SWEEP_PID) or 0)
    if sweep and sweep != os.getpid() and not _watching:
        _watching.append(sweep)
        threading.Thread(target=_watch_sweep, args=(sweep,), daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, note_stop)
    _in_job.set()
    try:
        yield
    finally:
        _in_job.clear()


def _watch_sweep(sweep: int) -> None:
    signalled = False
    while _alive(sweep):
        time.sleep(0.5)
    while _in_job.is_set():
        if not signalled:
            log.warning("The sweep's process %d is gone: this job stops", sweep)
            os.kill(os.getpid(), signal.SIGTERM)
            signalled = True
        time.sleep(0.2)
    # Nothing will give this worker another job, and its job has written its record: it ends
    # (from this thread, which may not set signal handlers, a signal is the way to do it).
    os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs: not gone, not a zombie (killed, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: the signal 0 test, which a zombie passes
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

"""The `mnistlab-train` command around `train(cfg)`: the process and job layer.

`mnistlab.train` is the run itself; this is all a run needs as a command: the command line checked
and composed once (`mnistlab.lab.cli`), the exit status and one-line errors, a sweep's job and its
status file, SLURM's requeue, parallel jobs sharing the cores, and a DDP job of a sweep run as its
own command. Under DDP, rank 0 settles the command and the others run it (`lab.distributed`).
"""

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import hydra
from omegaconf import DictConfig, open_dict, read_write

from mnistlab.lab import UserError, failure, refuse
from mnistlab.lab.cli import settle
from mnistlab.lab.config import CONF_DIR
from mnistlab.lab.resume import NothingToDo
from mnistlab.lab.run_folder import hold

log = logging.getLogger("mnistlab.train")  # the run's logger: one name in train.log


Run = Callable[..., dict[str, float]]  # train(cfg, extra_callbacks) -> the run's metrics


def _run(cfg: DictConfig, run: Run) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from mnistlab.lab import distributed
    from mnistlab.lab.preemption import Interrupted

    hc = HydraConfig.get()
    logging.raiseExceptions = False  # train.log on a disk that fills: no traceback per line
    distributed.quiet_file_logs()
    distributed.pass_job_to_workers(_job_overrides(hc), cfg.paths.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        return _sweep_job(cfg, run)
    as_job = os.environ.get(distributed.JOB_PROCESS_ENV) == "1"  # a sweep's job, as its own command
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        log.info("SLURM requeued this job (SLURM_RESTART_COUNT=%s): resume=%s",
                 os.environ["SLURM_RESTART_COUNT"], cfg.resume)  # fmt: skip
    try:
        # One process writes a run folder: rank 0 (the others follow it), and for a sweep's job
        # run as its own command, the sweep (which holds the lock already).
        with _hold(cfg.paths.output_dir, distributed.launched_rank() == 0 and not as_job):
            metrics = _train(cfg, run)
    except Exception as e:
        expected = isinstance(e, UserError | Interrupted)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(e, Interrupted):
            _report_interrupted(e)
            sys.exit(e.exit_code)
        if not expected:  # as a sweep reports a failed job: one line, the traceback in train.log
            # a sweep's DDP job: its sweep reports it and says where its train.log is
            _report_failure(e, *(("Job", None) if as_job else ("Run", cfg.paths.output_dir)))
        else:
            log.error("%s", e)
        sys.exit(1)
    except SIGTERMException:  # Lightning's own handler, should a SIGTERM reach it first
        log.warning("Stopped by SIGTERM; resume with the same command and resume=auto")
        sys.exit(128 + signal.SIGTERM)
    return _objective(cfg, metrics, sweep=as_job)


def _hold(folder: str, lock: bool):  # the run folder's lock when `lock`
    return hold(Path(folder)) if lock else nullcontext()


def _sweep_job(cfg: DictConfig, run: Run) -> float:
    """One job of a sweep. Its status goes to job.json in its folder (the sweep's summary reads
    it); a failure is logged with its traceback and raised for the sweeper to note, never an
    exit that would end the other jobs. In a worker process it stops if the sweep dies."""
    from mnistlab.lab.preemption import sweep_job

    with sweep_job():
        return _one_job(cfg, run)


def _one_job(cfg: DictConfig, run: Run) -> float:
    from hydra.core.hydra_config import HydraConfig

    from mnistlab.lab import ddp_job, distributed, sweeps
    from mnistlab.lab.preemption import Interrupted, note_stop, stop_noted

    folder, hc = cfg.paths.output_dir, HydraConfig.get()
    # A job of several SLURM tasks (DDP through srun) runs here in each: rank 0 keeps its record.
    rank_0 = distributed.launched_rank() == 0
    record = sweeps.record if rank_0 else lambda *_, **__: None
    if rank_0:
        sweeps.begin(folder, list(hc.overrides.task))
    if stop_noted():  # a job of this process was stopped by a signal: the sweep stops
        record(folder, status="not started")
        raise Interrupted(stop_noted())
    _share_cores(hc.launcher)
    _continue_if_requeued(cfg)
    start = time.perf_counter()
    try:
        with _hold(folder, distributed.launched_rank() == 0):
            if (
                distributed.several_processes(cfg.trainer)
                and distributed.launched_world_size() == 1
            ):
                metrics = ddp_job.run(cfg, _job_overrides(hc), run)
                objective = _objective(cfg, metrics)
            else:
                objective = _objective(cfg, _train(cfg, run))
    except Interrupted as e:
        note_stop(e.signum)
        _report_interrupted(e, sweep=True)
        record(folder, status="interrupted", signal=e.signum, error=str(e),
               wall_s=time.perf_counter() - start)  # fmt: skip
        raise
    except Exception as e:
        error = str(e) if isinstance(e, ddp_job.JobFailed) else _report_failure(e)
        record(folder, status="failed", error=error[:300],
               wall_s=time.perf_counter() - start)  # fmt: skip
        raise
    pruned = sweeps.read_job(folder).get("pruned_after_epoch")  # written by the run, rank 0
    record(folder, status="pruned" if pruned else "completed", wall_s=time.perf_counter() - start)
    return objective


def _train(cfg: DictConfig, run: Run) -> dict[str, float]:
    """`run(cfg)`, reporting to its Optuna trial in a job of an Optuna sweep (its job.json
    then says after which epoch the study pruned it, if it did)."""
    from mnistlab.lab import distributed, pruning, sweeps
    from mnistlab.lab.signing import sign_run

    if distributed.launched_rank() == 0:  # its config as written now: this checkout's own run
        sign_run(cfg.paths.output_dir)
    callbacks = pruning.callbacks()
    metrics = run(cfg, callbacks)
    epoch = pruning.pruned_after(callbacks)
    if epoch is not None and distributed.launched_rank() == 0:
        sweeps.record(cfg.paths.output_dir, pruned_after_epoch=epoch)
    return metrics


def _continue_if_requeued(cfg: DictConfig) -> None:
    """A job SLURM requeued (preempted, timed out) continues from its checkpoint in its folder."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 and str(cfg.resume) == "never":
        log.info(
            "Requeued job (SLURM_RESTART_COUNT=%s): resume=auto", os.environ["SLURM_RESTART_COUNT"]
        )
        with open_dict(cfg):
            cfg.resume = "auto"


def _resume_if_requeued(argv: list[str]) -> list[str]:
    """A run that SLURM requeued (`scontrol requeue`, a preemption, our own SIGUSR1 requeue)
    starts its batch script again: the same command continues its run (`resume=auto`) instead of
    starting a new folder, unless the command says otherwise. A sweep's jobs do the same
    (`_continue_if_requeued`)."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    sweep = any(a in ("-m", "--multirun") for a in argv)
    if restarts == 0 or sweep or any(a.lstrip("+").startswith("resume=") for a in argv):
        return argv
    print(f"mnistlab-train: requeued by SLURM (SLURM_RESTART_COUNT={restarts}): resume=auto",
          file=sys.stderr)  # fmt: skip
    return [*argv, "resume=auto"]


def _report_failure(e: Exception, what: str = "Job", folder: str | None = None) -> str:
    """A failure in the run's code: one line on the console naming where it was raised (the
    innermost frame outside the installed libraries: your module's line), the traceback in the
    run's train.log only (HYDRA_FULL_ERROR=1 shows it on the console instead)."""
    said = failure(e)
    found = f"; the traceback is in {Path(folder) / 'train.log'}" if folder else ""
    log.error("%s failed: %s%s", what, said, found)
    logging.getLogger("mnistlab.traceback").error("%s failed", what, exc_info=True)
    return said


def _job_overrides(hc) -> list[str]:
    """What another process needs to compose this job's config: its task's overrides, and the
    Hydra settings that change what is composed (`hydra.searchpath`: a config folder of one's
    own), which Hydra records apart."""
    composing = [o for o in hc.overrides.hydra if o.startswith("hydra.searchpath=")]
    return [*hc.overrides.task, *composing]


def _objective(cfg: DictConfig, metrics: dict[str, float], sweep: bool = True) -> float | None:
    """The metric sweeps optimize (`optimized_metric`), returned to Hydra's sweeper; a run
    outside a sweep only warns when it has none (nothing reads it)."""
    name = cfg.get("optimized_metric") or "val/acc_best"
    if name not in metrics:
        why = f"optimized_metric={name} is not a metric of this run: {sorted(metrics)}"
        if sweep:
            raise UserError(why)
        log.warning("%s; a sweep of this command would fail: set optimized_metric=", why)
        return None
    return metrics[name]


def _share_cores(launcher: DictConfig) -> None:
    """Parallel jobs on one machine (hydra/launcher=joblib) split the cores between them instead
    of each taking them all: torch threads per job = cores // n_jobs."""
    if "joblib" not in str(launcher.get("_target_", "")):
        return
    import torch

    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or 1
    n_jobs = cores if n_jobs < 0 else n_jobs
    torch.set_num_threads(max(1, cores // n_jobs))
    log.info("%d parallel jobs on %d cores: %d torch threads each", n_jobs, cores,
             torch.get_num_threads())  # fmt: skip


def _report_interrupted(e, sweep: bool = False) -> None:
    where = f"checkpoint {e.checkpoint}" if e.checkpoint else "no checkpoint"
    then = "Continue with the same command and resume=auto"
    then = "The same sweep command continues it" if sweep else then
    if "SLURM_JOB_ID" in os.environ:
        then += " (a job SLURM requeues does that by itself)"
    log.warning("%s: %s%s. %s", e, where, ", job requeued" if e.requeued else "", then)


def main(run: Run) -> None:
    """The train command around `run` (`mnistlab.train.train`: `mnistlab-train`, `python -m
    mnistlab.train`): check the command line, then run it. Under DDP, rank 0 settles the command
    and every other process runs the same one. `run`'s module, run with `python -m`, must call
    this (a DDP job of a sweep is started that way)."""
    from mnistlab.lab import distributed

    def task(cfg: DictConfig) -> float | None:  # a closure: a sweep's launcher pickles `run` too
        return _run(cfg, run)

    settled = {}  # rank 0's (or the only process's) composed config
    # Checked already: the job of the process whose DDP started this one, a sweep's job run as
    # its own command; and (from `agree`) the command rank 0 settled, to a rank > 0.
    argv = distributed.worker_argv()
    if argv is None and os.environ.get(distributed.JOB_PROCESS_ENV) == "1":
        argv = sys.argv[1:]
    try:
        if argv is None:
            argv = distributed.agree(sys.argv[1:], lambda a: _settle(a, settled))
    except distributed.Outcome as e:  # rank 0 said why
        sys.exit(e.code)
    sys.argv[1:] = argv
    cfg = settled["cfg"] if "cfg" in settled else _composed(argv)
    if cfg is None or cfg.hydra.callbacks:  # -m, --cfg, --help, ...; Hydra's callbacks
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(task)()
    else:
        run_composed(cfg, task)


def _composed(argv: list[str]) -> DictConfig | None:  # of a command settled elsewhere
    from hydra import compose, initialize_config_dir

    if any(a.startswith("-") for a in argv):
        return None
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="train"):
        return compose("train", argv, return_hydra_config=True)


def run_composed(cfg: DictConfig, task: Callable[[DictConfig], object]) -> None:
    """Run `task` on a config `mnistlab.lab.cli` composed and checked, as `hydra.main` would
    run it (Hydra's logging, the run folder, its `.hydra/`, HydraConfig) through Hydra's
    launcher API, `run_job`: `hydra.main` would compose it twice more (`Hydra.get_mode`, then
    `Hydra.run`), ~0.12 s each. A config with `hydra.callbacks` goes through `hydra.main`."""
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext, RunMode

    with read_write(cfg.hydra):  # as Hydra's own run records it
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.overrides.hydra = [*cfg.hydra.overrides.hydra, "hydra.mode=RUN"]
    none = SimpleNamespace(on_job_start=lambda **_: None, on_job_end=lambda **_: None)
    context = HydraContext(config_loader=None, callbacks=none)  # what run_job calls on them
    try:  # the task reports its own failures: these are Hydra's (a logging config, say)
        configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
        job = run_job(task, cfg, "hydra.run.dir", None, hydra_context=context)
    except Exception as e:
        sys.exit(refuse("mnistlab-train", UserError(failure(e)), 1))
    _ = job.return_value  # raises what the task raised, as hydra.main does


def _settle(argv: list[str], settled: dict) -> list[str]:
    from mnistlab.lab.distributed import launched_world_size

    argv = _resume_if_requeued(argv)
    try:
        argv, settled["cfg"] = settle(argv, "train", processes=launched_world_size(), claim=True)
        return argv
    except NothingToDo as e:
        print(e)
        sys.exit(0)
    except UserError as e:
        sys.exit(refuse("mnistlab-train", e, getattr(e, "code", 2)))

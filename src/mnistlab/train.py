"""Train and test a model: `python -m mnistlab.train [overrides]`, `mnistlab-train` or `make train`."""

import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mnistlab import UserError
from mnistlab.cli import NothingToDo, prepare
from mnistlab.config import CONF_DIR, to_plain
from mnistlab.runs import write_results
from mnistlab.schema import validate

log = logging.getLogger("mnistlab.train")  # not "__main__" under `python -m`


def train(cfg: DictConfig) -> dict[str, float]:
    """Seed, build, fit (or resume), test the best checkpoint; return the final metrics."""
    validate(to_plain(cfg))  # the command line checked it already; API callers get the same check
    # Imported here rather than at the top: `--help`, `--cfg job` and a bad override stay fast,
    # and Lightning, imported after Hydra configured logging, sends its messages to the run's log.
    import lightning as L

    from mnistlab.checkpoint import AtomicCheckpointIO, RNGState
    from mnistlab.distributed import launch_read_by_all
    from mnistlab.preemption import Preemption
    from mnistlab.resume import resume_point

    logging.getLogger("lightning").handlers.clear()  # its own console handler would print twice
    if cfg.get("float32_matmul_precision"):  # "high"/"medium": TF32/bf16 matmuls on recent GPUs
        import torch

        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    # Lightning 2.6 on torch >= 2.10 warns about its own pytree code on every run; nothing to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    with Preemption() as preemption:
        L.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model)
        # The whole resolved config as plain data: enough to rebuild the run, loads with weights_only.
        model.save_hyperparameters(to_plain(cfg), logger=False)
        ckpt_path, resumed_step = resume_point(cfg, model, datamodule)
        loggers = _loggers(cfg, resumed_step)
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
        # Always on: the RNG states in every checkpoint, atomic verified checkpoint files, and a
        # clean stop on signals. Without them a run cannot be resumed exactly or trusted.
        trainer = instantiate(
            cfg.trainer,
            callbacks=[*callbacks, RNGState(), preemption],
            logger=loggers or False,
            plugins=[*_instantiate_all(cfg.trainer.get("plugins")), AtomicCheckpointIO()],
        )
        _explain_batch(cfg, trainer)
        hparams = to_plain(cfg.log_hparams)
        for logger in loggers:
            logger.log_hyperparams(hparams)  # into hparams.yaml now, so a crashed run has them too

        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        launch_read_by_all()  # every process has joined: srun's launch file has done its work
        metrics = {**model.restored_metrics,
                   **{k: float(v) for k, v in trainer.callback_metrics.items()}}  # fmt: skip
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("No checkpoint was saved: testing the weights as they are after training")
        (test_metrics,) = trainer.test(
            model, datamodule=datamodule, ckpt_path=best or None, verbose=False
        )
    metrics.update(test_metrics)

    reported = list(cfg.get("report_metrics") or [])
    _log_results(trainer, hparams, {k: metrics[k] for k in reported if k in metrics})
    if trainer.is_global_zero:
        write_results(cfg.paths.output_dir, _results(cfg, trainer, metrics, best))
        _summarize(metrics, reported, best, cfg.paths.output_dir)
    return metrics


def _explain_batch(cfg: DictConfig, trainer) -> None:
    """Under DDP each process trains on its own `data.batch_size` images per step."""
    batch = OmegaConf.select(cfg, "data.batch_size")
    if trainer.world_size > 1 and trainer.is_global_zero and batch:
        log.info(
            "DDP, %d processes: each step trains on %d x data.batch_size %d = %d images;"
            " model.optimizer.lr %g is used as it is (not scaled with the batch)",
            trainer.world_size, trainer.world_size, batch, trainer.world_size * batch,
            OmegaConf.select(cfg, "model.optimizer.lr", default=float("nan")),
        )  # fmt: skip


def _loggers(cfg: DictConfig, resumed_step: int | None) -> list:
    """The configured loggers; when resuming, TensorBoard hides what the old run logged after
    the checkpoint (its `purge_step`), so the curves continue without a doubled stretch."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not node:
            continue
        extra = {}
        if resumed_step is not None and node._target_.endswith("TensorBoardLogger"):
            extra["purge_step"] = resumed_step
        loggers.append(instantiate(node, **extra))
    return loggers


def _instantiate_all(node) -> list:
    """A config node holding nothing, one object or a list of them, as a list of objects."""
    if node is None:
        return []
    return [instantiate(n) for n in node] if OmegaConf.is_list(node) else [instantiate(node)]


def _results(cfg: DictConfig, trainer, metrics: dict[str, float], best: str) -> dict:
    return {
        "metrics": metrics,
        "best_checkpoint": best,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "max_epochs": cfg.trainer.get("max_epochs"),
        "max_steps": cfg.trainer.get("max_steps"),
    }


def _log_results(trainer, hparams: dict, metrics: dict[str, float]) -> None:
    """Fill TensorBoard's HParams tab with real results (not Lightning's `hp_metric` placeholder):
    `report_metrics` as hp/<name>."""
    from lightning.pytorch.loggers import TensorBoardLogger

    results = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items()}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, results)
        else:
            logger.log_metrics(results, step=trainer.global_step)
        logger.finalize("success")


def _summarize(metrics: dict[str, float], reported: list[str], best: str, output_dir: str) -> None:
    shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in reported if k in metrics)
    log.info("Done: %s", shown)
    log.info("Best checkpoint: %s", best or "(none saved)")
    log.info("Run folder: %s", output_dir)
    log.info("TensorBoard: make tensorboard  (or: tensorboard --logdir %s)", output_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _run(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from mnistlab import distributed
    from mnistlab.preemption import Interrupted

    hc = HydraConfig.get()
    distributed.quiet_file_logs()
    distributed.pass_job_to_workers(list(hc.overrides.task), cfg.paths.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        return _sweep_job(cfg)
    as_job = os.environ.get(distributed.JOB_PROCESS_ENV) == "1"  # a sweep's job, as its own command
    try:
        # One process writes a run folder: rank 0 (the others follow it), and for a sweep's job
        # run as its own command, the sweep (which holds the lock already).
        with _holding(cfg.paths.output_dir, distributed.launched_rank() == 0 and not as_job):
            metrics = train(cfg)
    except Exception as e:
        expected = isinstance(e, UserError | Interrupted)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (expected or as_job):
            raise
        if isinstance(e, Interrupted):
            _report_interrupted(e)
            sys.exit(e.exit_code)
        if not expected:  # as a sweep reports a failed job: one line, the traceback in train.log
            _report_failure(e)
        else:
            log.error("%s", e)
        sys.exit(1)
    except SIGTERMException:  # Lightning's own handler, should a SIGTERM reach it first
        log.warning("Stopped by SIGTERM; resume with the same command and resume=auto")
        sys.exit(128 + signal.SIGTERM)
    return _objective(cfg, metrics)


_stopped_by: int | None = None  # a signal that stopped a job of this process: the sweep stops


def _sweep_job(cfg: DictConfig) -> float:
    """One job of a sweep. Its status goes to job.json in its folder (the sweep's summary reads
    it); a failure is logged with its traceback and raised for the sweeper to note, never an
    exit that would end the other jobs."""
    global _stopped_by
    from hydra.core.hydra_config import HydraConfig

    from mnistlab import distributed, sweeps
    from mnistlab.preemption import Interrupted

    folder, hc = cfg.paths.output_dir, HydraConfig.get()
    sweeps.record(folder, overrides=list(hc.overrides.task), status="running")
    if _stopped_by:
        sweeps.record(folder, status="not started")
        raise Interrupted(_stopped_by)
    _share_cores(hc.launcher)
    _continue_if_requeued(cfg)
    start = time.perf_counter()
    try:
        with _holding(folder, distributed.launched_rank() == 0):
            if (
                distributed.several_processes(cfg.trainer)
                and distributed.launched_world_size() == 1
            ):
                objective = _job_as_own_command(cfg, list(hc.overrides.task))
            else:
                objective = _objective(cfg, train(cfg))
    except Interrupted as e:
        _stopped_by = e.signum
        _report_interrupted(e)
        sweeps.record(folder, status="interrupted", signal=e.signum, error=str(e),
                      wall_s=time.perf_counter() - start)  # fmt: skip
        raise
    except Exception as e:
        error = str(e) if isinstance(e, JobFailed) else _report_failure(e)
        sweeps.record(folder, status="failed", error=error[:300],
                      wall_s=time.perf_counter() - start)  # fmt: skip
        raise
    sweeps.record(folder, status="completed", wall_s=time.perf_counter() - start)
    return objective


def _holding(folder: str, lock: bool):
    """The run folder's lock (`runs.hold`) when `lock`, else nothing."""
    from contextlib import nullcontext

    from mnistlab.runs import hold

    return hold(Path(folder)) if lock else nullcontext()


def _continue_if_requeued(cfg: DictConfig) -> None:
    """A job that SLURM requeued (after a preemption or its time limit) continues from its
    checkpoint in its folder, rather than starting over there."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 and str(cfg.resume) == "never":
        log.info(
            "Requeued job (SLURM_RESTART_COUNT=%s): resume=auto", os.environ["SLURM_RESTART_COUNT"]
        )
        with open_dict(cfg):
            cfg.resume = "auto"


def _report_failure(e: Exception) -> str:
    """A job's failure: one line on the console, the traceback in its train.log only."""
    first = (str(e).strip().splitlines() or [""])[0]
    log.error("Job failed: %s: %s", type(e).__name__, first)
    logging.getLogger("mnistlab.traceback").error("Job failed", exc_info=True)
    return f"{type(e).__name__}: {first}"


class JobFailed(Exception):
    """A job run as its own command ended with an error (its message is the job's error line)."""


def _job_as_own_command(cfg: DictConfig, overrides: list[str]) -> float | None:
    """A DDP job of a sweep: Lightning starts a DDP run's other processes by re-running this
    process's command line, which here is the whole sweep. So the job runs as its own command,
    in its folder, and starts its processes as any run does; this process forwards signals to
    it and reads its results.json."""
    import subprocess

    from mnistlab.distributed import JOB_PROCESS_ENV
    from mnistlab.preemption import Interrupted
    from mnistlab.runs import RESULTS, without_resume

    folder = Path(cfg.paths.output_dir)
    overrides = [*without_resume(overrides), f"resume={cfg.resume}"]  # as this job resolved it
    command = [sys.executable, "-m", "mnistlab.train", *overrides,
               f'hydra.run.dir="{folder}"', "hydra.output_subdir=null"]  # fmt: skip
    log.info("DDP job: running it as its own command, which starts its processes")
    # A session of its own, so that a Ctrl-C reaches it once: from here, not also from the tty.
    proc = subprocess.Popen(command, env={**os.environ, JOB_PROCESS_ENV: "1"},
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    forwarded = [signal.SIGINT, signal.SIGTERM]
    forwarded += [signal.SIGUSR1] if "SLURM_JOB_ID" in os.environ else []
    previous = {}
    if threading.current_thread() is threading.main_thread():  # where handlers may be set
        previous = {sig: signal.signal(sig, lambda signum, _: proc.send_signal(signum))
                    for sig in forwarded}  # fmt: skip
    errors = []  # its error lines; the first is the cause (rank 0's: the others lost their peer)
    try:
        for line in proc.stderr:
            sys.stderr.write(line)
            if "][ERROR] - " in line:
                errors.append(line.split("][ERROR] - ", 1)[1].strip())
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 0:
        return _objective(cfg, json.loads((folder / RESULTS).read_text())["metrics"])
    if code > 128 and code - 128 in {int(s) for s in forwarded}:
        last = folder / "checkpoints" / "last.ckpt"
        raise Interrupted(code - 128, str(last) if last.is_file() else None)
    error = errors[0].removeprefix("Job failed: ") if errors else f"exit status {code}"
    raise JobFailed(error)


def _objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The metric sweeps optimize (`optimized_metric`), returned to Hydra's sweeper."""
    name = cfg.get("optimized_metric") or "val/acc_best"
    if name not in metrics:
        raise UserError(f"optimized_metric={name} is not a metric of this run: {sorted(metrics)}")
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


def _report_interrupted(e) -> None:
    where = f"checkpoint {e.checkpoint}" if e.checkpoint else "no checkpoint"
    log.warning(
        "%s: %s%s. Continue with the same command and resume=auto",
        e,
        where,
        ", job requeued" if e.requeued else "",
    )


def main() -> None:
    """`mnistlab-train` and `python -m mnistlab.train`: check the command line, then run it.
    Under DDP, rank 0 settles the command and every other process runs the same one."""
    from mnistlab import distributed

    worker = distributed.worker_argv()
    if worker is not None:  # started by Lightning's DDP for a job of ours: checked already
        sys.argv[1:] = worker
        _run()
        return
    if os.environ.get(distributed.JOB_PROCESS_ENV) == "1":  # a sweep's job: checked by the sweep
        _run()
        return
    try:
        sys.argv[1:] = distributed.agree(sys.argv[1:], _settle)
    except distributed.Outcome as e:  # rank 0 said why
        sys.exit(e.code)
    _run()


def _settle(argv: list[str]) -> list[str]:
    from mnistlab.distributed import launched_world_size

    try:
        return prepare(argv, "train", processes=launched_world_size())
    except (UserError, NothingToDo) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(e, NothingToDo):
            print(e)
            sys.exit(0)
        print(f"mnistlab-train: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""The run: seed, build, fit (or resume), test the best checkpoint, record the results.

`train(cfg)` takes a composed config and is all a run is; call it from Python as the tests do.
The command around it (`mnistlab-train`, `python -m mnistlab.train`, `make train`: the command
line, exits, sweep jobs, SLURM requeue, DDP re-launch) is `mnistlab.lab.launch`.
"""

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mnistlab.lab import UserError, quiet_lightning
from mnistlab.lab.config import build, to_plain
from mnistlab.lab.run_folder import write_results
from mnistlab.lab.schema import validate

log = logging.getLogger("mnistlab.train")  # not "__main__" under `python -m`


def train(cfg: DictConfig, extra_callbacks: list = ()) -> dict[str, float]:
    """Seed, build, fit (or resume), test the best checkpoint; return the final metrics.
    `extra_callbacks`: the command's own, beside the config's (a sweep trial's report)."""
    validate(to_plain(cfg), deep=True)  # every key against the real signatures (the command
    # line did too: this is for train(cfg) from Python). Imported here rather than at the top:
    # `--help`, `--cfg job` and a bad value stay fast.
    import lightning as L

    from mnistlab.lab.checkpoint import AtomicCheckpointIO
    from mnistlab.lab.distributed import launch_read_by_all
    from mnistlab.lab.lean import NoCudaProbe, NoProfiler, skip_empty_hooks
    from mnistlab.lab.preemption import Preemption
    from mnistlab.lab.record import RNGState, RunRecord
    from mnistlab.lab.resume import resume_point

    quiet_lightning()
    if cfg.get("float32_matmul_precision"):  # "high"/"medium": TF32/bf16 matmuls on recent GPUs
        import torch

        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    with Preemption() as preemption:
        L.seed_everything(cfg.seed, workers=True)
        datamodule, model = build(cfg, "data"), build(cfg, "model")
        # The whole resolved config as plain data: enough to rebuild the run, loads with weights_only.
        # Lightning adds it to what the module saved itself (`self.save_hyperparameters()`).
        plain = to_plain(cfg)
        if clash := sorted(set(model.hparams) & set(plain)):
            raise UserError(f"{type(model).__name__}'s own save_hyperparameters() saves {clash},"
                            " which the run's config holds too: rename the argument, or leave it"
                            f" out with save_hyperparameters(ignore={clash})")  # fmt: skip
        model.save_hyperparameters(plain, logger=False)
        ckpt_path, resumed_step = resume_point(cfg, model, datamodule)
        loggers = _loggers(cfg, resumed_step)
        record = RunRecord(cfg.paths.output_dir)
        callbacks = [
            build(cfg, f"callbacks.{k}") for k, c in (cfg.get("callbacks") or {}).items() if c
        ]
        plugins = build(cfg, "trainer.plugins") or []  # a node, or a list of them
        # Always on: the RNG states and the run's record in every checkpoint, atomic verified
        # checkpoint files, and a clean stop on signals. Without them a run cannot be resumed exactly or trusted. And no
        # CUDA query per optimizer step on a CPU (`lean.NoCudaProbe`).
        trainer = build(
            cfg,
            "trainer",
            callbacks=[*callbacks, *extra_callbacks, RNGState(), record, preemption, NoCudaProbe()],
            logger=loggers or False,
            plugins=[*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()],
            **({} if cfg.trainer.get("profiler") else {"profiler": NoProfiler()}),
        )
        skip_empty_hooks(trainer.callbacks)  # Lightning's defaults included
        _explain_batch(cfg, trainer)
        hparams = _hparams(cfg)
        for logger in loggers:
            logger.log_hyperparams(hparams)  # into hparams.yaml now, so a crashed run has them too

        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        launch_read_by_all()  # every process has joined: srun's launch file has done its work
        metrics = {**record.restored,
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
        # A module's own plain-data results (`extra_results()`, e.g. scores per class) beside.
        extra = model.extra_results() if hasattr(model, "extra_results") else {}
        write_results(cfg.paths.output_dir, {**extra, **_results(cfg, trainer, metrics, best)})
        _summarize(metrics, reported, best, cfg.paths.output_dir, _tensorboard_in(trainer))
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


def _hparams(cfg: DictConfig) -> dict:
    """The HParams tab's columns (`dashboard.hparams`), with Hydra's choices and overrides when
    Hydra runs this (`train(cfg)` from Python: `log_hparams` and the experiment, if set)."""
    from hydra.core.hydra_config import HydraConfig

    from mnistlab.lab.dashboard import hparams

    if not HydraConfig.initialized():
        return hparams(cfg)
    hc = HydraConfig.get()
    return hparams(cfg, dict(hc.runtime.choices), list(hc.overrides.task))


def _loggers(cfg: DictConfig, resumed_step: int | None) -> list:
    """The configured loggers; when resuming, TensorBoard hides what the old run logged after
    the checkpoint (its `purge_step`), so the curves continue without a doubled stretch."""
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if not node:
            continue
        extra = {}
        if resumed_step is not None and _is_tensorboard(node._target_):
            extra["purge_step"] = resumed_step
        if _is_tensorboard(node._target_) and not node.get("version") and (label := _job_label()):
            extra["version"] = label  # TensorBoard names the run by its folder: <job>/<label>
        loggers.append(build(cfg, f"logger.{name}", **extra))
    return loggers


def _job_label() -> str:
    """A sweep job's values of the keys its sweep varies (`mnistlab.lab.sweeps.job_label`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    from mnistlab.lab.sweeps import job_label

    hc = HydraConfig.get()
    return job_label(Path(hc.sweep.dir), list(hc.overrides.task))


def _is_tensorboard(target: str) -> bool:
    from hydra.utils import get_class
    from lightning.pytorch.loggers import TensorBoardLogger

    return issubclass(get_class(target), TensorBoardLogger)


def _results(cfg: DictConfig, trainer, metrics: dict[str, float], best: str) -> dict:
    return {
        "metrics": metrics,
        "reported": list(cfg.get("report_metrics") or []),  # what make report shows by default
        # What runs are chosen by (make report orders by it, never by a test metric).
        "optimized": {"metric": cfg.get("optimized_metric"), "mode": cfg.get("mode", "max")},
        "best_checkpoint": best,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "max_epochs": cfg.trainer.get("max_epochs"),
        "max_steps": cfg.trainer.get("max_steps"),
    }


def _log_results(trainer, hparams: dict, metrics: dict[str, float]) -> None:
    """Fill TensorBoard's HParams tab with real results (not Lightning's `hp_metric` placeholder):
    the `report_metrics` the run logged, against its hyperparameters."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, metrics)
        logger.finalize("success")
        _close(logger)


def _close(logger) -> None:
    """End a tracker's run, which Lightning's `finalize` leaves open for W&B and Comet: the
    next job of a sequential sweep would otherwise log into this one's run."""
    from lightning.pytorch.loggers import CometLogger, WandbLogger

    if isinstance(logger, WandbLogger):  # a no-op stand-in off rank 0
        logger.experiment.finish()
    elif isinstance(logger, CometLogger):
        logger.experiment.end()


def _tensorboard_in(trainer) -> bool:
    from lightning.pytorch.loggers import TensorBoardLogger

    return any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)


def _summarize(metrics: dict[str, float], reported: list[str], best: str, output_dir: str,
               tensorboard: bool) -> None:  # fmt: skip
    from mnistlab.lab.stats import number

    shown = "  ".join(f"{k} {number(metrics[k])}" for k in reported if k in metrics)
    log.info("Done: %s", shown)
    log.info("Best checkpoint: %s", best or "(none saved)")
    log.info("Run folder: %s", output_dir)
    if not tensorboard:  # logger=csv, mlflow, ...: no events to show
        return
    # Its parent: TensorBoard's HParams tab has no metric values for a run that is the logdir.
    log.info(
        "TensorBoard: make tensorboard  (or: tensorboard --logdir %s)", Path(output_dir).parent
    )


def main() -> None:
    """`mnistlab-train`, `python -m mnistlab.train`, `make train`: the command around `train`."""
    from mnistlab.lab.launch import main as command

    command(train)


if __name__ == "__main__":
    main()

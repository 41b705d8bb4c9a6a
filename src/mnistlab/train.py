"""Train and test a model: `python -m mnistlab.train [overrides]`, `mnistlab-train` or `make train`."""

import logging
import os
import sys
import warnings

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from mnistlab import UserError
from mnistlab.config import CONF_DIR, to_plain

log = logging.getLogger("mnistlab.train")  # not "__main__" under `python -m`


def train(cfg: DictConfig) -> dict[str, float]:
    """Seed, build, fit, test the best checkpoint; return the final metrics."""
    # Imported here rather than at the top: `--help` and `--cfg job` stay fast, and Lightning,
    # imported after Hydra configured logging, sends its messages to the run's log file too.
    import lightning as L

    logging.getLogger("lightning").handlers.clear()  # its own console handler would print twice
    # Lightning 2.6 on torch >= 2.10 warns about its own pytree code on every run; nothing to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    # The whole resolved config as plain data: enough to rebuild the run, loads with weights_only.
    model.save_hyperparameters(to_plain(cfg), logger=False)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    hparams = to_plain(cfg.log_hparams)
    for logger in loggers:
        logger.log_hyperparams(hparams)  # into hparams.yaml now, so a crashed run has them too

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best:
        log.warning("No checkpoint was saved: testing the weights as they are after training")
    (test_metrics,) = trainer.test(
        model, datamodule=datamodule, ckpt_path=best or None, verbose=False
    )
    metrics.update(test_metrics)

    _log_results(trainer, hparams, metrics)
    _summarize(metrics, best, cfg.paths.output_dir)
    return metrics


def _log_results(trainer, hparams: dict, metrics: dict[str, float]) -> None:
    """Fill TensorBoard's HParams tab with real results (not Lightning's `hp_metric` placeholder)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    results = {
        f"hp/{k.replace('/', '_')}": metrics[k]
        for k in ("test/acc", "val/acc_best")
        if k in metrics
    }
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, results)
        else:
            logger.log_metrics(results, step=trainer.global_step)
        logger.finalize("success")


def _summarize(metrics: dict[str, float], best: str, output_dir: str) -> None:
    shown = "  ".join(
        f"{k} {metrics[k]:.4f}" for k in ("val/acc_best", "test/acc", "test/loss") if k in metrics
    )
    log.info("Done: %s", shown)
    log.info("Best checkpoint: %s", best or "(none saved)")
    log.info("Run folder: %s", output_dir)
    log.info("TensorBoard: make tensorboard  (or: tensorboard --logdir %s)", output_dir)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", e)
        sys.exit(1)
    return metrics.get("val/acc_best")


if __name__ == "__main__":
    main()

"""A sweep's trial reports to its Optuna study every epoch, and stops when the study prunes it.

The Optuna sweeper (`hparams_search=...`, `hydra/sweeper=optuna`) asks the study for trials and
launches one job each, in this process, in worker processes (joblib) or as SLURM jobs. It tells
each job which trial it is, and where the study is stored, in `MNISTLAB_OPTUNA_TRIAL`; the study's
storage is one every job can open at once (a journal file on the file system the jobs share, or
a database). After each validation the job reports `optimized_metric` to its trial and asks the
study's pruner whether to go on. A pruned trial stops after that epoch, its checkpoints kept, its
best checkpoint tested as any run's; its job.json says `pruned_after_epoch` (mnistlab.lab.launch),
and the sweeper tells the study the trial was pruned.
"""

import base64
import json
import logging
import os

from lightning.pytorch.callbacks import Callback

from mnistlab.lab import UserError
from mnistlab.lab.sweeps import TRIAL_ENV, open_storage

log = logging.getLogger(__name__)


def callbacks() -> list[Callback]:
    """[TrialReport] in a job the Optuna sweeper started, else []."""
    spec = os.environ.get(TRIAL_ENV)
    return [TrialReport(**json.loads(base64.urlsafe_b64decode(spec)))] if spec else []


class TrialReport(Callback):
    def __init__(self, storage: str, study: str, trial: int, pruner: dict, metric: str):
        self.storage, self.study_name, self.number = storage, study, trial
        self.pruner, self.metric = pruner, metric
        self.trial = None
        self.pruned_after: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self.trial is not None:
            return
        import optuna
        from hydra.utils import instantiate

        storage = open_storage(self.storage)
        study = optuna.load_study(study_name=self.study_name, storage=storage,
                                  pruner=instantiate(self.pruner))  # fmt: skip
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        self.trial = optuna.trial.Trial(study, trial_id)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.metric)
            if value is None:
                raise UserError(f"optimized_metric={self.metric} is not logged in validation")
            self.trial.report(float(value), step=trainer.current_epoch)
            last = (
                trainer.max_epochs not in (None, -1)
                and trainer.current_epoch + 1 >= trainer.max_epochs
            )
            prune = not last and self.trial.should_prune()  # after the last epoch: completed
        if trainer.world_size > 1:  # every process stops after the same epoch
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune and self.pruned_after is None:
            self.pruned_after = trainer.current_epoch + 1
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info("Trial %d pruned by the study after epoch %d (%s %.4f)", self.number,
                         self.pruned_after, self.metric, float(value))  # fmt: skip


def pruned_after(callbacks: list) -> int | None:
    """The epoch after which the study pruned this run's trial, if it did."""
    return next((c.pruned_after for c in callbacks if isinstance(c, TrialReport)), None)

"""`hydra/sweeper=optuna`: a search with current Optuna (ask and tell), stored in the sweep folder
under a stable study name, so that running the same command again continues the study: its
trials are kept and new ones are added until `n_trials` in all.

The study is a journal file (`optuna.journal`): every job opens it too, from this process, from
joblib's workers or from SLURM jobs on other nodes sharing the file system, to report its
validation metric each epoch; with a `pruner` the study stops the trials that fall behind
(`mnistlab.lab.pruning`). A database URL in `storage` works the same; a study begun in `optuna.db`
(SQLite, before journals) continues there.

Search spaces use Hydra's override syntax, in `hydra.sweeper.params` or on the command line:
`choice(32, 64)` (categorical), `interval(1e-4, 1e-2)` (float, or int when both ends are),
`tag(log, interval(...))` (log scale), `range(16, 129, 16)` (int with a step).
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.mnistlab_sweepers.common import (
    finish,
    holding,
    job_dir,
    launch,
    stopped_by_signal,
)
from mnistlab.lab import sweeps
from mnistlab.lab.files import write_whole
from mnistlab.lab.run_folder import identity

log = logging.getLogger(__name__)
OWNER = "mnistlab_sweep"  # a trial's user attribute: the folder of the sweep that runs it


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.mnistlab_sweepers.optuna_sweeper.OptunaSweeper"
    study_name: str = "search"
    direction: str = "maximize"  # or minimize
    n_trials: int = 20  # in the whole study, over every run of the command
    n_jobs: int = 1  # trials launched together (with hydra/launcher=joblib, in parallel)
    seed: int | None = None  # TPE's seed
    storage: str | None = None  # a journal file or a database URL; default <sweep>/optuna.journal
    # An Optuna pruner, as a node: {_target_: optuna.pruners.MedianPruner, n_warmup_steps: 1}
    pruner: Any = None
    params: dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="mnistlab"
)


class OptunaSweeper(Sweeper):
    def __init__(self, study_name, direction, n_trials, n_jobs, seed, storage, pruner, params):
        # `max`/`min` (conf/train.yaml's `mode`, interpolated) or Optuna's own words
        direction = {"max": "maximize", "min": "minimize"}.get(str(direction), str(direction))
        self.study_name, self.direction = study_name, direction
        self.n_trials, self.n_jobs, self.seed = n_trials, n_jobs, seed
        self.storage, self.params = storage, dict(params or {})
        self.pruner = None  # its config, from setup (Hydra passes the pruner built already)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        pruner = config.hydra.sweeper.get("pruner")
        self.pruner = OmegaConf.to_container(pruner, resolve=True) if pruner else None
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.parser = OverridesParser.create(config_loader=hydra_context.config_loader)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        fixed, space = self._search_space(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        with holding(sweep_dir):
            write_whole(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
            self.storage = self.storage or sweeps.default_storage(sweep_dir)
            study = optuna.create_study(
                study_name=self.study_name,
                storage=sweeps.opened(self.storage),
                direction=self.direction,
                pruner=self._pruner(),
                load_if_exists=True,
            )
            _same_search(study, fixed, space, self.direction, sweep_dir)
            self._search(study, fixed, space)
            _write_best(study, sweep_dir)
            jobs = [(t.number, [*fixed, *_as_overrides(t.params)]) for t in study.trials]
            finish(self.config, jobs, self.config.get("optimized_metric") or "val/acc_best")

    def _search(self, study, fixed: list[str], space: dict) -> None:
        """Ask for trials, `n_jobs` at a time, until the study has `n_trials`."""
        import optuna

        sweep_dir = Path(self.config.hydra.sweep.dir).resolve()
        _fail_stale_trials(study, sweep_dir)
        done = len(study.trials)
        # Seeded from the trials so far: a continued study must not draw its first trials again.
        seed = None if self.seed is None else self.seed + done
        study.sampler = optuna.samplers.TPESampler(seed=seed)
        log.info(
            "Study %s: %d trials so far, %d to go", self.study_name, done, self.n_trials - done
        )
        while len(study.trials) < self.n_trials:
            trials = [
                _asked(study, space, sweep_dir)
                for _ in range(min(self.n_jobs, self.n_trials - len(study.trials)))
            ]
            jobs = [(t.number, [*fixed, *_as_overrides(t.params), self._trial_env(t.number)])
                    for t in trials]  # fmt: skip
            results = launch(self.launcher, jobs)
            for trial in trials:
                _tell(study, trial, results.get(trial.number), job_dir(self.config, trial.number))
            if any(stopped_by_signal(r) for r in results.values()):
                break  # stopped by a signal: so is the search

    def _pruner(self):
        """The configured pruner; without one, no trial is ever pruned (Optuna's default prunes)."""
        import optuna
        from hydra.utils import instantiate

        return instantiate(self.pruner) if self.pruner else optuna.pruners.NopPruner()

    def _trial_env(self, number: int) -> str:
        """The override that tells a job its trial (`mnistlab.lab.pruning`), in its environment only:
        not part of the job's config, its overrides or its summary row."""
        report = {"storage": str(self.storage), "study": self.study_name, "trial": number,
                  "pruner": self.pruner or {"_target_": "optuna.pruners.NopPruner"},
                  "metric": self.config.get("optimized_metric") or "val/acc_best"}  # fmt: skip
        return f"+hydra.job.env_set.{sweeps.TRIAL_ENV}='{sweeps.encode_trial(report)}'"

    def _search_space(self, arguments: list[str]) -> tuple[list[str], dict]:
        """The fixed overrides, and a distribution for every searched key."""
        given = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        fixed, space = [], {}
        for override in self.parser.parse_overrides(given):
            if override.is_sweep_override():
                space[override.get_key_element()] = _distribution(override)
            else:
                fixed.append(override.input_line)
        if not space:
            raise ValueError("nothing to search: set hydra.sweeper.params (see hparams_search/)")
        return fixed, space


def _same_search(study, fixed: list[str], space: dict, direction: str, sweep_dir: Path) -> None:
    """A study continues only under the command that started it: other fixed overrides or
    another search space would mix trials of two experiments in one ranking. Refused in one
    line (exit 2); a new study name starts a new search."""
    import optuna.distributions as d

    # The direction asked for now: Optuna loads a stored study with its own, silently.
    search = {"fixed": identity(fixed), "direction": str(direction).lower(),
              "space": {k: d.distribution_to_json(v) for k, v in sorted(space.items())}}  # fmt: skip
    recorded = study.user_attrs.get("search")
    if recorded is None:
        study.set_user_attr("search", search)
        return
    if recorded == search:
        return
    names = {"fixed": "fixed overrides", "space": "search space", "direction": "direction"}
    what = [k for k in names if recorded.get(k) != search[k]]
    old, new = recorded.get(what[0]), search[what[0]]
    if what[0] == "fixed":
        old, new = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    elif what[0] == "space":  # the keys whose distribution differs
        keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        old, new = ({k: json.loads(d[k])["attributes"] if k in d else None for k in keys}
                    for d in (old, new))  # fmt: skip
    print(f"mnistlab-train: error: study {study.study_name} in {sweep_dir} was started with"
          f" another {' and '.join(names[k] for k in what)} ({old} there, {new} now): run the"
          " same command to continue it, or start another study with"
          " hydra.sweeper.study_name=<new name>", file=sys.stderr)  # fmt: skip
    sys.exit(2)


def _distribution(override: Override):
    import optuna.distributions as d

    sweep = override.value()
    log_scale = "log" in sweep.tags
    if isinstance(sweep, ChoiceSweep):
        return d.CategoricalDistribution(sweep.list)
    if isinstance(sweep, RangeSweep):  # Hydra's range excludes its end
        return d.IntDistribution(
            int(sweep.start), int(sweep.stop) - int(sweep.step), step=int(sweep.step)
        )
    if isinstance(sweep, IntervalSweep):
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return d.IntDistribution(sweep.start, sweep.end, log=log_scale)
        return d.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise ValueError(f"{override.input_line}: not a search space Optuna can sample")


def _as_overrides(params: dict) -> list[str]:
    return [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]


def _asked(study, space: dict, sweep_dir: Path | None = None):
    """The next trial, marked as `sweep_dir`'s (`OWNER`). The study's storage is read back from
    disk: a trial someone queued there (`enqueue_trial`) comes back with its values as they are,
    even outside the search space, and each becomes a job's override. One outside the space is
    failed and refused in one line."""
    import optuna

    from mnistlab.lab import UserError, refuse

    try:
        trial = study.ask(space)
    except (ValueError, TypeError) as e:  # Optuna's own refusal of a queued value
        why = f"a queued trial ({str(e).strip().splitlines()[0][:200].rstrip('.')})"
    else:
        outside = {k: v for k, v in trial.params.items() if not _within(space[k], v)}
        if not outside:
            if sweep_dir is not None:
                trial.set_user_attr(OWNER, str(sweep_dir))
            return trial
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        why = f"trial {trial.number}, queued with {' '.join(_as_overrides(outside))},"
    sys.exit(refuse("mnistlab-train", UserError(
        f"study {study.study_name}: {why} is outside the search space: refused; start another"
        " study with hydra.sweeper.study_name=<new name>")))  # fmt: skip


def _within(distribution, value) -> bool:
    import optuna.distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in distribution.choices)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and distribution.low <= value <= distribution.high


def _tell(study, trial, result, folder: Path) -> None:
    import optuna

    try:
        for key, value in sweeps.run_attributes(folder).items():  # optuna-dashboard shows them
            trial.set_user_attr(key, value)
        if result is None or result.status != JobStatus.COMPLETED or result.return_value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif sweeps.read_job(folder).get("status") == "pruned":  # its last report is its value
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(result.return_value))
    except optuna.exceptions.UpdateFinishedTrialError:  # ended by another process of the study
        log.warning("Trial %d was ended by another process sharing the study: its result is"
                    " in %s", trial.number, folder)  # fmt: skip


def _fail_stale_trials(study, sweep_dir: Path) -> None:
    """Trials left running by a sweep that died are marked failed, so that they count as done.
    Two sweeps may share a study (one storage): a trial whose sweep still runs (its folder's lock
    is held: `run_folder.held`) is that sweep's, left running, and counts towards `n_trials`."""
    import optuna

    from mnistlab.lab.run_folder import held

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER)
        if isinstance(owner, str) and owner != str(sweep_dir) and held(Path(owner)):
            log.info("Trial %d runs in another sweep of this study, %s: left to it", trial.number,
                     owner)  # fmt: skip
            continue
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        log.warning("Trial %d was left running by an earlier sweep: marked failed", trial.number)


def _write_best(study, sweep_dir: Path) -> None:
    import optuna

    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        log.error("No trial of study %s completed", study.study_name)
        return
    best = study.best_trial
    folder = best.user_attrs.get("run_folder")
    record = {"study": study.study_name, "trial": best.number, "value": best.value,
              "params": best.params, "run_folder": folder, "trials": len(study.trials),
              "completed": len(complete)}  # fmt: skip
    write_whole(sweep_dir / "best.json", json.dumps(record, indent=2) + "\n")
    log.info("Best trial %d: %s = %.4f with %s (run: %s)", best.number,
             study.direction.name.lower(), best.value, " ".join(_as_overrides(best.params)),
             folder or "not recorded")  # fmt: skip

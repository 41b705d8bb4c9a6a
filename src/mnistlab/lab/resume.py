"""Continuing a run: which folder (before Hydra creates one) and which checkpoint (in the run).

`resume=` names how: `never` (a new folder), `auto` / `must` (the newest run of the same command,
its overrides in any order), or a run folder (its own overrides reused, those given now on top).
The command line picks the folder here before Hydra runs (`mnistlab.lab.cli`), and says when that
run has finished already; in the run, `resume_point` finds its newest intact checkpoint (damaged
ones are skipped and named), lists changed settings, and refuses a model that no longer fits.
Light to import: torch and Lightning only once a run asks for its checkpoint.
"""

import logging
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnistlab.lab import UserError
from mnistlab.lab.config import project_path, to_plain
from mnistlab.lab.run_folder import (
    POLICIES,
    find_run,
    finished,
    identity,
    not_a_run,
    without_resume,
)
from mnistlab.lab.signing import config_folders, made_here
from mnistlab.lab.trust import recorded_command

log = logging.getLogger(__name__)

# Settings that may differ between the first start and a resume without being a change of the run.
VOLATILE = ("resume", "ckpt_path", "paths.")


def resume_point(cfg: DictConfig, model, datamodule) -> tuple[str | None, int | None]:
    """The checkpoint to start from and its global step; the step is None for a fresh folder."""
    from mnistlab.lab.checkpoint import check_fits, latest_intact, load

    policy = str(cfg.resume)
    if policy == "never":
        return cfg.get("ckpt_path"), None
    if cfg.get("ckpt_path"):
        raise UserError("set ckpt_path (start a new run from a checkpoint) or resume, not both")
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    path, rejected = latest_intact(folder)
    for reason in rejected:
        log.warning("Not resuming from %s", reason)
    if path is None:
        if policy != "auto":
            tried = f" (refused: {', '.join(rejected)})" if rejected else ""
            raise UserError(f"resume={policy}: no intact checkpoint in {folder}{tried}")
        if rejected or folder.is_dir():
            log.info("resume=auto: no checkpoint in %s yet; training from the start there", folder)
        else:
            log.info("resume=auto: no earlier run of this command; starting one")
        return None, 0
    checkpoint = load(path)
    _quiet_lightning_about_resuming(datamodule)
    now = to_plain(cfg)
    own = set(model.hparams) - set(now)  # what the module saved itself (save_hyperparameters())
    stored = checkpoint.get("hyper_parameters") or {}
    warn_changes({k: v for k, v in stored.items() if k not in own}, now)
    check_fits(checkpoint["state_dict"], model, path)
    log.info(
        "Resuming from %s (epoch %d, step %d)%s",
        path,
        checkpoint["epoch"] + 1,
        checkpoint["global_step"],
        ", the newest intact checkpoint" if rejected else "",
    )
    return str(path), checkpoint["global_step"]


def _quiet_lightning_about_resuming(datamodule) -> None:
    """Lightning warns that the checkpoint folder is not empty (it is the run's own) and, after a
    mid-epoch stop, that the data loader cannot resume; a data module that saves its position in
    `state_dict` (MNISTDataModule does) can."""
    from lightning.pytorch import LightningDataModule

    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
    if type(datamodule).state_dict is not LightningDataModule.state_dict:
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint")


def warn_changes(before: dict, now: dict) -> list[str]:
    """Log the settings that differ from those the run started with; return their keys."""
    old, new = _flatten(before), _flatten(now)
    changed = [k for k in sorted(old.keys() | new.keys())
               if old.get(k, "<absent>") != new.get(k, "<absent>") and not k.startswith(VOLATILE)]  # fmt: skip
    if changed:
        shown = ", ".join(
            f"{k} {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}" for k in changed
        )
        log.warning("Resuming with a changed config: %s", shown)
    return changed


class NothingToDo(Exception):
    """The command names a run that has already finished."""


def named_run(overrides: list[str]) -> Path | None:
    """The run folder named by `resume=<folder>`, if any (not auto, must or never)."""
    values = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").startswith("resume=")]
    if not values or values[-1] in POLICIES:
        return None
    policy = values[-1]
    run = Path(policy).resolve() if Path(policy).exists() else project_path(policy)
    if not (run / ".hydra" / "overrides.yaml").is_file():
        if not run.exists():
            raise UserError(f"resume={policy}: not {', '.join(POLICIES)} or a run folder")
        raise UserError(not_a_run(run, "resume", "ckpt_path=<file> starts a new run from it"))
    return run


def recorded_overrides(run: Path) -> tuple[list[str], bool]:
    """The overrides a run was started with (its data, network, ...), `resume=` aside, and
    whether this checkout made the run. One from elsewhere is data: its overrides are checked
    as such (`mnistlab.lab.trust.recorded_command`), and what they build once composed too."""
    import yaml

    path = run / ".hydra" / "overrides.yaml"
    if made_here(run):  # and its config folders of one's own, signed too
        folders = config_folders(run / ".hydra")
        return without_resume(yaml.safe_load(path.read_text()) or []) + folders, True
    try:
        recorded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot be read ({str(e).splitlines()[0]})") from None
    return without_resume(recorded_command(recorded, str(path))), False


def merged(recorded: list[str], given: list[str]) -> list[str]:
    """The run's own overrides, then this command's: a key given now replaces the recorded one."""
    keys = {o.lstrip("+~").split("=", 1)[0] for o in given}
    return [o for o in recorded if o.lstrip("+~").split("=", 1)[0] not in keys] + given


def sweep_to_continue(cfg: DictConfig, overrides: list[str]) -> Path | None:
    """The newest grid sweep of the same command that did not complete, to continue in place
    (its completed jobs are skipped); None to start a new sweep."""
    if not str(cfg.hydra.sweeper.get("_target_", "")).endswith("GridSweeper"):
        return None
    wanted = identity(overrides)
    for sweep in sorted(Path(cfg.hydra.sweep.dir).parent.glob("*/multirun.yaml"), reverse=True):
        try:
            recorded = OmegaConf.load(sweep).hydra.overrides.task
        except (OSError, OmegaConfBaseException):
            continue
        if identity(list(recorded)) == wanted:
            return None if _all_completed(sweep.parent / "summary.csv") else sweep.parent
    return None


def _all_completed(summary: Path) -> bool:
    """Whether a sweep's summary.csv (written whole) says every job completed; one that cannot
    be read says nothing of the kind, so the sweep is continued (its completed jobs skipped)."""
    import csv

    try:
        with open(summary, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return False
    return bool(rows) and all(row.get("status") == "completed" for row in rows)


def run_to_resume(cfg: DictConfig, overrides: list[str]) -> Path | None:
    """The run folder `resume=` continues, or None for a new one; NothingToDo if it has finished."""
    policy = str(cfg.resume)
    if policy == "never":
        return None
    if policy in POLICIES:
        runs_dir = Path(cfg.hydra.run.dir).parent
        run = find_run(runs_dir, overrides)
        if run is None and policy == "must":
            raise UserError(
                f"resume=must: no earlier run of this command in {runs_dir}; "
                "use resume=auto to start one when there is none"
            )
    else:  # a run folder, given on the command line or in a config file
        run = named_run([f"resume={policy}"])
    if run is not None and (results := finished(run, *_limits(cfg))):
        shown = ", ".join(f"{k} {v:.4f}" for k, v in results.get("metrics", {}).items()
                          if k in (cfg.get("report_metrics") or []))  # fmt: skip
        raise NothingToDo(
            f"{run} has already finished ({shown}); nothing to do. "
            f"resume=never starts a new run; resume={run} trainer.max_epochs=<more>"
            " continues this one."
        )
    return run


def _limits(cfg: DictConfig) -> tuple:
    return cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps")


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}

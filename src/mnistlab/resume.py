"""Where a run continues from: the checkpoint `resume=` picks, checked against today's config.

The command line has already put the run in its old folder (mnistlab.cli); here its newest intact
checkpoint is found (damaged ones are skipped and named), changed settings are listed, and a model
that no longer fits the checkpoint is refused before anything trains.
"""

import logging
import warnings
from pathlib import Path

from lightning.pytorch import LightningDataModule
from omegaconf import DictConfig
from torch import nn

from mnistlab import UserError
from mnistlab.checkpoint import latest_intact, load
from mnistlab.config import to_plain

log = logging.getLogger(__name__)

# Settings that may differ between the first start and a resume without being a change of the run.
VOLATILE = ("resume", "ckpt_path", "paths.")


def resume_point(cfg: DictConfig, model: nn.Module, datamodule) -> tuple[str | None, int | None]:
    """The checkpoint to start from and its global step; the step is None for a fresh folder."""
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
        log.info("resume=auto: no checkpoint in %s yet; training from the start there",
                 cfg.paths.output_dir)  # fmt: skip
        return None, 0
    checkpoint = load(path)
    _quiet_lightning_about_resuming(datamodule)
    warn_changes(checkpoint.get("hyper_parameters", {}), to_plain(cfg))
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


def check_fits(state_dict: dict, model: nn.Module, path: Path) -> None:
    """UserError in one line when the checkpoint's weights do not fit the configured model."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
                if k in state_dict and state_dict[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or reshaped:
        parts = [f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("other shape", reshaped)) if keys]  # fmt: skip
        raise UserError(
            f"checkpoint {path} does not fit the configured model ({'; '.join(parts)}); "
            "resume with the model settings the run started with, or use resume=never"
        )


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}

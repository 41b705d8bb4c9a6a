"""The machinery: run folders, the command line, resume, checkpoints, DDP, sweeps, reports,
eval and export, for any LightningModule and LightningDataModule named in the config.

It never imports the worked example around it; it reaches it only through the config's
`_target_`s. Its API is what the README's "Machinery" section lists.
"""

import logging
import os
import sys
import warnings


class UserError(Exception):
    """A failure the user can fix (missing data, bad setting): reported in one line, no traceback."""


def refuse(command: str, error: UserError, code: int = 2) -> int:
    """How every entry point ends on a UserError: one line on stderr naming the command, and its
    exit status (`code`). HYDRA_FULL_ERROR=1 shows the traceback instead."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"{command}: error: {error}", file=sys.stderr)
    return code


def failure(e: Exception) -> str:
    """An unexpected exception in one line: its type, its first line, and where it was raised (the
    innermost frame outside the installed libraries: a line of your module, say)."""
    import traceback

    first = (str(e).strip().splitlines() or [""])[0]
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "site-packages" not in f.filename and "/lib/python" not in f.filename]  # fmt: skip
    if not frames:  # raised and caught within the libraries alone
        return f"{type(e).__name__}: {first}"
    return (f"{type(e).__name__}: {first} ({os.path.basename(frames[-1].filename)}:"
            f"{frames[-1].lineno}, in {frames[-1].name})")  # fmt: skip


def _no_tips(record: logging.LogRecord) -> bool:
    """Lightning 2.6's advertisements for its cloud services (litlogger, litmodels), every run."""
    return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    """What every command that runs a Trainer silences: Lightning's own console handlers (its
    messages reach the run's log through the root logger, and would print twice), its tips, and
    a warning Lightning 2.6 on torch >= 2.10 gives about its own pytree code on every run.
    Imported before Hydra set up logging (the command line's check imports it), lightning.pytorch
    and lightning.fabric keep their messages to themselves: they go to the root logger again."""
    logging.getLogger("lightning").handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tips)  # once
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

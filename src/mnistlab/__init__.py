"""mnistlab: a PyTorch Lightning + Hydra research template, with MNIST as its worked example.

The experiment: `mnist.py` / `image_folder.py` (data), `nets.py` (networks), `system.py` (loss,
metrics, optimizer), `train.py` (the run). The rest is machinery: see the README's layout.
"""

import logging
import os
import sys
import warnings

__version__ = "0.1.0"


class UserError(Exception):
    """A failure the user can fix (missing data, bad setting): reported in one line, no traceback."""


def refuse(command: str, error: UserError, code: int = 2) -> int:
    """How every entry point ends on a UserError: one line on stderr naming the command, and its
    exit status (`code`). HYDRA_FULL_ERROR=1 shows the traceback instead."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"{command}: error: {error}", file=sys.stderr)
    return code


def quiet_lightning() -> None:
    """What every command that runs a Trainer silences: Lightning's own console handler (its
    messages reach the run's log through the root logger, and would print twice) and a warning
    Lightning 2.6 on torch >= 2.10 gives about its own pytree code on every run."""
    logging.getLogger("lightning").handlers.clear()
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

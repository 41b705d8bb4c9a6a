"""Hydra's, OmegaConf's and YAML's refusals of a command line or a config file, in one line
that names the key or file and what to do (mnistlab.lab.cli raises them as UserError)."""

import difflib
import re
from pathlib import Path

import yaml
from hydra.errors import MissingConfigException


def absent_config_folders(overrides: list[str]) -> list[str]:
    """The config folders of one's own (`hydra.searchpath=[file://...]`) that are not there,
    which Hydra only warns of: it then looks for their options elsewhere."""
    given = " ".join(o.split("=", 1)[1] for o in overrides if "hydra.searchpath=" in o[:19])
    return [f for f in re.findall(r"file://([^,\]'\"]+)", given) if not Path(f).is_dir()]


def missing_option(e: MissingConfigException, overrides: list[str]) -> str:
    """A group option that is not there: the option meant, or where one's own would be."""
    missing = (e.missing_cfg_file or "").strip("/")
    group, _, option = missing.rpartition("/")
    if not group or e.options is None:
        return first_line(e)
    close = difflib.get_close_matches(option, e.options, n=1, cutoff=0.5)
    hint = f"; did you mean {group}={close[0]}?" if close else ""
    if group.startswith("hydra/launcher"):
        hint += " (joblib, submitit_local and slurm come with `make install-sweep`)"
    elif not close and not any("hydra.searchpath=" in o[:19] for o in overrides):
        hint += "; one of your own: its config folder with hydra.searchpath=[file://<folder>]"
    options = ", ".join(sorted(e.options))
    return f"{group}={option}: no such option{hint} (options: {options})"


def not_yaml(e: yaml.MarkedYAMLError) -> str:
    mark = e.problem_mark or e.context_mark
    where = f"{mark.name}, line {mark.line + 1}" if mark else "a config file"
    return f"{where}: not valid YAML ({e.problem or e.context}); fix it"


def first_line(e: Exception) -> str:
    text = re.sub(r"^\w+ (raised )?while resolving interpolation: ", "", str(e))
    if missing := re.match(r"Missing mandatory value: ([\w.]+)", text):
        return f"{missing[1]} is not set: give it on the command line, {missing[1]}=..."
    if absent := re.match(r"Interpolation key '([\w.]+)' not found", text):  # a file of one's own
        return f"{absent[1]} is not set, and the config refers to it: set it, {absent[1]}=..."
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith(("full_key:", "object_type="))]  # fmt: skip
    cause = e.__cause__
    if cause is not None and str(cause).strip() and len(lines) < 2:
        lines.append(str(cause).strip().splitlines()[0])
    return " ".join(lines[:2]) or type(e).__name__

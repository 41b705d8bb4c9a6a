"""Where the project lives, and the small helpers that turn Hydra configs into plain data."""

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# The configs travel with the package (src/mnistlab/conf links to the checkout's conf/). The
# project root, where `data/` and `logs/` go by default: the checkout this package runs from
# (an editable install, `make`), else the folder the command runs in (`pip install .`).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # of the package that holds lab/
_CHECKOUT = Path(__file__).resolve().parents[3]
ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else Path.cwd()


def project_path(path: str | Path) -> Path:
    """Resolve a relative path against the project root (never against Hydra's run folder)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def register_resolvers() -> None:
    """`${project_root:}`, `${slurm_gpus:accelerator,devices}`, `${len:list}` and
    `${label:name}`, `${label_of:metric}` in configs; idempotent, so tests and entry points may call it freely. (The
    example's own, `${class_folders:root}`, is registered by `mnistlab/__init__.py`.)"""
    resolvers = {"project_root": lambda: str(ROOT), "slurm_gpus": slurm_gpus, "len": len,
                 "label": folder_label, "label_of": metric_label}  # fmt: skip
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def metric_label(metric: str) -> str:
    """A metric's name as a checkpoint file name's part: `val/acc` -> `val_acc`."""
    return re.sub(r"[^\w.-]", "_", str(metric))


def folder_label(name) -> str:
    """`name=` as a run folder's suffix: "" when unset, else "_<name>" with anything but letters,
    digits and `.-+=,` made a `-` (no slash can make a folder elsewhere)."""
    if name is None or str(name) == "":
        return ""
    return "_" + re.sub(r"[^\w.+=,-]", "-", str(name))


def slurm_gpus(accelerator, devices) -> int | None:
    """GPUs per node (= tasks per node) to ask SLURM for: none for a CPU trainer; one per device
    for a GPU one; for `auto`, one per device only when the cluster has GPUs (`sinfo`'s generic
    resources), so that the default trainer is not refused by a cluster without any."""
    if str(accelerator) == "cpu" or (str(accelerator) == "auto" and not _cluster_has_gpus()):
        return None
    return devices if isinstance(devices, int) and devices > 0 else 1


def _cluster_has_gpus() -> bool:
    """Whether SLURM's nodes offer GPUs; True when `sinfo` cannot say (ask, as for a GPU trainer)."""
    import subprocess

    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True,
                              timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return True
    return proc.returncode != 0 or "gpu" in proc.stdout


def build(cfg: DictConfig, key: str, **kwargs):
    """The object that `cfg.<key>` (a dotted key) describes, made with Hydra's `instantiate`;
    a constructor that refuses its arguments (Lightning's `accelerator=tpu2`, `trainer=gpu` with
    no GPU) is one line naming the key, not Hydra's report."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from mnistlab.lab import UserError

    try:
        return instantiate(OmegaConf.select(cfg, key), **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:  # one of ours, deeper down: it names the key already
            raise UserError(str(cause)) from None
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = " ".join(ln for ln in lines if not ln.startswith("full_key:"))
        raise UserError(f"{key}: cannot be built: {why}") from None


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain dicts and lists: safe for checkpoints and `weights_only`."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


register_resolvers()

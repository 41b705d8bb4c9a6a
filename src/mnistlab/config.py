"""Where the project lives, and the small helpers that turn Hydra configs into plain data."""

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# The package is installed in editable mode from <root>/src/mnistlab, next to <root>/conf.
ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"


def project_path(path: str | Path) -> Path:
    """Resolve a relative path against the project root (never against Hydra's run folder)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def register_resolvers() -> None:
    """`${project_root:}` and `${slurm_gpus:accelerator,devices}` in configs; idempotent, so
    tests and entry points may call it freely."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(ROOT))
    if not OmegaConf.has_resolver("slurm_gpus"):
        OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus)


def slurm_gpus(accelerator, devices) -> int:
    """GPUs per node (= tasks per node) to ask SLURM for: none for a CPU trainer; one per
    device for a GPU one (`auto`: one)."""
    if str(accelerator) == "cpu":
        return 0
    return devices if isinstance(devices, int) and devices > 0 else 1


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain dicts and lists: safe for checkpoints and `weights_only`."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


register_resolvers()

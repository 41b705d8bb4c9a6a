"""Where the project lives, and the small helpers that turn Hydra configs into plain data."""

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# The configs travel with the package (src/mnistlab/conf links to the checkout's conf/). The
# project root, where `data/` and `logs/` go by default: the checkout this package runs from
# (an editable install, `make`), else the folder the command runs in (`pip install .`).
CONF_DIR = Path(__file__).resolve().parent / "conf"
_CHECKOUT = Path(__file__).resolve().parents[2]
ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else Path.cwd()


def project_path(path: str | Path) -> Path:
    """Resolve a relative path against the project root (never against Hydra's run folder)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def register_resolvers() -> None:
    """`${project_root:}`, `${slurm_gpus:accelerator,devices}`, `${class_folders:root}`,
    `${len:list}` and `${label:name}` in configs; idempotent, so tests and entry points may call
    it freely."""
    resolvers = {"project_root": lambda: str(ROOT), "slurm_gpus": slurm_gpus,
                 "class_folders": lambda root: dataset_classes(project_path(root)), "len": len,
                 "label": folder_label}  # fmt: skip
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def folder_label(name) -> str:
    """`name=` as a run folder's suffix: "" when unset, else "_<name>" with anything but letters,
    digits and `.-+=,` made a `-` (no slash can make a folder elsewhere)."""
    if name is None or str(name) == "":
        return ""
    return "_" + re.sub(r"[^\w.+=,-]", "-", str(name))


_checked_folders: dict[tuple, list[str]] = {}


def dataset_classes(root: Path) -> list[str]:
    """The classes of an image folder, checked to be the same in train/, test/ and val/, and
    none empty. Remembered while no split or class folder changes (a config resolves this
    many times, and a folder of 60k images takes 0.1 s to check)."""
    stamp = (str(root), *_folder_times(root))
    if stamp not in _checked_folders:
        _checked_folders[stamp] = _check_folders(root)
    return list(_checked_folders[stamp])


def _folder_times(root: Path) -> list[int]:
    """Modification times of the split folders and their class folders: a file added to or
    removed from a class folder changes its time."""
    times = []
    for split in ("train", "test", "val"):
        folder = root / split
        if folder.is_dir():
            times += [folder.stat().st_mtime_ns]
            times += sorted(e.stat().st_mtime_ns for e in os.scandir(folder) if e.is_dir())
    return times


def _check_folders(root: Path) -> list[str]:
    from mnistlab import UserError
    from mnistlab.decode import is_image

    classes = class_folders(root, "train")
    for split in ("train", "test", "val"):
        if split == "val" and not (root / split).is_dir():
            continue
        found = class_folders(root, split)
        if found != classes:
            raise UserError(
                f"{root / split} has classes {found[:8]}, {root / 'train'} has {classes[:8]}:"
                " every split needs the same class folders"
            )
        for name in classes:  # stops at each folder's first image
            if not any(is_image(p) for p in (root / split / name).iterdir()):
                raise UserError(
                    f"{root / split / name}: no images (PNG, JPEG, BMP, WebP); add some or"
                    " remove the class folder from every split"
                )
    return classes


def class_folders(root: Path, split: str = "train") -> list[str]:
    """The class names of an image folder: the sub-folders of `root/split`, sorted."""
    from mnistlab import UserError

    if not root.is_dir():
        raise UserError(
            f"data.root={root}: no such folder; point it at a folder holding train/<class>/"
            " and test/<class>/"
        )
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; {root} needs train/<class>/ and test/<class>/")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(
            f"{folder}: no class folders in it; put each class's images in {split}/<class>/"
        )
    return classes


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

    from mnistlab import UserError

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

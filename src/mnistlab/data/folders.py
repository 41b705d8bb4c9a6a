"""The rules of an image folder, in one place: `root/train/<class>/`, `root/test/<class>/` and
optionally `root/val/<class>/`, the same classes in each, none empty. Checked once per change
of the folders (`dataset_classes`), by the config resolver `${class_folders:root}` and the data
module alike."""

import os
from pathlib import Path

from mnistlab.data.decode import is_image
from mnistlab.lab import UserError

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
    """The class names of an image folder: the sub-folders of `root/split`, sorted; names
    with control characters refused."""
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
    # A class name is shown in tables, CSV rows, the dashboard and exported models' files.
    if odd := [name for name in classes if not name.isprintable()]:
        raise UserError(
            f"{folder}: the class folder {odd[0]!a} has a control character (a newline, a"
            " tab...) in its name; rename it"
        )
    return classes

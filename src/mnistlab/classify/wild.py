"""Digits in the wild: a labelled set of digit pictures that were never part of MNIST, made here
(never downloaded), and a run's accuracy on it per condition.

    python -m mnistlab.classify.wild [run=<run folder> | ckpt=<file>] [data=data/wild_digits]
                                     [output=<folder>]   (make eval-wild)

The set (`generate`, seeded, written on first use to `data/wild_digits/`: PNGs and labels.csv):
- `font`: each digit typed in every TrueType font on the machine and in Pillow's own font;
- `pen`: each digit drawn as a pen path through a hand-made skeleton of it, every control point
  jittered, slanted, at a random stroke width, as handwriting is;
- `heavy`: bold type, and type thickened until its holes nearly close (its apertures kept open),
  some of it tiny, in every font (OpenType too); reported apart, per weight, face and size, on
  held-out fonts alone;
then photographed badly: a canvas of 120-480 px with margins, dark on light, light on dark or
colour on colour, the digit at 15-70% of the canvas, rotated up to 15 degrees, blurred, with
noise, JPEG-compressed at quality 25-90. Each picture's conditions are columns of labels.csv.

The evaluation prepares every picture as predict does (MNIST's own construction, `prepare=mnist`,
and the old whole-canvas fit, `prepare=fit`, beside it), and writes into the run folder (or
`output=`) `wild/accuracy.md` (per condition, both preparations) and `wild/errors.png` (the
wrong ones).
"""

import csv
import logging
import sys
from pathlib import Path

import numpy as np

from mnistlab.classify import probabilities
from mnistlab.classify.wild_set import SEED, generate
from mnistlab.lab import UserError
from mnistlab.lab.command import RUN, command
from mnistlab.lab.files import atomic_write, write_whole

log = logging.getLogger("mnistlab.classify.wild")

USAGE = """usage: python -m mnistlab.classify.wild [run=FOLDER | ckpt=FILE] [which=best|last]
                               [data=data/wild_digits] [seed=0] [output=FOLDER] [trust=...]

A run's accuracy on digits in the wild (typed in the machine's fonts, drawn by a pen), per
condition, with MNIST's preparation and the whole-canvas fit beside it; the set is made on first
use. Writes accuracy.md and errors.png into the run folder's wild/, or into output= (made if
need be: one folder per set scored)."""

ERRORS_SHOWN = 48


@command("mnistlab-wild", USAGE, **RUN, data="data/wild_digits", seed=SEED, output="")
def main(args: dict, overrides: list[str]) -> int:
    from mnistlab.classify.predict import images, load, predict, preparer
    from mnistlab.lab.config import project_path

    if undotted := [o for o in overrides if "." not in o.partition("=")[0]]:
        raise UserError(f"{undotted[0]}: not an option of eval-wild (see --help)")
    model, datamodule, path = load(args, overrides, "eval-wild")  # checked before the set is made
    _check_digit_model(datamodule)
    out, checkpoint = _out_folder(args)
    folder, seed = project_path(args["data"]), args["seed"]
    if not (folder / "labels.csv").is_file():
        if folder.is_dir() and any(folder.iterdir()):  # someone's own files: never mixed in
            raise UserError(f"data={folder}: files but no labels.csv, so not a wild set (or one"
                            " whose making was stopped: delete it); point data= at a new or empty"
                            " folder to make the set there")  # fmt: skip
        log.info("Making the wild digit set in %s (seed %s): once", folder, seed)
        log.info("%d pictures", generate(folder, seed))
    labels = _labels(folder, seed)
    log.info("Model: %s", path)
    paths = [folder / row["file"] for row in labels]
    results = {}
    for how in ("mnist", "fit"):
        items = list(images(paths, preparer(datamodule, prepare=how)))
        rows = list(predict(model, datamodule, items, datamodule.classes))
        if unread := [(row["file"], r["error"]) for r, row in zip(rows, labels, strict=True)
                      if r.get("error") and "blank picture" not in r["error"]]:  # fmt: skip
            raise BrokenSet(f"{folder / unread[0][0]}: {unread[0][1]} ({len(unread)} picture(s)"
                            f" of the set cannot be read){_REMAKE}")  # fmt: skip
        results[how] = [r["class"] == row["label"] for r, row in zip(rows, labels, strict=True)]
        if how == "mnist":
            kept, calibration = rows, _calibration(model, datamodule, items, labels)
    out.mkdir(parents=True, exist_ok=True)
    shown = _error_grid(labels, kept, paths, results["mnist"], out / "errors.png")
    text = (table(labels, results) + calibration
            + f"\nSet: {folder} (seed {seed}); checkpoint: {checkpoint}; errors.png shows"
            f" {shown} of the {results['mnist'].count(False)} errors with prepare=mnist, a share"
            " of each part's.\n")  # fmt: skip
    write_whole(out / "accuracy.md", text)
    print(text, end="")
    log.info("Written: %s, %s", out / "accuracy.md", out / "errors.png")
    return 0


_REMAKE = (
    "; delete the folder to remake it (a set made on another machine's fonts differs: copy"
    " it again from there)"
)


class BrokenSet(UserError):
    """The wild set's folder is damaged: remake it (a fault of the data: exit 1)."""

    code = 1


def _check_digit_model(datamodule) -> None:
    import inspect

    what = (f"{type(datamodule).__name__}, {datamodule.channels}x{datamodule.height}x"
            f"{datamodule.width}, {len(datamodule.classes)} classes")  # fmt: skip
    shape = (datamodule.channels, datamodule.height, datamodule.width)
    if shape != (1, 28, 28) or len(datamodule.classes) != 10:
        raise UserError(f"eval-wild scores digit models (1x28x28, 10 classes); this run: {what}")
    if "prepare" not in inspect.signature(datamodule.prepare_image).parameters:
        raise UserError(f"eval-wild compares MNIST's preparation of a picture with a plain fit,"
                        f" which this run's data module does not offer ({what}); train on"
                        " data=mnist to score digits here")  # fmt: skip


def _calibration(model, datamodule, items, labels) -> str:
    """Expected calibration error on the set (prepare=mnist), with the run's temperature and
    without it (T = 1)."""
    import torch

    from mnistlab.classify.calibration import BINS, expected_calibration_error

    kept = [(pixels, int(row["label"])) for (_, pixels, _), row in zip(items, labels, strict=True)
            if pixels is not None]  # fmt: skip
    with torch.inference_mode():
        logits = torch.cat([
            model(datamodule.to_input(torch.from_numpy(np.stack([p for p, _ in kept[i : i + 256]]))))
            for i in range(0, len(kept), 256)
        ])  # fmt: skip
    target = torch.tensor([y for _, y in kept])
    calibrated = expected_calibration_error(probabilities(model, logits), target)
    plain = expected_calibration_error(logits.softmax(1), target)
    temperature = float(getattr(model, "temperature", torch.tensor(1.0)))
    return (f"\nExpected calibration error ({BINS} bins, prepare=mnist): {calibrated:.2%} with the"
            f" run's temperature T = {temperature:.3f}, {plain:.2%} with T = 1.\n")  # fmt: skip


def _labels(folder: Path, seed: int) -> list[dict]:
    """labels.csv, checked row by row, and the seed the set was made with (set.json)."""
    path, remake = folder / "labels.csv", _REMAKE
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise BrokenSet(f"{path}: cannot read it ({e}){remake}") from None
    columns = {"file", "label", *CONDITIONS}
    if not rows or not columns <= set(rows[0]):
        lacking = ", ".join(sorted(columns - set(rows[0] if rows else ())))
        raise BrokenSet(f"{path}: not a wild-set label file of this version (no {lacking}){remake}")
    seen = set()
    for n, row in enumerate(rows, start=2):
        if row["label"] not in [str(d) for d in range(10)] or None in row.values():
            raise BrokenSet(f"{path} line {n}: expected a picture's file name, its digit 0-9 and"
                            f" its conditions{remake}")  # fmt: skip
        if row["split"] not in ("dev", "held-out") or row["file"] in seen:
            what = f"split {row['split']!r}" if row["file"] not in seen else "a file listed twice"
            raise BrokenSet(f"{path} line {n}: {what} ({row['file']}){remake}")
        seen.add(row["file"])
    missing = [r["file"] for r in rows if not (folder / r["file"]).is_file()]
    if missing:
        raise BrokenSet(f"{folder}: {len(missing)} picture(s) listed in labels.csv are missing"
                        f" ({missing[0]}, ...){remake}")  # fmt: skip
    from mnistlab.lab.files import read_object

    made = read_object(folder / "set.json").get("seed")
    if made is not None and made != seed:
        raise UserError(f"seed={seed}: {folder} was made with seed {made}; name another data= for"
                        " a set with this seed")  # fmt: skip
    return rows


def _out_folder(args: dict) -> tuple[Path, Path]:
    """The folder to write (`output=`, else the run's `wild/`), checked before any work but not
    made yet, and the checkpoint scored."""
    import os

    from mnistlab.lab.rebuild import locate

    run_dir, path = locate(args["run"], args["ckpt"], args["which"])
    out = Path(args["output"]) if args["output"] else (run_dir or path.parent) / "wild"
    if out.exists() and not out.is_dir():
        raise UserError(f"output={out}: a file; name a folder (made if need be)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        error = UserError(f"output={out}: {existing} cannot be written (a read-only file system,"
                          " or no permission); name another folder with output=")  # fmt: skip
        error.code = 1  # the machine, not the command line
        raise error
    return out, path


CONDITIONS = ("source", "weight", "face", "split", "colour", "size", "rotation", "blur", "noise",
              "jpeg")  # fmt: skip
HEAVY = ("weight", "face", "size")  # the bold and heavy part's own table, per split


def table(labels: list[dict], results: dict[str, list[bool]]) -> str:
    """Accuracy per condition value, for each preparation; fonts grouped as `font` with each
    font family listed under it."""
    lines = ["# Digits in the wild", "",
             "accuracy (right / pictures); prepare=mnist: MNIST's own construction (predict's"
             " default), prepare=fit: the whole picture fitted into 28x28", "",
             "| condition | value | pictures | prepare=mnist | prepare=fit |",
             "|---|---|---|---|---|"]  # fmt: skip

    def line(condition, value, chosen):
        cells = []
        for how in ("mnist", "fit"):
            right = sum(results[how][i] for i in chosen)
            cells.append(f"{right / len(chosen):.1%} ({right})")
        lines.append(f"| {condition} | {value} | {len(chosen)} | " + " | ".join(cells) + " |")

    line("all", "", range(len(labels)))
    kinds = [r["source"].partition(":")[0] for r in labels]
    for kind in sorted(set(kinds)):
        line("generator", kind, [i for i, k in enumerate(kinds) if k == kind])
    for condition in CONDITIONS[1:]:
        for value in sorted({r[condition] for r in labels}):
            line(condition, value, [i for i, r in enumerate(labels) if r[condition] == value])
    families = sorted({r["source"][5:] for r in labels if r["source"].startswith("font:")})
    for family in families:
        line("font", family, [i for i, r in enumerate(labels) if r["source"] == f"font:{family}"])
    heavy = [i for i, k in enumerate(kinds) if k == "heavy"]
    if heavy:  # apart: the held-out fonts' figure is the one that says how the model does
        lines[len(lines):] = ["", "## Bold and heavy type, by split (held-out: fonts nothing was"
                              " chosen on)", "", *lines[4:6]]  # fmt: skip
        for split in ("held-out", "dev"):
            chosen = [i for i in heavy if labels[i]["split"] == split]
            if not chosen:
                continue
            line(f"{split}: all", "", chosen)
            for condition in HEAVY:
                for value in sorted({labels[i][condition] for i in chosen}):
                    line(f"{split}: {condition}", value,
                         [i for i in chosen if labels[i][condition] == value])  # fmt: skip
    return "\n".join(lines) + "\n"


def _error_grid(labels, rows, paths, right, out: Path) -> int:
    """The wrong pictures as they were given, captioned `predicted (true) weight`: an equal
    share for each part of the set (typed, pen, bold and heavy), spread over each part's
    errors."""
    import torch
    from PIL import Image

    from mnistlab.classify.pictures import labelled_grid
    from mnistlab.data.digit_image import ink_box

    parts: dict[str, list[int]] = {}
    for i, ok in enumerate(right):
        if not ok:
            parts.setdefault(labels[i]["source"].partition(":")[0], []).append(i)
    wrong, share = [], ERRORS_SHOWN // max(1, len(parts))
    for part in parts.values():  # evenly spaced: every font's errors, not the first font's
        wrong += (
            part if len(part) <= share else [part[k * len(part) // share] for k in range(share)]
        )
    pictures = []
    for i in wrong:
        with Image.open(paths[i]) as image:
            image = image.convert("RGB")
            if box := ink_box(image):  # around the digit: a tiny one stays visible
                image = image.crop(box)
            image.thumbnail((76, 76))
            square = Image.new("RGB", (76, 76), "white")
            square.paste(image, ((76 - image.width) // 2, (76 - image.height) // 2))
        pictures.append(torch.from_numpy(np.asarray(square).transpose(2, 0, 1).copy()))
    stack = torch.stack(pictures) if pictures else torch.zeros(0, 3, 76, 76, dtype=torch.uint8)
    captions = [f"{rows[i]['class']} ({labels[i]['label']}) {labels[i]['weight']}" for i in wrong]
    grid = labelled_grid(stack, captions, wrong=[True] * len(wrong), columns=8)
    with atomic_write(out) as f:
        Image.fromarray(grid).save(f, format="PNG")
    return len(wrong)


if __name__ == "__main__":
    sys.exit(main())

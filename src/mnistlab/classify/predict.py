"""Classify image files or IDX files with a trained run:
`python -m mnistlab.classify.predict input=<file or folder> [run=... | ckpt=...]` or `make predict INPUT=...`.

Each image is brought to what the model was trained on by the run's own data module
(`prepare_image`: its mode, size and, for MNIST, light digit on dark), then normalized as in
training (`to_input`, with the mean and std stored in the checkpoint). Rows name the classes.
"""

import csv
import inspect
import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mnistlab.classify import probabilities, scores
from mnistlab.data.decode import SUFFIXES, open_image, unreadable
from mnistlab.data.idx import read_idx
from mnistlab.lab import UserError
from mnistlab.lab.command import RUN, command, writable
from mnistlab.lab.files import atomic_write, write_whole

log = logging.getLogger("mnistlab.classify.predict")

BATCH = 256
TOP = 3
CHOICES = {"invert": ("auto", "true", "false"), "prepare": ("mnist", "fit")}

USAGE = """usage: python -m mnistlab.classify.predict input=FILE_OR_FOLDER [run=FOLDER | ckpt=FILE]
                                [output=FILE.csv|FILE.json] [invert=auto|true|false]
                                [prepare=mnist|fit] [save_prepared=FOLDER]
                                [min_confidence=0.5]
                                [trust=MODULES] [overrides...]

Predicts the class of each image (PNG, JPEG, BMP, WebP; any size, grayscale or colour) or of each
image of an IDX file, in input order (a folder: its files sorted by path). Prints a table, or
writes CSV or JSON by the output's extension. Each picture is first brought to the dataset's form
(its data module's prepare_image; for MNIST, as MNIST made its digits: the ink found on any
background, cropped, fitted into 20x20, centred by its centre of mass in 28x28). MNIST-style data
only: `prepare=fit` fits the whole picture instead; `invert=true|false` forces the polarity.
`save_prepared`: PNGs of what the model saw. A folder of class sub-folders named as the run's
classes (input/<class>/<image>) is labelled: accuracy, per-class precision, recall and F1 and
the confusion matrix are printed after the predictions. Probabilities are calibrated (the temperature
fitted on the validation split, stored in the checkpoint); a row below `min_confidence` (0.5) is
marked uncertain. Exit status 1 if any input could not be read.
trust=: as for eval (another's run builds only what belongs where it stands, unless told)."""


def inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"input={path}: no such file or folder")
    files = [p for p in path.rglob("*") if p.is_file()]
    found = sorted(p for p in files if _readable_kind(p))
    if not found:
        raise UserError(f"input={path}: no PNG, JPEG, BMP, WebP or IDX files in it")
    if other := sorted(set(files) - set(found)):
        log.info("Skipping %d file(s) that are not images or IDX by their names: %s%s",
                 len(other), ", ".join(p.name for p in other[:3]), ", ..." * (len(other) > 3))  # fmt: skip
    return found


def _readable_kind(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES or "idx3-ubyte" in path.name


def images(paths: list[Path], prepare) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """(name, uint8 (C, H, W) image or None, error) for every image, in input order;
    `prepare` brings a PIL image to the model's input (the data module's `prepare_image`)."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if "idx3-ubyte" in path.name:
            try:
                stack = read_idx(path)
                if stack.ndim != 3:
                    raise UserError(f"{path}: IDX of shape {stack.shape}, not images (N, H, W)")
            except UserError as e:
                yield str(path), None, str(e)
                continue
            for i, pixels in enumerate(stack):
                try:
                    yield f"{path}#{i}", prepare(Image.fromarray(pixels)), ""
                except Blank as e:
                    yield f"{path}#{i}", None, str(e)
            continue
        try:
            with open_image(path) as image:
                pixels = prepare(image)
        except Blank as e:
            yield str(path), None, str(e)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                Image.DecompressionBombError) as e:  # fmt: skip
            yield str(path), None, f"cannot read: {unreadable(path, e)}"
        else:
            yield str(path), pixels, ""


def predict(model, datamodule, items, classes: list[str]) -> Iterator[dict]:
    """One row per item: file, class (its name), prob, top [(class, prob)] up to 3, error."""
    import torch

    batch: list[tuple[str, np.ndarray]] = []
    top = min(TOP, len(classes))

    def flush():
        x = torch.from_numpy(np.stack([pixels for _, pixels in batch]))  # (B, C, H, W) uint8
        with torch.inference_mode():
            probs = probabilities(model, model(datamodule.to_input(x)))
        values, indices = probs.topk(top, dim=1)
        for (name, _), v, i in zip(batch, values.tolist(), indices.tolist(), strict=True):
            yield {
                "file": name,
                "class": classes[i[0]],
                "prob": v[0],
                "top": [(classes[k], p) for k, p in zip(i, v, strict=True)],
                "error": "",
            }
        batch.clear()

    for name, pixels, error in items:
        if pixels is None:
            yield from flush() if batch else ()
            yield {"file": name, "class": None, "prob": None, "top": [], "error": error}
            continue
        batch.append((name, pixels))
        if len(batch) == BATCH:
            yield from flush()
    if batch:
        yield from flush()


def write(rows: list[dict], output: str | None) -> None:
    """The rows to `output` (.csv or .json, written whole or not at all, its folder made if need
    be), or a table on stdout."""
    if not output:
        _table(rows, sys.stdout)
        return
    if output.endswith(".json"):
        text = json.dumps(rows, indent=1) + "\n"
    else:
        _csv(rows, buffer := io.StringIO(newline=""))
        text = buffer.getvalue()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_whole(Path(output), text)


def _top(row: dict) -> str:
    return " ".join(f"{c}:{p:.3f}" for c, p in row["top"])


def _csv(rows: list[dict], f: io.TextIOBase) -> None:
    writer = csv.writer(f)
    writer.writerow(["file", "class", "prob", "top", "error", "uncertain"])
    for r in rows:
        prob = "" if r["prob"] is None else f"{r['prob']:.6f}"
        uncertain = "" if r["uncertain"] is None else str(r["uncertain"]).lower()
        writer.writerow([r["file"], r["class"] or "", prob, _top(r), r["error"], uncertain])


def _table(rows: list[dict], f: io.TextIOBase) -> None:
    width = max([len("file"), *(len(r["file"]) for r in rows)])
    name = max([len("class"), *(len(r["class"] or "") for r in rows)])
    print(f"{'file':<{width}}  {'class':<{name}}  prob    top", file=f)
    for r in rows:
        if r["error"]:
            print(f"{r['file']:<{width}}  {'-':<{name}}  -       {r['error']}", file=f)
        else:
            flag = "  (uncertain)" if r["uncertain"] else ""
            print(f"{r['file']:<{width}}  {r['class']:<{name}}  {r['prob']:.4f}  {_top(r)}{flag}",
                  file=f)  # fmt: skip


OPTIONS = {**RUN, "input": str, "output": str, "invert": str, "prepare": str,
           "save_prepared": str, "min_confidence": 0.5}  # fmt: skip


@command("mnistlab-predict", USAGE, **OPTIONS)
def main(args: dict, overrides: list[str]) -> int:
    if not args["input"]:
        raise UserError(
            "input= (make predict INPUT=) is empty: name an image, a folder of images"
            " or an IDX file"
        )
    if not 0.0 <= args["min_confidence"] <= 1.0:
        raise UserError(f"min_confidence={args['min_confidence']}: a probability between 0 and 1")
    for key in ("invert", "prepare"):
        if args[key] is not None and args[key] not in CHOICES[key]:
            raise UserError(f"{key}={args[key]}: choose {', '.join(CHOICES[key])}")
    if args["output"]:
        writable(Path(args["output"]), "output", (".csv", ".json"))
    paths = inputs(Path(args["input"]))
    model, datamodule, path = load(args, overrides)
    log.info("Model: %s", path)
    prepare = preparer(datamodule, invert=args["invert"], prepare=args["prepare"])
    inputs_ = images(paths, prepare)
    if args["save_prepared"]:
        inputs_ = _saving(inputs_, Path(args["save_prepared"]))
    start = time.perf_counter()
    rows = list(predict(model, datamodule, inputs_, datamodule.classes))
    seconds = time.perf_counter() - start
    uncertain = _mark_uncertain(rows, args["min_confidence"])
    write(rows, args["output"])
    if args["output"]:
        log.info("%d row(s) written to %s", len(rows), args["output"])
    labels = scores.folder_labels(Path(args["input"]), paths, datamodule.classes)
    if labels is not None:
        print(scores.labelled_summary(rows, labels, datamodule.classes), end="")
    failed = sum(1 for r in rows if r["error"])
    blank = sum(1 for r in rows if r["error"].startswith("blank picture"))
    not_read = (f"; {failed - blank} could not be read" if failed > blank else "") + (
        f"; {blank} blank" if blank else "")  # fmt: skip
    log.info("%d image(s) in %.2f s (%.0f images/s)%s%s", len(rows) - failed, seconds,
             (len(rows) - failed) / seconds, not_read,
             f"; {uncertain} uncertain (probability below min_confidence={args['min_confidence']})"
             if uncertain else "")  # fmt: skip
    return 1 if failed else 0


def _mark_uncertain(rows: list[dict], threshold: float) -> int:
    """Mark each row whose calibrated probability is below `threshold` as uncertain; return how
    many are."""
    for r in rows:
        r["uncertain"] = None if r["prob"] is None else r["prob"] < threshold
    return sum(1 for r in rows if r["uncertain"])


def preparer(datamodule, **given: str | None):
    """The data module's `prepare_image`, with `invert=` and `prepare=` when given (for data
    modules that take them: MNIST-style data)."""
    from functools import partial

    taken = inspect.signature(datamodule.prepare_image).parameters
    kwargs = {k: v for k, v in given.items() if v is not None}
    for key, value in kwargs.items():
        if key not in taken:
            raise UserError(f"{key}={value}: {type(datamodule).__name__} does not take {key}")
    prepare = partial(datamodule.prepare_image, **kwargs)
    if "prepare" not in taken:  # not digit-like data: a dark picture may be one of its classes
        return prepare

    def checked(image) -> np.ndarray:
        pixels = prepare(image)
        if not pixels.any():
            raise Blank("blank picture: no ink found to classify")
        return pixels

    return checked


class Blank(ValueError):
    """A digit picture with nothing drawn on it: no class to give."""


def _saving(inputs_, folder: Path):
    """The inputs, each prepared image also written to `folder` as `<n>_<name>.png`."""
    from PIL import Image

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"save_prepared={folder}: cannot create it ({e.strerror})") from None
    for n, (name, pixels, error) in enumerate(inputs_):
        if pixels is not None:
            stem = Path(name.replace("#", "_")).stem
            channels = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
            with atomic_write(folder / f"{n:05d}_{stem}.png") as f:
                Image.fromarray(channels).save(f, format="PNG")
        yield name, pixels, error


def load(args: dict, overrides: list[str], what: str = "predict"):
    """The run's model (eval mode, CPU), data module (for preparing images and its
    normalization; no data loaded) and checkpoint file; refused unless they are a classifier's."""
    from mnistlab.classify import check
    from mnistlab.lab.config import build
    from mnistlab.lab.rebuild import build_model, restore

    _, path, checkpoint, cfg = restore(args, overrides, what)
    model, datamodule = build_model(cfg, checkpoint, path), build(cfg, "data")
    try:
        check(model, datamodule, f"{what} ({path})")
    except UserError as e:
        if not (args["run"] or args["ckpt"]):  # taken as the newest finished run
            e.args = (f"{e}; name a classifier's run with run= (RUN=)",)
        raise
    return model, datamodule, path


if __name__ == "__main__":
    sys.exit(main())

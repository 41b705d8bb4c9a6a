"""Classify image files or IDX files with a trained run:
`python -m mnistlab.predict input=<file or folder> [run=... | ckpt=...]` or `make predict INPUT=...`.

Each image is brought to what the model was trained on: grayscale, fitted into 28x28 with its
aspect ratio kept and padded with the background, light digit on a dark background (dark-on-light
images, as people draw digits, are inverted; `invert=auto|true|false`), then the run's own
normalization (its data module's `to_input`).
"""

import csv
import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mnistlab import UserError
from mnistlab.idx import read_idx
from mnistlab.restore import locate, parse_args, run_config

log = logging.getLogger("mnistlab.predict")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
SIZE = 28
BATCH = 256

USAGE = """usage: python -m mnistlab.predict input=FILE_OR_FOLDER [run=FOLDER | ckpt=FILE]
                                [output=FILE.csv|FILE.json] [invert=auto|true|false] [overrides...]

Predicts the digit in each image (PNG, JPEG, BMP; any size, grayscale or colour) or in each image
of an IDX file, in input order (a folder: its files sorted by path). Prints a table, or writes
CSV or JSON by the output's extension. Exit status 1 if any input could not be read."""


def to_mnist(image, invert: str = "auto") -> np.ndarray:
    """A PIL image as a 28x28 uint8 array, light digit on dark, aspect ratio kept. Most pixels
    of a digit image are background, so a median above mid-grey means a light background."""
    from PIL import Image

    gray = image.convert("L")
    pixels = np.asarray(gray)
    if invert == "true" or (invert == "auto" and np.median(pixels) > 127):
        gray = Image.fromarray(255 - pixels)
    if gray.size != (SIZE, SIZE):
        scale = SIZE / max(gray.size)
        size = tuple(max(1, round(side * scale)) for side in gray.size)
        fitted = gray.resize(size, Image.Resampling.BILINEAR)
        gray = Image.new("L", (SIZE, SIZE), 0)
        gray.paste(fitted, ((SIZE - size[0]) // 2, (SIZE - size[1]) // 2))
    return np.asarray(gray, dtype=np.uint8)


def inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"input={path}: no such file or folder")
    found = sorted(p for p in path.rglob("*") if p.is_file() and _readable_kind(p))
    if not found:
        raise UserError(f"input={path}: no PNG, JPEG, BMP or IDX files in it")
    return found


def _readable_kind(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES or "idx3-ubyte" in path.name


def images(paths: list[Path], invert: str) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """(name, 28x28 uint8 image or None, error) for every image, in input order."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if "idx3-ubyte" in path.name:
            try:
                stack = read_idx(path)
            except UserError as e:
                yield str(path), None, str(e)
                continue
            for i, pixels in enumerate(stack):
                yield f"{path}#{i}", to_mnist(Image.fromarray(pixels), invert), ""
            continue
        try:
            with Image.open(path) as image:
                yield str(path), to_mnist(image, invert), ""
        except (OSError, UnidentifiedImageError, ValueError) as e:
            yield str(path), None, f"cannot read: {e}"


def predict(model, datamodule, items, top: int = 3) -> Iterator[dict]:
    """One row per item: file, digit, prob, top-k [(digit, prob)], error."""
    import torch

    batch: list[tuple[str, np.ndarray]] = []

    def flush():
        x = torch.from_numpy(np.stack([pixels for _, pixels in batch]))[:, None]  # (B,1,28,28)
        with torch.inference_mode():
            probs = model(datamodule.to_input(x)).softmax(dim=1)
        values, digits = probs.topk(top, dim=1)
        for (name, _), v, d in zip(batch, values.tolist(), digits.tolist(), strict=True):
            yield {
                "file": name,
                "digit": d[0],
                "prob": v[0],
                "top3": list(zip(d, v, strict=True)),
                "error": "",
            }
        batch.clear()

    for name, pixels, error in items:
        if pixels is None:
            yield from flush() if batch else ()
            yield {"file": name, "digit": None, "prob": None, "top3": [], "error": error}
            continue
        batch.append((name, pixels))
        if len(batch) == BATCH:
            yield from flush()
    if batch:
        yield from flush()


def write(rows: list[dict], output: str | None) -> None:
    if output and output.endswith(".json"):
        Path(output).write_text(json.dumps(rows, indent=1) + "\n")
    elif output and output.endswith(".csv"):
        with open(output, "w", newline="") as f:
            _csv(rows, f)
    elif output:
        raise UserError(f"output={output}: name a .csv or .json file")
    else:
        _table(rows, sys.stdout)


def _top3(row: dict) -> str:
    return " ".join(f"{d}:{p:.3f}" for d, p in row["top3"])


def _csv(rows: list[dict], f: io.TextIOBase) -> None:
    writer = csv.writer(f)
    writer.writerow(["file", "digit", "prob", "top3", "error"])
    for r in rows:
        prob = "" if r["prob"] is None else f"{r['prob']:.6f}"
        writer.writerow(
            [r["file"], "" if r["digit"] is None else r["digit"], prob, _top3(r), r["error"]]
        )


def _table(rows: list[dict], f: io.TextIOBase) -> None:
    width = max([len("file"), *(len(r["file"]) for r in rows)])
    print(f"{'file':<{width}}  digit  prob    top3", file=f)
    for r in rows:
        if r["error"]:
            print(f"{r['file']:<{width}}  -      -       {r['error']}", file=f)
        else:
            print(f"{r['file']:<{width}}  {r['digit']:<5}  {r['prob']:.4f}  {_top3(r)}", file=f)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    own = {
        "input": None,
        "run": None,
        "ckpt": None,
        "which": "best",
        "output": None,
        "invert": "auto",
    }
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv, own, USAGE)
        if not args["input"]:
            raise UserError("input=: name an image, a folder of images or an IDX file")
        if args["invert"] not in ("auto", "true", "false"):
            raise UserError(f"invert={args['invert']}: choose auto, true or false")
        paths = inputs(Path(args["input"]))
        model, datamodule = load(args, overrides)
        start = time.perf_counter()
        rows = list(predict(model, datamodule, images(paths, args["invert"])))
        seconds = time.perf_counter() - start
        write(rows, args["output"])
    except UserError as e:
        print(f"mnistlab-predict: error: {e}", file=sys.stderr)
        return 2
    failed = sum(1 for r in rows if r["error"])
    log.info("%d images in %.2f s (%.0f images/s)%s", len(rows) - failed, seconds,
             (len(rows) - failed) / seconds, f"; {failed} could not be read" if failed else "")  # fmt: skip
    return 1 if failed else 0


def load(args: dict, overrides: list[str]):
    """The run's model (eval mode, CPU) and data module (for its normalization; no data loaded)."""
    from hydra.utils import instantiate

    from mnistlab.checkpoint import load as load_checkpoint
    from mnistlab.restore import build_model

    run_dir, path = locate(args["run"], args["ckpt"], args["which"])
    checkpoint = load_checkpoint(path, require_checksum=False)
    cfg = run_config(run_dir, checkpoint, overrides, "predict")
    log.info("Model: %s", path)
    return build_model(cfg, checkpoint, path), instantiate(cfg.data)


if __name__ == "__main__":
    sys.exit(main())

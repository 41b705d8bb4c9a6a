"""The wild set of eval-wild: digits typed in fonts and drawn by a pen, each photographed under a
mix of conditions (colour, size, rotation, blur, noise, JPEG), with their labels."""

import csv
import io
import json
import math
import random
from pathlib import Path

import numpy as np

from mnistlab.lab.files import atomic_write, write_whole

SEED = 0
PER_FONT = 3  # pictures of each digit in each font
PEN_PER_DIGIT = 60  # pen-drawn pictures of each digit

# Each digit as pen strokes through points of a unit box (x right, y down); ("arc", cx, cy, rx,
# ry, from, to) in degrees, clockwise on screen (y down).
SKELETONS = {
    0: [[("arc", 0.5, 0.5, 0.32, 0.45, -90, 270)]],
    1: [[(0.32, 0.22), (0.55, 0.05), (0.55, 0.95)]],
    2: [[("arc", 0.5, 0.3, 0.3, 0.25, 190, 380), (0.2, 0.95), (0.85, 0.95)]],
    3: [[("arc", 0.5, 0.27, 0.27, 0.22, 200, 450), ("arc", 0.5, 0.72, 0.3, 0.24, 270, 520)]],
    4: [[(0.66, 0.95), (0.66, 0.05), (0.15, 0.66), (0.88, 0.66)]],
    5: [[(0.8, 0.05), (0.32, 0.05), (0.27, 0.46), ("arc", 0.5, 0.68, 0.3, 0.26, 225, 515)]],
    6: [[(0.72, 0.05), (0.45, 0.22), ("arc", 0.5, 0.7, 0.27, 0.25, 180, 540)]],
    7: [[(0.15, 0.05), (0.85, 0.05), (0.4, 0.95)]],
    8: [[("arc", 0.5, 0.27, 0.24, 0.22, 90, 450)], [("arc", 0.5, 0.72, 0.29, 0.25, -90, 270)]],
    9: [[("arc", 0.48, 0.3, 0.27, 0.25, 0, 360), (0.72, 0.95)]],
}


# ------------------------------------------------------------------ the set


def generate(
    out: Path,
    seed: int = SEED,
    fonts_dir: Path = Path("/usr/share/fonts"),
    per_font: int = PER_FONT,
    pen_per_digit: int = PEN_PER_DIGIT,
) -> int:
    """Write the set into `out` (PNGs and labels.csv); returns how many pictures. The same seed
    and fonts give the same set."""
    from PIL import ImageFont

    rng = random.Random(seed)
    fonts = [(f.stem, f) for f in sorted(fonts_dir.rglob("*.ttf"))]
    fonts.append(("pillow-default", None))  # the font Pillow itself ships
    out.mkdir(parents=True, exist_ok=True)
    rows = []

    def keep(picture, digit, conditions):
        name = f"{len(rows):05d}_{digit}.png"
        with atomic_write(out / name) as f:
            picture.save(f, format="PNG")
        rows.append({"file": name, "label": digit, **conditions})

    for font_name, path in fonts:
        for digit in range(10):
            for _ in range(per_font):
                size = rng.randint(48, 160)
                font = ImageFont.truetype(str(path), size) if path else ImageFont.load_default(size)
                ink = _typed(str(digit), font)
                keep(*_photographed(rng, ink, digit, f"font:{font_name}"))
    for digit in range(10):
        for _ in range(pen_per_digit):
            keep(*_photographed(rng, _drawn(rng, digit), digit, "pen"))
    write_whole(out / "set.json", json.dumps({"seed": seed, "pictures": len(rows)}) + "\n")
    labels = io.StringIO(newline="")
    writer = csv.DictWriter(labels, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_whole(out / "labels.csv", labels.getvalue())  # last: the set is complete once it is there
    return len(rows)


def _typed(text: str, font) -> np.ndarray:
    """The text's ink as a float mask (1 = ink), tightly cropped."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(mask).text((4 - left, 4 - top), text, font=font, fill=255)
    return np.asarray(mask, dtype=np.float32) / 255


def _drawn(rng: random.Random, digit: int) -> np.ndarray:
    """The digit as pen strokes: its skeleton with every point jittered, slanted and squeezed,
    drawn at a random stroke width, as a float mask."""
    from PIL import Image, ImageDraw

    height = 120
    slant, squeeze = rng.uniform(-0.35, 0.25), rng.uniform(0.65, 1.1)
    width_px = max(3, round(height * rng.uniform(0.05, 0.14)))
    mask = Image.new("L", (height + 2 * width_px + 40, height + 2 * width_px), 0)
    draw = ImageDraw.Draw(mask)
    for stroke in SKELETONS[digit]:
        points = []
        for part in stroke:
            points += _arc(part) if part[0] == "arc" else [part]
        wobble = [(rng.gauss(0, 0.035), rng.gauss(0, 0.035)) for _ in range(4)]
        xy = []
        for k, (x, y) in enumerate(points):
            dx, dy = wobble[min(3, k * 4 // len(points))]  # smooth: a few jitters per stroke
            x, y = (x - 0.5) * squeeze + 0.5 + dx, y + dy
            x += slant * (0.5 - y)  # handwriting leans
            xy.append((width_px + 20 + x * height * 0.7, width_px + y * height))
        draw.line(xy, fill=255, width=width_px, joint="curve")
        r = width_px / 2
        for x, y in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(mask, dtype=np.float32) / 255


def _arc(part) -> list[tuple[float, float]]:
    _, cx, cy, rx, ry, start, end = part
    steps = max(8, abs(end - start) // 10)
    return [(cx + rx * math.cos(math.radians(t)), cy + ry * math.sin(math.radians(t)))
            for t in np.linspace(start, end, steps)]  # fmt: skip


def _photographed(rng: random.Random, ink: np.ndarray, digit: int, source: str):
    """The ink on a canvas as a camera or scanner would give it; (picture, digit, conditions)."""
    from PIL import Image, ImageFilter

    side = rng.randint(120, 480)
    canvas_w, canvas_h = side, round(side * rng.uniform(0.75, 1.33))
    scheme = rng.choices(["dark-on-light", "light-on-dark", "colour"], [0.55, 0.2, 0.25])[0]
    if scheme == "dark-on-light":
        ground, colour = (rng.randint(190, 255),) * 3, (rng.randint(0, 70),) * 3
    elif scheme == "light-on-dark":
        ground, colour = (rng.randint(0, 60),) * 3, (rng.randint(190, 255),) * 3
    else:
        ground = tuple(rng.randint(140, 255) for _ in range(3))
        colour = tuple(rng.randint(0, 110) for _ in range(3))
    share = rng.uniform(0.15, 0.7)  # the digit's height over the canvas's shorter side
    height = max(8, round(share * min(canvas_w, canvas_h)))
    width = max(2, round(ink.shape[1] * height / ink.shape[0]))
    mask = Image.fromarray((ink * 255).astype(np.uint8)).resize((width, height), Image.LANCZOS)
    angle = rng.uniform(-15, 15)
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    x = rng.randint(0, max(0, canvas_w - mask.width))
    y = rng.randint(0, max(0, canvas_h - mask.height))
    picture = Image.new("RGB", (canvas_w, canvas_h), ground)
    picture.paste(Image.new("RGB", mask.size, colour), (x, y), mask)
    blur = rng.choice([0.0, 0.0, rng.uniform(0.5, 2.0)])
    if blur:
        picture = picture.filter(ImageFilter.GaussianBlur(blur * height / 60))
    noise = rng.choice([0, 0, 8, 16])
    if noise:
        pixels = np.asarray(picture, dtype=np.float32)
        pixels += np.random.default_rng(rng.randrange(2**32)).normal(0, noise, pixels.shape)
        picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    quality = rng.randint(25, 90)
    jpeg = io.BytesIO()
    picture.save(jpeg, "JPEG", quality=quality)
    conditions = {
        "source": source,
        "colour": scheme,
        "size": "small" if share < 0.3 else "medium" if share < 0.5 else "large",
        "rotation": "< 5 deg" if abs(angle) < 5 else "5-10 deg" if abs(angle) < 10 else "10-15 deg",
        "blur": "yes" if blur else "no",
        "noise": "yes" if noise else "no",
        "jpeg": "q25-50" if quality <= 50 else "q51-90",
    }
    return Image.open(jpeg).convert("RGB"), digit, conditions


# ------------------------------------------------------------------ the evaluation

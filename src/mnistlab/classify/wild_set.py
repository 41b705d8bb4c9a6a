"""The wild set of eval-wild: digits typed in fonts and drawn by a pen, each photographed under a
mix of conditions (colour, size, rotation, blur, noise, JPEG), with their labels; and apart from
them, bold and heavy type: fonts' own bold and black weights, and strokes thickened until the
holes of 0, 4, 6, 8 and 9 nearly close (their apertures kept open), some at tiny sizes. A font
family whose name's CRC-32 is odd is held out (`split`): nothing chosen for training looks at
it."""

import csv
import io
import json
import math
import random
import re
import zlib
from pathlib import Path

import numpy as np

from mnistlab.lab.files import atomic_write, write_whole

SEED = 0
PER_FONT = 3  # pictures of each digit in each font
PEN_PER_DIGIT = 60  # pen-drawn pictures of each digit
HEAVY_PER_FONT = 2  # bold and heavy pictures of each digit in each font (the `heavy:` part)
# A font's weight by its name: black before bold ("ExtraBold" is black, "SemiBold" bold).
BLACK = re.compile(r"black|heavy|extrabold|ultrabold|ultra", re.I)
BOLD = re.compile(r"bold|demi|bd|semibold", re.I)
NOT_TEXT = ("D050000L", "Dingbats")  # symbol fonts: their "digits" are pictures

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
    heavy_per_font: int = HEAVY_PER_FONT,
) -> int:
    """Write the set into `out` (PNGs and labels.csv); returns how many pictures. The same seed
    and fonts give the same set."""
    from PIL import ImageFont

    rng = random.Random(seed)
    fonts = [(f.stem, f) for f in sorted(fonts_dir.rglob("*.ttf")) if _has_digits(f)]
    fonts.append(("pillow-default", None))  # the font Pillow itself ships
    heavy = [(f.stem, f) for f in sorted([*fonts_dir.rglob("*.ttf"), *fonts_dir.rglob("*.otf")])
             if _has_digits(f)]  # fmt: skip
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
                keep(*_photographed(rng, ink, digit, f"font:{font_name}", _weight(font_name)))
    for digit in range(10):
        for _ in range(pen_per_digit):
            keep(*_photographed(rng, _drawn(rng, digit), digit, "pen", "pen"))
    for font_name, path in heavy:
        weight = _weight(font_name)
        for digit in range(10):
            for k in range(heavy_per_font * (2 if weight != "regular" else 1)):
                font = ImageFont.truetype(str(path), rng.randint(48, 160))
                ink, as_is = _typed(str(digit), font), weight != "regular" and k % 2 == 0
                if not as_is:  # every other one of a bold font, each of a regular one
                    ink = _heavier(ink, _counter(_typed("0", font)), rng)
                # A bold face tiny, where its strokes fill the glyph (a thickened one would be
                # a blot: nobody could read it)
                tiny = as_is and rng.random() < 0.5
                keep(*_photographed(rng, ink, digit, f"heavy:{font_name}",
                                    weight if as_is else "heavy", tiny=tiny))  # fmt: skip
    write_whole(out / "set.json", json.dumps({"seed": seed, "pictures": len(rows)}) + "\n")
    labels = io.StringIO(newline="")
    writer = csv.DictWriter(labels, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_whole(out / "labels.csv", labels.getvalue())  # last: the set is complete once it is there
    return len(rows)


def _has_digits(path: Path) -> bool:
    """A text font with a glyph for each digit: ten different pictures (a font without them
    draws one empty box for all ten)."""
    from PIL import ImageFont

    if path.stem.startswith(NOT_TEXT):
        return False
    font = ImageFont.truetype(str(path), 32)
    return len({bytes(np.asarray(font.getmask(str(d)))) for d in range(10)}) == 10


def family(font_name: str) -> str:
    """A font's family, its width aside: `LiberationSansNarrow-Bold` is `LiberationSans`."""
    return re.sub(r"(Condensed|Narrow|Cond)$", "", font_name.split("-")[0])


def held_out(font_name: str) -> bool:
    """Whether the font's family is in the held-out part: its name's CRC-32 is odd. A rule of
    the name alone, so that it holds on any machine, and nobody chose which."""
    return zlib.crc32(family(font_name).encode()) % 2 == 1


def _weight(font_name: str) -> str:
    style = font_name.partition("-")[2] or font_name
    return "black" if BLACK.search(style) else "bold" if BOLD.search(style) else "regular"


def _face(font_name: str) -> str:
    """The kind of face, by the names type foundries use."""
    name = font_name.lower()
    for face, words in (("condensed", ("condensed", "narrow")), ("mono", ("mono",)),
                        ("serif", ("serif", "roman", "c059", "p052", "bookman", "z003"))):  # fmt: skip
        if any(w in name for w in words):
            return face
    return "sans"


def _counter(ink: np.ndarray) -> float:
    """The radius of the smallest hole (counter) in a glyph's ink, in pixels (an 8's upper one);
    specks of a pixel or two left by anti-aliasing are not holes."""
    from scipy import ndimage

    mask = ink > 0.5
    holes, count = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if not count:
        return 0.0
    radii = ndimage.maximum(ndimage.distance_transform_edt(holes > 0), holes, range(1, count + 1))
    return min((r for r in np.atleast_1d(radii) if r >= 2), default=0.0)


def _heavier(ink: np.ndarray, zero_counter: float, rng: random.Random) -> np.ndarray:
    """The glyph's strokes grown until its holes nearly close: by 55-85% of the radius of its
    smallest hole (the font's 0's, when smaller or when the digit has none), or of its narrowest
    aperture's half-width (`_aperture`) when that is less: 15-45% of every hole and of every
    gap (a 6's between tail and loop) stays open, as in a black face. Edges stay anti-aliased."""
    from scipy import ndimage

    own = _counter(ink)
    limit = min(own, zero_counter) if own else zero_counter
    pad = math.ceil(limit) + 2
    padded = np.pad(ink, pad)
    distance = ndimage.distance_transform_edt(padded < 0.5)  # from the ink, outside it
    radius = rng.uniform(0.55, 0.85) * _aperture(padded > 0.5, distance, limit)
    return np.maximum(padded, np.clip(radius + 0.5 - distance, 0.0, 1.0)).astype(np.float32)


def _aperture(mask: np.ndarray, distance: np.ndarray, limit: float) -> float:
    """How far the strokes can grow (up to `limit`, to a quarter pixel) before two of them meet
    around a gap and enclose a new hole: a 2, 3, 5, 6 or 9 whose aperture closes is a blot
    that no typeface draws. Pockets under 6 px (anti-aliasing, serif corners) do not count."""
    from scipy import ndimage

    outside = ~ndimage.binary_fill_holes(mask)

    def closes(radius: float) -> bool:
        grown = distance <= radius
        holes, count = ndimage.label(ndimage.binary_fill_holes(grown) & ~grown & outside)
        return bool(count) and np.bincount(holes.ravel())[1:].max() >= 6

    steps = np.arange(1.0, limit, 1.0)
    first = next((r for r in steps if closes(r)), None)  # whole pixels, then quarters
    if first is None:
        return limit
    return float(next((r for r in first - np.array([0.75, 0.5, 0.25]) if closes(r)), first))


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


def _size(share: float) -> str:
    """The digit's size by its share of the canvas's shorter side."""
    return "small" if share < 0.3 else "medium" if share < 0.5 else "large"


def _photographed(rng: random.Random, ink: np.ndarray, digit: int, source: str, weight: str,
                  tiny: bool = False):  # fmt: skip
    """The ink on a canvas as a camera or scanner would give it; (picture, digit, conditions).
    `tiny`: the digit 12-20 px high, where a stroke is a large part of it."""
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
    if tiny:  # still legible: milder blur, noise and JPEG than a larger digit can take
        share = rng.randint(12, 20) / min(canvas_w, canvas_h)
    height = max(8, round(share * min(canvas_w, canvas_h)))
    width = max(2, round(ink.shape[1] * height / ink.shape[0]))
    mask = Image.fromarray((ink * 255).astype(np.uint8)).resize((width, height), Image.LANCZOS)
    angle = rng.uniform(-15, 15)
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    x = rng.randint(0, max(0, canvas_w - mask.width))
    y = rng.randint(0, max(0, canvas_h - mask.height))
    picture = Image.new("RGB", (canvas_w, canvas_h), ground)
    picture.paste(Image.new("RGB", mask.size, colour), (x, y), mask)
    blur = rng.choice([0.0, 0.0, rng.uniform(0.5, 1.0 if tiny else 2.0)])
    if blur:
        picture = picture.filter(ImageFilter.GaussianBlur(blur * height / 60))
    noise = rng.choice([0, 0, 8] if tiny else [0, 0, 8, 16])
    if noise:
        pixels = np.asarray(picture, dtype=np.float32)
        pixels += np.random.default_rng(rng.randrange(2**32)).normal(0, noise, pixels.shape)
        picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    quality = rng.randint(60 if tiny else 25, 90)
    jpeg = io.BytesIO()
    picture.save(jpeg, "JPEG", quality=quality)
    conditions = {
        "source": source,
        "weight": weight,
        "face": "pen" if source == "pen" else _face(source.partition(":")[2]),
        "split": "held-out" if source != "pen" and held_out(source.partition(":")[2]) else "dev",
        "colour": scheme,
        "size": "tiny" if tiny else _size(share),
        "rotation": "< 5 deg" if abs(angle) < 5 else "5-10 deg" if abs(angle) < 10 else "10-15 deg",
        "blur": "yes" if blur else "no",
        "noise": "yes" if noise else "no",
        "jpeg": "q25-50" if quality <= 50 else "q51-90",
    }
    return Image.open(jpeg).convert("RGB"), digit, conditions


# ------------------------------------------------------------------ the evaluation

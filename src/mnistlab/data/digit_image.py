"""Any picture of one digit, prepared the way MNIST's own digits were made.

MNIST's digits were size-normalized to fit a 20x20 box with their aspect ratio kept (anti-aliased,
so grey levels), then centred in a 28x28 field by their centre of mass, light ink on black. A
photo, scan or screenshot of a digit is nothing like that: dark ink on white paper, or colour on
colour, a small digit on a large canvas with margins, uneven contrast, specks. `as_mnist` brings
such a picture to MNIST's form:

1. background: the median colour of the picture's border; the ink is each pixel's distance from
   that colour (so dark on light, light on dark and colour on colour all become light on black);
2. noise: distances up to the border's own spread (3 MADs) are background;
3. contrast: the ink is stretched so that its strongest strokes are white;
4. crop to the ink's bounding box (specks far weaker than the strokes ignored); a crop larger
   than the box has its strokes brought within MNIST's widths and is sheared upright (its
   slant, from the ink's second moments, taken out: italic type and leaning handwriting);
   fit into 20x20 with the aspect ratio kept (area-averaged, as anti-aliasing);
5. centre of mass at the centre of the 28x28 field.

An MNIST digit (28x28, light on black, already so prepared) comes out nearly unchanged.
No torch: cheap to import in decoding processes.
"""

import numpy as np

FIELD, BOX = 28, 20  # MNIST's field and the box its digits were fitted into
# Stroke widths, px in the 20x20 box. MNIST's (training set): median 2.8, 95% under 4.3, 99%
# under 5.3. A pen stroke thinner than MIN_STROKE is thickened to it; heavy type (a bold face at a
# small size, strokes that close the holes of 0, 6, 8, 9) wider than MAX_STROKE is thinned to
# HEAVY_TARGET, its holes opened as MNIST's writers left them.
MIN_STROKE, MAX_STROKE, HEAVY_TARGET = 2.5, 4.5, 4.0
# px: a picture with a longer side is averaged down by a whole factor before its ink is found. As
# floats a 12000x12000 photo takes GBs; 2048 px still gives a 20x20 box a hundred pixels a side.
LARGEST = 2048


def as_mnist(image, invert: str = "auto") -> np.ndarray:
    """A PIL image of one digit as uint8 (28, 28), MNIST-style. `invert`: "auto" takes the ink
    as whatever differs from the background (any polarity, any colour); "true" / "false" force
    dark-on-light / light-on-dark for a grayscale reading."""
    from PIL import Image

    ink = _ink(_reduced(image)[0], invert)
    rows, cols = _extent(ink)
    if rows is None:  # a blank picture: nothing to centre
        return np.zeros((FIELD, FIELD), dtype=np.uint8)
    crop = ink[rows[0] : rows[1], cols[0] : cols[1]]
    if max(crop.shape) > BOX:  # MNIST's own digits, within the box, come back as given
        crop = _upright(_stroke_normalized(crop))
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL: (width, height)
    # Area averaging when shrinking (anti-aliasing, as MNIST's), bilinear when enlarging.
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    box = Image.fromarray(crop.astype(np.float32), mode="F").resize(size, method)
    box = np.clip(np.asarray(box, dtype=np.float64), 0.0, 1.0)
    return _centred(box / box.max() if box.max() > 0 else box)  # the strongest stroke white


def ink_box(image) -> tuple[int, int, int, int] | None:
    """The square (left, top, right, bottom) around the digit's strokes with a margin of half
    their extent, within the picture; None for a blank one. For showing a picture zoomed."""
    reduced, factor = _reduced(image)
    rows, cols = _extent(_ink(reduced, "auto"))
    if rows is None:
        return None
    side = 1.5 * factor * max(rows[1] - rows[0], cols[1] - cols[0])
    cy, cx = factor * (rows[0] + rows[1]) / 2, factor * (cols[0] + cols[1]) / 2
    left, top = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
    return (
        left,
        top,
        min(image.width, round(cx + side / 2)),
        min(image.height, round(cy + side / 2)),
    )


def _reduced(image) -> tuple:
    """(the picture, 1), or for one with a side over LARGEST px (the picture averaged down by a
    whole factor, the factor): an `Image.reduce` of its 8-bit pixels, before any float copy."""
    factor = -(-max(image.size) // LARGEST)
    if factor < 2:
        return image, 1
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        mode = "RGBA"
    else:
        mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    return image.convert(mode).reduce(factor), factor


def _stroke_normalized(crop: np.ndarray) -> np.ndarray:
    """The crop with its strokes brought within MNIST's widths, at 4x the box: a 5 px line
    across a 900 px page is thickened to MIN_STROKE box pixels (it would average away to a faint
    trace), a heavy glyph whose holes nearly close is thinned to HEAVY_TARGET (its holes would
    fill when it is shrunk into 20x20). The width is measured on the ink at 4x the box as
    2 + 2 x (interior pixels / edge pixels) of its mask, exact for a long stroke of width >= 2.
    Called for a crop larger than the box only."""
    from PIL import Image, ImageFilter

    h, w = crop.shape
    factor = 4 * BOX / max(h, w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    method = Image.Resampling.BOX if factor < 1 else Image.Resampling.BILINEAR
    scaled = Image.fromarray(crop.astype(np.float32), mode="F").resize(size, method)
    ink = np.asarray(scaled, dtype=np.float64)
    ink = ink / ink.max() if ink.max() > 0 else ink
    mask = ink > 0.5
    padded = np.pad(mask, 1)
    inner = mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = int(mask.sum() - inner.sum())
    width = (2 + 2 * inner.sum() / edge) / 4 if edge else 0.0  # in box pixels
    if edge and width < MIN_STROKE:
        k, grow = 2 * round(4 * (MIN_STROKE - width) / 2) + 1, ImageFilter.MaxFilter
        # a thin line averaged down is faint but for its crossings: its own strength made white
        ink = np.clip(ink / np.median(ink[mask]), 0.0, 1.0)
    elif width > MAX_STROKE:
        k, grow = 2 * round(4 * (width - HEAVY_TARGET) / 2) + 1, ImageFilter.MinFilter
    else:
        k = 1
    if k < 3:  # nothing to change: a crop under 4x the box keeps its own pixels
        return ink if factor < 1 else crop
    # an odd max (min) filter adds (takes) k - 1 pixels of width
    changed = Image.fromarray(np.round(ink * 255).astype(np.uint8)).filter(grow(k))
    return np.asarray(changed, dtype=np.float64) / 255


def _upright(crop: np.ndarray) -> np.ndarray:
    """The crop sheared along x until its ink has no slant (the second moment mu11 is 0; the
    deskewing of LeCun et al.'s MNIST benchmarks), cut to the ink again. Italic type leans one
    way, MNIST's writers both ways around upright. On eval-wild's dev fonts it took the
    reference run from 87.2% to 89.5% on bold and heavy type, and (with a thin pen line made
    white) from 95.9% to 96.8% on the typed and pen digits."""
    from PIL import Image

    total = crop.sum()
    if total <= 0:
        return crop
    ys, xs = np.indices(crop.shape)
    cy, cx = (ys * crop).sum() / total, (xs * crop).sum() / total
    mu02 = ((ys - cy) ** 2 * crop).sum()
    skew = ((xs - cx) * (ys - cy) * crop).sum() / mu02 if mu02 > 0 else 0.0
    pad = int(abs(skew) * crop.shape[0]) + 2
    wide = Image.fromarray(np.pad(crop, ((0, 0), (pad, pad))).astype(np.float32), mode="F")
    # each output pixel (x, y) reads the input at (x + skew * (y - cy), y)
    sheared = wide.transform(wide.size, Image.Transform.AFFINE, (1, skew, -skew * cy, 0, 1, 0),
                             resample=Image.Resampling.BILINEAR)  # fmt: skip
    ink = np.clip(np.asarray(sheared, dtype=np.float64), 0.0, 1.0)
    rows, cols = np.flatnonzero(ink.max(1) > 0.05), np.flatnonzero(ink.max(0) > 0.05)
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] if rows.size else crop


def _ink(image, invert: str) -> np.ndarray:
    """How much each pixel is ink, 0..1 (float32, H x W)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3] * np.float32(1 / 255)
        if invert == "auto" and alpha.min() < alpha.max():  # drawn on a transparent ground
            return _stretch(alpha, _border(alpha[..., None])[:, 0])
        image = _on_white(image)
    if invert in ("true", "false"):
        gray = np.asarray(image.convert("L"), dtype=np.float32) * np.float32(1 / 255)
        ink = 1.0 - gray if invert == "true" else gray
        return _stretch(ink, _border(ink[..., None])[0])
    # Gray pictures as one channel (MNIST's own, scans: three times less work), others as RGB.
    mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    pixels = np.asarray(image.convert(mode), dtype=np.float32) * np.float32(1 / 255)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    background = np.median(_border(pixels), axis=0).astype(np.float32)
    diff = pixels - background
    distance = np.sqrt(np.einsum("hwc,hwc->hw", diff, diff) / np.float32(pixels.shape[-1]))
    return _stretch(distance, _border(distance[..., None])[:, 0])


def _on_white(image):
    from PIL import Image

    rgba = image.convert("RGBA")
    ground = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(ground, rgba).convert("RGB")


def _border(pixels: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame (a 16th of each side, at least one pixel), as (N, C)."""
    h, w = pixels.shape[:2]
    dy, dx = max(1, h // 16), max(1, w // 16)
    frame = [pixels[:dy], pixels[-dy:], pixels[dy:-dy, :dx], pixels[dy:-dy, -dx:]]
    return np.concatenate([f.reshape(-1, pixels.shape[-1]) for f in frame])


def _stretch(ink: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Background (the border's level and spread) to 0, the strongest strokes to 1."""
    level = np.median(border)
    spread = np.median(np.abs(border - level))
    ink = ink - level
    floor = 3.0 * 1.4826 * spread  # 3 standard deviations of the border's noise
    top = np.percentile(ink[ink > floor], 99) if (ink > floor).any() else 0.0
    if top <= floor:
        return np.zeros_like(ink)
    return np.clip((ink - floor) / (top - floor), 0.0, 1.0)


def _extent(ink: np.ndarray) -> tuple:
    """The rows and columns [start, stop) holding the digit's strokes, or (None, None)."""
    strong = ink > 0.25 * ink.max() if ink.max() > 0 else np.zeros_like(ink, dtype=bool)
    # Noise: a strong pixel with fewer than two strong neighbours of its eight is no stroke (a
    # line 1 px wide has two). Strong noise (sigma over a tenth of the contrast) leaves hundreds
    # of such pixels across a large canvas, which would set the box.
    padded = np.pad(strong, 1).astype(np.uint8)
    h, w = strong.shape
    neighbours = sum(padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)  # fmt: skip
    strong &= neighbours >= 2
    if not strong.any():
        return None, None
    ys, xs = np.nonzero(strong)
    # Specks: a few stray pixels far from the strokes widen the box. The box holds the inner
    # 99.5% of the strong pixels on each axis, then takes in the faint edges next to it (the
    # anti-aliased rim of a stroke: a few pixels at most, not a shadow across the picture).
    lo_y, hi_y = np.percentile(ys, [0.25, 99.75]).round().astype(int)
    lo_x, hi_x = np.percentile(xs, [0.25, 99.75]).round().astype(int)
    faint = ink > 0
    rim = max(2, round(0.05 * max(hi_y - lo_y, hi_x - lo_x)))
    for _ in range(rim):
        grown = (
            lo_y - (lo_y > 0 and faint[lo_y - 1, lo_x : hi_x + 1].any()),
            hi_y + (hi_y < h - 1 and faint[hi_y + 1, lo_x : hi_x + 1].any()),
            lo_x - (lo_x > 0 and faint[lo_y : hi_y + 1, lo_x - 1].any()),
            hi_x + (hi_x < w - 1 and faint[lo_y : hi_y + 1, hi_x + 1].any()),
        )
        if grown == (lo_y, hi_y, lo_x, hi_x):
            break
        lo_y, hi_y, lo_x, hi_x = grown
    return (lo_y, hi_y + 1), (lo_x, hi_x + 1)


def _centred(box: np.ndarray) -> np.ndarray:
    """The box pasted into the 28x28 field with its centre of mass at the field's centre."""
    h, w = box.shape
    total = box.sum()
    cy = (box.sum(axis=1) * np.arange(h)).sum() / total
    cx = (box.sum(axis=0) * np.arange(w)).sum() / total
    centre = FIELD / 2  # MNIST's: its test digits' centres of mass average (14.0, 14.0)
    top = int(np.clip(round(centre - cy), 0, FIELD - h))
    left = int(np.clip(round(centre - cx), 0, FIELD - w))
    field = np.zeros((FIELD, FIELD))
    field[top : top + h, left : left + w] = box
    return np.round(field * 255.0).astype(np.uint8)

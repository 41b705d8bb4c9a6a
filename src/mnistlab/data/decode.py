"""Image files to uint8 arrays of one shape. No torch: cheap to import in decoding processes."""

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}  # the image files an image folder reads


def is_image(path: str | Path) -> bool:
    name = os.path.basename(path)
    return os.path.splitext(name)[1].lower() in SUFFIXES and not name.startswith(".")


def to_array(image, channels: int, height: int, width: int) -> np.ndarray:
    """A PIL image of any mode and size as uint8 (channels, height, width): grayscale or RGB,
    resized bilinearly (as torchvision's Resize((height, width)) on a PIL image)."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def unreadable(path: str | Path, error: Exception) -> str:
    """Why an image file could not be decoded, in one line."""
    from PIL import Image

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    why = (str(error).splitlines() or [""])[0][:120] or type(error).__name__
    if isinstance(error, Image.DecompressionBombError):  # PIL's guard against huge images
        why = why.partition(", could be")[0] + " (a decompression bomb?): scale it down to read it"
    return why


@contextmanager
def open_image(path: str | Path):
    """`PIL.Image.open`, a picture over `Image.MAX_IMAGE_PIXELS` refused (DecompressionBombError)
    as PIL refuses one of twice that, rather than warned of and decoded: a 50 KB PNG of
    12000x12000 pixels would take GBs."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombWarning as e:
        raise Image.DecompressionBombError(str(e)) from None
    with image:
        yield image


def decode_chunk(start: int, files: list[str], shape: tuple[int, int, int]):
    """(start, uint8 images (len(files), *shape), {start + i: error} for files that failed)."""
    from PIL import Image, UnidentifiedImageError

    out = np.zeros((len(files), *shape), dtype=np.uint8)
    failed = {}
    for i, path in enumerate(files):
        try:
            with open_image(path) as image:
                out[i] = to_array(image, *shape)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
                Image.DecompressionBombError) as e:  # fmt: skip
            failed[start + i] = unreadable(path, e)
    return start, out, failed

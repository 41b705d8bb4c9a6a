"""Image files to uint8 arrays of one shape. No torch: cheap to import in decoding processes."""

import os
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


def decode_chunk(start: int, files: list[str], shape: tuple[int, int, int]):
    """(start, uint8 images (len(files), *shape), {start + i: error} for files that failed)."""
    from PIL import Image, UnidentifiedImageError

    out = np.zeros((len(files), *shape), dtype=np.uint8)
    failed = {}
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                out[i] = to_array(image, *shape)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            failed[start + i] = str(e).splitlines()[0][:120] or type(e).__name__
        except Image.DecompressionBombError as e:  # PIL's guard against huge images
            failed[start + i] = f"{str(e)[:100]} (raise PIL.Image.MAX_IMAGE_PIXELS if you trust it)"
    return start, out, failed

"""Digits typed in every TrueType font on this machine, photographed badly: a seeded set of PNGs
for trying `make predict` on digits that were never part of MNIST.

Each font draws each digit once, at a random size, somewhere on a canvas of 200-600 px with
margins: dark on light (mostly), light on dark, or colour on colour; rotated up to 12 degrees,
blurred half the time, JPEG-compressed at quality 30-90. Files are `<n>_<digit>.png`:

    python scripts/font_digits.py /tmp/font_digits            # fonts under /usr/share/fonts
    make predict INPUT=/tmp/font_digits OUTPUT=preds.csv      # the digit is in each file's name
"""

import argparse
import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--fonts", type=Path, default=Path("/usr/share/fonts"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fonts = sorted(args.fonts.rglob("*.ttf"))
    if not fonts:
        raise SystemExit(f"font_digits: no .ttf fonts under {args.fonts} (--fonts DIR)")
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    n = 0
    for font_file in fonts:
        for digit in range(10):
            draw_one(rng, font_file, digit).save(args.out / f"{n:04d}_{digit}.png")
            n += 1
    print(f"{n} PNGs from {len(fonts)} fonts in {args.out}")


def draw_one(rng: random.Random, font_file: Path, digit: int) -> Image.Image:
    width, height = rng.randint(200, 600), rng.randint(200, 600)
    if rng.random() < 0.3:  # colour on colour
        ground = tuple(rng.randint(150, 255) for _ in range(3))
        ink = tuple(rng.randint(0, 90) for _ in range(3))
    elif rng.random() < 0.7:  # dark on light, as on paper
        ground, ink = (rng.randint(200, 255),) * 3, (rng.randint(0, 60),) * 3
    else:  # light on dark, as on a screen
        ground, ink = (rng.randint(0, 60),) * 3, (rng.randint(200, 255),) * 3
    image = Image.new("RGB", (width, height), ground)
    size = rng.randint(int(0.2 * min(width, height)), int(0.7 * min(width, height)))
    x = rng.randint(0, max(1, width - size))
    y = rng.randint(0, max(1, height - int(1.2 * size)))
    font = ImageFont.truetype(str(font_file), size)
    ImageDraw.Draw(image).text((x, y), str(digit), font=font, fill=ink)
    image = image.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR, fillcolor=ground)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=rng.randint(30, 90))
    return Image.open(jpeg)


if __name__ == "__main__":
    main()

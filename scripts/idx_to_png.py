"""Write the images of an IDX file as PNGs, e.g. to look at the data or to try `make predict`.

python scripts/idx_to_png.py data/MNIST/raw/t10k-images-idx3-ubyte OUT_DIR [--limit N] [--invert]
"""

import argparse
from pathlib import Path

from PIL import Image

from mnistlab.data.idx import read_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("idx", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--invert", action="store_true", help="dark digits on white, as drawn")
    args = parser.parse_args()
    images = read_idx(args.idx)[: args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(255 - pixels if args.invert else pixels).save(args.out / f"{i:05d}.png")
    print(f"{len(images)} PNGs in {args.out}")


if __name__ == "__main__":
    main()

"""Any picture of a digit prepared as MNIST made its digits (mnistlab.data.digit_image): the ink found
on any background, cropped, fitted into 20x20, centred by its centre of mass in 28x28."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnistlab.data.digit_image import as_mnist
from mnistlab.data.mnist import MNISTDataModule


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    ys, xs = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
    total = pixels.astype(float).sum()
    return (pixels * ys).sum() / total, (pixels * xs).sum() / total


def extent(pixels: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(pixels.sum(axis=1))[0], np.nonzero(pixels.sum(axis=0))[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def seven(size: int, ink, ground, mode: str = "L", corner=(40, 40), canvas=720) -> Image.Image:
    """A "7" about `size` pixels tall drawn near a corner of a large canvas."""
    image = Image.new(mode, (canvas, canvas), ground)
    x, y = corner
    ImageDraw.Draw(image).line([(x, y), (x + 0.7 * size, y), (x + 0.3 * size, y + size)],
                               fill=ink, width=max(1, size // 10))  # fmt: skip
    return image


@pytest.mark.parametrize(
    "picture",
    [
        seven(280, 0, 255),  # dark ink on white paper
        seven(280, 255, 0),  # light on dark
        seven(280, (200, 30, 30), (40, 120, 200), "RGB"),  # red on blue
        seven(280, (0, 0, 0, 255), (0, 0, 0, 0), "RGBA"),  # black on a transparent ground
        seven(280, 40, 235, corner=(420, 380)),  # another corner, low contrast
    ],
    ids=["dark-on-white", "light-on-dark", "red-on-blue", "transparent", "low-contrast"],
)
def test_a_digit_at_10x_size_in_a_corner_comes_out_centred_as_mnist(picture):
    out = as_mnist(picture)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert max(extent(out)) == 20  # fitted into MNIST's 20x20 box
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1, (cy, cx)
    assert out.max() == 255 and out[0].max() == out[:, 0].max() == 0  # light ink, dark field


def test_strong_noise_on_a_large_canvas_does_not_set_the_box():
    """A 40 px digit on a 400 px canvas under noise of sigma 30 (15% of the contrast): hundreds
    of noise pixels pass the strokes' threshold, scattered over the canvas; the box is still the
    digit's (it was the whole canvas)."""
    rng = np.random.default_rng(0)
    clean = seven(40, 30, 230, corner=(150, 170), canvas=400)
    noisy = np.asarray(clean, dtype=np.float64) + rng.normal(0, 30, (400, 400))
    a, b = as_mnist(clean), as_mnist(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    assert np.abs(np.subtract(extent(a), extent(b))).max() <= 1
    assert np.abs(np.subtract(centre_of_mass(a), centre_of_mass(b))).max() <= 1


def test_a_photo_of_many_megapixels_is_read_in_little_memory_as_a_smaller_one_is():
    """A 9000x9000 picture is averaged down in 8 bits before any float copy: its floats alone
    would take 1 GB (RGB float32); it comes out as the same picture at a tenth of the size."""
    import tracemalloc

    large = seven(2800, (0, 0, 0), (255, 255, 255), "RGB", corner=(400, 400), canvas=9000)
    tracemalloc.start()
    try:
        big = as_mnist(large)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 300e6, f"{peak / 1e6:.0f} MB"
    small = as_mnist(seven(280, (0, 0, 0), (255, 255, 255), "RGB", corner=(40, 40), canvas=900))
    assert np.abs(np.subtract(centre_of_mass(big), centre_of_mass(small))).max() <= 1
    assert np.abs(np.subtract(extent(big), extent(small))).max() <= 1


def test_specks_and_noise_on_the_paper_do_not_move_the_digit():
    rng = np.random.default_rng(0)
    clean = np.asarray(seven(280, 0, 255), dtype=np.float64)
    noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255)
    noisy[690:695, 700:705] = 0  # a speck of dirt far from the digit
    a, b = as_mnist(seven(280, 0, 255)), as_mnist(Image.fromarray(noisy.astype(np.uint8)))
    assert np.abs(np.subtract(centre_of_mass(a), centre_of_mass(b))).max() <= 1
    assert np.abs(np.subtract(extent(a), extent(b))).max() <= 1  # noise moves the slant a hair


def test_an_mnist_like_digit_comes_out_nearly_unchanged():
    """A digit that already is MNIST-like (ink fitted into 20x20, centred by its mass) is left
    as it is, up to the contrast stretch's rounding (here: drawn so, then prepared)."""
    once = as_mnist(seven(280, 0, 255))
    twice = as_mnist(Image.fromarray(once))
    assert np.abs(once.astype(int) - twice.astype(int)).max() <= 8
    assert np.abs(np.subtract(centre_of_mass(once), centre_of_mass(twice))).max() <= 0.5


def test_a_blank_picture_is_an_empty_field():
    assert not as_mnist(Image.new("L", (300, 200), 255)).any()


def test_fit_keeps_the_old_preparation_and_other_idx_datasets_use_it(tmp_path):
    picture = seven(280, 0, 255)
    mnist = MNISTDataModule(str(tmp_path))
    assert mnist.prepare == "mnist"
    fitted = mnist.prepare_image(picture, prepare="fit")[0]
    assert max(extent(fitted)) <= 14  # the whole canvas in 28x28: the digit small, off-centre
    assert MNISTDataModule(str(tmp_path), folder="FashionMNIST").prepare == "fit"
    with pytest.raises(Exception, match=r"data\.prepare=crop: choose mnist"):
        MNISTDataModule(str(tmp_path), prepare="crop")


@pytest.mark.parametrize("width", [1, 3, 5])
def test_a_thin_pen_line_on_a_large_page_stays_a_visible_stroke(width):
    """A 5 drawn with a thin pen on a 900 px page: shrunk to 20x20 it would be a faint trace;
    prepared, its strokes are white and about as wide as MNIST's (1.5-4 px)."""
    from PIL import Image, ImageDraw

    page = Image.new("L", (900, 900), 255)
    five = [(600, 150), (350, 150), (330, 420), (520, 400), (600, 520), (560, 700), (350, 720)]
    ImageDraw.Draw(page).line(five, fill=0, width=width)
    field = as_mnist(page)
    assert field.max() == 255
    strong = field > 128
    rows = strong.sum(axis=1)[strong.any(axis=1)]  # stroke pixels across each row it crosses
    assert 1.5 <= np.median(rows) <= 4.5, rows


def heavy_zero(hole: tuple[int, int]) -> Image.Image:
    """A 0 in a heavy face on a 900 px page: a ring 300 x 420 px whose hole is `hole` px."""
    page = Image.new("L", (900, 900), 255)
    draw = ImageDraw.Draw(page)
    draw.ellipse((300, 240, 600, 660), fill=0)
    w, h = hole
    draw.ellipse((450 - w // 2, 450 - h // 2, 450 + w // 2, 450 + h // 2), fill=255)
    return page


@pytest.mark.parametrize("hole", [(40, 120), (60, 200)])
def test_a_heavy_glyph_keeps_its_hole_open(hole):
    """Shrunk as it is into 20x20, a 0 whose strokes nearly close its hole comes out a grey
    blob; prepared, its strokes are thinned to MNIST's widths, and the hole is dark."""
    field = as_mnist(heavy_zero(hole)).astype(int)
    assert field.max() == 255
    centre = field[12:17, 12:17].min()  # the hole, around the centre of mass
    assert centre < 40, field[10:19, 10:19]
    strong = field > 128
    rows = strong.sum(axis=1)[strong.any(axis=1)]
    assert np.median(rows) <= 2 * 5, rows  # two strokes a row, each within MNIST's widths


def test_a_bold_mnist_digit_is_not_thinned(monkeypatch):
    """MNIST's own strokes go up to 4.3 px in 95% of its digits (5.3 in 99%): a prepared digit
    made a pixel bolder is prepared as it would be with no thinning at all."""
    from PIL import ImageFilter

    from mnistlab.data import digit_image

    bold = Image.fromarray(as_mnist(seven(280, 0, 255))).filter(ImageFilter.MaxFilter(3))
    prepared = as_mnist(bold)
    monkeypatch.setattr(digit_image, "MAX_STROKE", float("inf"))
    assert np.array_equal(prepared, as_mnist(bold))


def slant(pixels: np.ndarray) -> float:
    """The ink's shear, x per y (mu11 / mu02): 0 for an upright stroke."""
    ys, xs = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
    w = pixels.astype(float) / pixels.sum()
    cy, cx = (w * ys).sum(), (w * xs).sum()
    return (w * (xs - cx) * (ys - cy)).sum() / (w * (ys - cy) ** 2).sum()


def test_a_leaning_digit_on_a_page_is_set_upright_and_an_mnist_digit_keeps_its_slant():
    """A 1 leaning 14 degrees (italic type, handwriting) on a large picture comes out upright;
    a digit already within MNIST's box, as MNIST's own, keeps its lean."""
    page = Image.new("L", (600, 600), 255)
    ImageDraw.Draw(page).polygon([(330, 100), (370, 100), (270, 500), (230, 500)], fill=0)
    assert slant(255 - np.asarray(page)) < -0.2  # leaning right: x falls as y (down) grows
    assert abs(slant(as_mnist(page))) < 0.03
    small = Image.fromarray(255 - np.asarray(page.resize((24, 24), Image.Resampling.BOX)))
    small = small.crop((2, 2, 22, 22))  # 20x20, light on black, as MNIST's
    assert slant(as_mnist(small)) < -0.2

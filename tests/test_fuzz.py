"""Property tests on what users type and the files they feed in (Hypothesis, a fixed seed and
example budget): a command line either runs or is refused in one line, exit 2; every input file
of predict is one row (or, for an IDX file, one per image), whatever its bytes."""

import io
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnistlab.classify.predict import images
from mnistlab.data.mnist import MNISTDataModule
from mnistlab.lab import UserError
from mnistlab.lab.cli import prepare
from mnistlab.lab.resume import NothingToDo

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
COUNTS: dict[str, int] = {}

KEYS = ["trainer.max_epochs", "trainer.devices", "trainer.precision", "data.batch_size",
        "data.image_size", "data.classes", "data.mean", "model.optimizer.lr", "model.net.hidden",
        "model.net.channels", "seed", "resume", "ckpt_path", "report_metrics", "paths.log_dir",
        "data", "model/net", "trainer", "experiment", "logger", "callbacks", "debug",
        "hparams_search", "hydra.run.dir", "hydra.sweeper.n_trials", "log_hparams.lr"]  # fmt: skip
ODD = ["null", "true", "[1,2", "{a:", "${oops}", "${len:}", "${data.nope}", "1e309", "-0", "nan",
       "choice(1,2)", "range(0,3)", "interval(0,1)", "'unclosed", '"', "\\", "[]", "{}", ",",
       "=", "ünïcødé", "🚀", "\x00", " ", "a b", "${oc.env:HOME}", "99999999999999999999999"]  # fmt: skip
values = st.one_of(
    st.sampled_from(ODD),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=15))
arguments = st.one_of(
    st.tuples(st.sampled_from(["", "+", "++", "~"]), keys, values).map(lambda t: f"{t[0]}{t[1]}={t[2]}"),
    st.text(max_size=20),
    st.sampled_from(["-m", "--cfg", "job", "--nope", "-c", "--info", "--multirun"]),
)  # fmt: skip


@pytest.mark.slow  # 12-27 s of training or fuzzing: the fast tier stays near 3 minutes
@settings(FUZZ, max_examples=300)
@given(st.lists(arguments, max_size=4))
def test_a_command_line_runs_or_is_refused_in_one_line(tmp_path_factory, argv):
    COUNTS["command lines"] = COUNTS.get("command lines", 0) + 1
    try:
        settled = prepare(argv, "train")
    except (UserError, NothingToDo) as e:
        message = str(e)
        assert message.strip() and "\n" not in message.strip(), message
    except SystemExit as e:  # --version prints and ends
        assert e.code in (0, None), argv
    else:
        assert isinstance(settled, list)


def _png(size=(28, 28), mode="L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 128).save(out, "PNG")
    return out.getvalue()


def _idx(shape, data: bytes) -> bytes:
    return struct.pack(f">BBBB{len(shape)}I", 0, 0, 8, len(shape), *shape) + data


files = st.one_of(
    st.tuples(st.just(".png"), st.binary(max_size=300)),
    st.tuples(st.sampled_from([".png", ".jpg", ".bmp", ".webp"]),
              st.integers(0, len(_png()) - 1).map(lambda n: _png()[:n])),  # cut short
    st.tuples(st.just(".png"), st.tuples(st.integers(1, 40), st.integers(1, 40),
              st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "LA"])).map(
              lambda t: _png(t[:2], t[2]))),  # any size and mode
    st.tuples(st.just("-idx3-ubyte"), st.binary(max_size=64)),
    st.tuples(st.just("-idx3-ubyte"), st.tuples(
        st.lists(st.integers(0, 2**32 - 1), max_size=4), st.binary(max_size=64)).map(
        lambda t: _idx(t[0], t[1]))),  # huge or odd declared sizes
    st.tuples(st.just("-idx3-ubyte"), st.tuples(st.integers(0, 3), st.integers(1, 9),
              st.integers(1, 9)).map(lambda t: _idx(t, bytes(t[0] * t[1] * t[2]))),  # valid
    ),
)  # fmt: skip


@settings(FUZZ, max_examples=150)
@given(st.lists(files, min_size=1, max_size=4))
def test_every_input_file_is_its_own_row_whatever_its_bytes(tmp_path_factory, given_files):
    COUNTS["input files"] = COUNTS.get("input files", 0) + len(given_files)
    folder = tmp_path_factory.mktemp("inputs")
    paths = []
    for i, (suffix, data) in enumerate(given_files):
        paths.append(folder / f"f{i}{suffix}")
        paths[-1].write_bytes(data)
    rows = list(images(paths, MNISTDataModule().prepare_image))
    for path in paths:
        mine = [r for r in rows if r[0] == str(path) or r[0].startswith(f"{path}#")]
        assert mine or "idx3" in path.name, path  # an IDX file of 0 images has no rows
        for _, pixels, error in mine:
            assert (pixels is None) == bool(error)
            assert pixels is None or (pixels.shape == (1, 28, 28) and pixels.dtype == np.uint8)
            assert "\n" not in error


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\nfuzz: generated cases per target: {COUNTS}")

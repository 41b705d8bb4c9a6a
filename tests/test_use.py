"""Using a trained run: eval as it was trained, predict on image files, export with parity."""

import csv
import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_train, missing, need_modules
from hydra.utils import instantiate
from PIL import Image
from runner import cli_env, trained

from mnistlab.classify import predict
from mnistlab.data.idx import decode_idx
from mnistlab.data.mnist import MNISTDataModule
from mnistlab.lab import eval as evaluation
from mnistlab.lab import export

TRAINED_WITH = [  # not the defaults: another experiment, another width
    "experiment=two_conv",
    "data.prepare=fit",  # the synthetic shapes fill the field: they are not digits made as MNIST's
    "model.net.hidden=64",
    "trainer.max_epochs=5",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "trainer.limit_test_batches=null",
    "data.batch_size=32",
]


pytestmark = pytest.mark.usefixtures("fresh_logging")


@pytest.fixture(scope="module")
def run(synthetic_mnist, tmp_path_factory):
    return trained(synthetic_mnist, tmp_path_factory.mktemp("trained") / "run", *TRAINED_WITH)


def trained_test_acc(run) -> float:
    return json.loads((run / "results.json").read_text())["metrics"]["test/acc"]


def last_metrics(capsys) -> dict[str, float]:
    line = capsys.readouterr().out.strip().splitlines()[-1]
    words = line.split()
    return {words[i]: float(words[i + 1]) for i in range(0, len(words), 2)}


def test_eval_with_no_overrides_reproduces_the_run_s_test_accuracy(run, capsys):
    assert evaluation.main([f"run={run}"]) == 0
    assert last_metrics(capsys)["test/acc"] == round(trained_test_acc(run), 4)
    (record,) = [json.loads(p.read_text())  # in the run's paths.log_dir: here, the tmp folder
                 for p in sorted((run.parent / "eval" / "runs").glob("*/metrics.json"))[:1]]  # fmt: skip
    assert record["metrics"]["test/acc"] == trained_test_acc(run)  # every digit
    assert record["run"] == str(run) and "epoch" in record["checkpoint"]


def test_eval_from_a_checkpoint_alone_and_with_overrides(run, capsys):
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    assert evaluation.main([f"ckpt={best}", "data.eval_batch_size=7", "trainer=cpu"]) == 0
    assert last_metrics(capsys)["test/acc"] == round(trained_test_acc(run), 4)
    assert evaluation.main([f"run={run}", "which=last"]) == 0
    capsys.readouterr()
    assert evaluation.main([f"run={run}", "trainer.limit_test_batches=2"]) == 0  # a debug setting
    assert "trainer.limit_test_batches=2: part of the test set is scored; add" in (
        capsys.readouterr().err
    )
    assert evaluation.main([f"run={run}", "model.net.hiden=3"]) == 2
    assert "did you mean model.net.hidden?" in capsys.readouterr().err


@pytest.fixture(scope="module")
def images(synthetic_mnist, tmp_path_factory):
    """PNGs from the synthetic test IDX: as stored, inverted (dark on light), a colour JPEG, an odd
    size; and a file that is not an image. Returns the folder and the true labels by name."""
    folder = tmp_path_factory.mktemp("images")
    pixels = decode_idx(synthetic_mnist.files["t10k-images-idx3-ubyte"])[:40]
    labels = decode_idx(synthetic_mnist.files["t10k-labels-idx1-ubyte"])[:40]
    truth = {}
    for i, (img, label) in enumerate(zip(pixels, labels, strict=True)):
        kind = ("plain", "inverted", "colour", "odd")[i % 4]
        image = Image.fromarray(255 - img if kind in ("inverted", "colour") else img)
        if kind == "colour":  # dark blue ink on a warm paper colour
            rgb = np.stack([np.asarray(image) * f for f in (0.95, 0.9, 1.0)], axis=-1)
            image = Image.fromarray(rgb.astype(np.uint8), "RGB")
        if kind == "odd":
            image = image.resize((84, 84), Image.Resampling.BILINEAR)
        name = f"{i:03d}_{kind}.{'jpg' if kind == 'colour' else 'png'}"
        image.save(folder / name, quality=95)
        truth[str(folder / name)] = int(label)
    (folder / "zzz_broken.png").write_bytes(b"not an image at all")
    return folder, truth


def test_a_path_near_a_run_is_refused_with_the_run_or_checkpoint_meant(run, capsys):
    """run= a folder inside the run, a checkpoint file or a folder of runs; ckpt= a folder: each
    ends in one line naming what to give instead."""
    cases = {
        f"run={run / 'checkpoints'}": f"a folder inside a run; name the run itself: run={run}",
        f"run={run / 'checkpoints' / 'last.ckpt'}": "a checkpoint is named with ckpt= (CKPT=)",
        f"run={run.parent}": f"finished run(s); name one, e.g. the newest: run={run}",
        f"ckpt={run / 'checkpoints'}": "a folder; name a checkpoint file in it (epoch",
    }
    for given, said in cases.items():
        assert evaluation.main([given]) == 2
        assert said in capsys.readouterr().err, given


@pytest.mark.parametrize("output", ["preds.csv", "preds.json"])
def test_predict_images_in_order_with_probabilities_and_errors(run, images, tmp_path, output):
    folder, truth = images
    out = tmp_path / output
    assert predict.main([f"input={folder}", f"run={run}", f"output={out}"]) == 1  # one unreadable
    if output.endswith(".csv"):
        rows = list(csv.DictReader(out.open()))
    else:
        rows = [{**r, "class": r["class"] or ""} for r in json.loads(out.read_text())]
    assert [r["file"] for r in rows] == [*truth, str(folder / "zzz_broken.png")]
    assert rows[-1]["class"] == "" and "cannot read" in rows[-1]["error"]
    right = {kind: [] for kind in ("plain", "inverted", "colour", "odd")}
    for r in rows[:-1]:
        right[r["file"].rsplit("_", 1)[1].split(".")[0]].append(int(r["class"]) == truth[r["file"]])
        assert r["error"] == "" and len(r["top"]) > 0
    accuracy = {kind: sum(v) / len(v) for kind, v in right.items()}
    assert all(a >= 0.6 for a in accuracy.values()), accuracy  # chance is 0.1


def test_predict_saves_what_the_model_saw_and_refuses_an_unknown_preparation(run, images,
                                                                             tmp_path, capsys):  # fmt: skip
    folder, truth = images
    seen = tmp_path / "seen"
    args = [f"input={folder}", f"run={run}", f"save_prepared={seen}", "prepare=fit"]
    assert predict.main(args) == 1  # the unreadable file: its row, no picture
    files = sorted(seen.iterdir())
    assert len(files) == len(truth) and files[0].name == "00000_000_plain.png"
    assert all(Image.open(f).size == (28, 28) for f in files)
    capsys.readouterr()
    assert predict.main([f"input={folder}", f"run={run}", "prepare=crop"]) == 2
    err = capsys.readouterr().err
    assert "prepare=crop: choose mnist, fit" in err and "Model:" not in err  # before loading

    pictures = tmp_path / "pictures"  # a blank page among digits: no class to give it
    pictures.mkdir()
    Image.new("L", (300, 200), 255).save(pictures / "blank.png")
    Image.open(next(iter(truth))).save(pictures / "digit.png")
    out = tmp_path / "blank.json"
    assert predict.main([f"input={pictures}", f"run={run}", f"output={out}"]) == 1
    blank, digit = json.loads(out.read_text())
    assert blank["class"] is None and blank["error"] == "blank picture: no ink found to classify"
    assert digit["class"] is not None and digit["error"] == ""


def test_predict_an_idx_file_matches_the_test_set(run, synthetic_mnist, capsys):
    idx = synthetic_mnist.raw / "t10k-images-idx3-ubyte"
    assert predict.main([f"input={idx}", f"run={run}"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["file", "class", "prob", "top"] and len(table) == 1 + 200
    assert table[1].startswith(f"{idx}#0 ")
    digits = np.array([int(line.split()[1]) for line in table[1:]])
    labels = decode_idx(synthetic_mnist.files["t10k-labels-idx1-ubyte"])
    assert (digits == labels).mean() == pytest.approx(trained_test_acc(run), abs=1e-6)


def test_dark_on_light_is_detected_and_can_be_forced():
    to_mnist = MNISTDataModule(prepare="fit").prepare_image
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, 8:20, 12:16] = 255
    drawn = Image.fromarray(255 - digit[0])
    assert np.array_equal(to_mnist(drawn), digit)  # auto: inverted back
    assert np.array_equal(to_mnist(drawn, "false"), 255 - digit)
    assert np.array_equal(to_mnist(Image.fromarray(digit[0]), "true"), 255 - digit)
    wide = to_mnist(Image.fromarray(np.full((10, 40), 255, np.uint8)), "false")[0]
    assert wide.shape == (28, 28) and wide[:10].max() == 0 and wide[14].min() == 255  # padded


def test_export_round_trip_and_parity(run, synthetic_mnist, capsys):
    assert export.main([f"run={run}"]) == 0
    output, err = capsys.readouterr()
    assert (
        "PassManager" not in err and "constant folding" not in err
    )  # the ONNX optimizer's chatter
    folder = run / "checkpoints"
    assert (folder / "model.safetensors").is_file() and (folder / "model.json").is_file()
    assert "safetensors 0.00e+00" in output  # bitwise
    need_modules("onnx", "onnxruntime", install="make install-export")  # the ONNX part
    gap = float(output.split("onnx ")[-1].split()[0])
    assert (folder / "model.onnx").is_file() and gap <= 1e-5


def test_exported_model_loads_without_lightning_or_hydra(run, synthetic_mnist):
    if not (run / "checkpoints" / "model.json").is_file():
        export.main([f"run={run}"])
    code = (
        "import sys, torch\n"
        "sys.modules.update(lightning=None, hydra=None, omegaconf=None)  # importing them fails\n"
        "from mnistlab.lab.export import load_exported\n"
        f"model = load_exported({str(run / 'checkpoints')!r})\n"
        "print(model(torch.zeros(3, 1, 28, 28, dtype=torch.uint8)).shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "torch.Size([3, 10])"


def test_compiled_networks_keep_their_weight_names(tiny_cfg):
    plain = instantiate(compose_train([]).model)
    compiled = instantiate(compose_train(["model.compile=true"]).model)
    assert list(compiled.state_dict()) == list(plain.state_dict())  # compiled in place


def test_every_broken_input_is_its_own_row_and_the_good_ones_are_predicted(
    run, tmp_path, monkeypatch, capsys
):
    """A bomb (past PIL's pixel limit), a truncated PNG, a zero-byte file, an IDX file with a
    short header and two good images: six rows, two predictions, exit 1."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = Image.fromarray(np.zeros((28, 28), np.uint8))
    good.save(folder / "a_good.png")
    good.save(folder / "b_good.png")
    Image.new("L", (300, 300)).save(folder / "c_bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # c_bomb.png: 90,000 pixels
    (folder / "d_truncated.png").write_bytes((folder / "a_good.png").read_bytes()[:40])
    (folder / "e_empty.png").write_bytes(b"")
    (folder / "f-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03\0\0")  # 3 dimensions, 2 bytes
    assert predict.main([f"input={folder}", f"run={run}"]) == 1
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 6
    predicted = [r for r in rows if "cannot read" not in r and "IDX" not in r]
    assert [r.split()[0].rsplit("/", 1)[1] for r in predicted] == ["a_good.png", "b_good.png"]
    assert "exceeds limit" in rows[2] and "header cut short" in rows[5]


def _copied_checkpoint(run, folder, edit=lambda hp: None):
    """The run's best checkpoint as a lone file in `folder` (no sidecar, no run folder), its
    stored config changed by `edit`."""
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    checkpoint = torch.load(best, weights_only=True)
    edit(checkpoint["hyper_parameters"])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, folder / "copied.ckpt")
    return folder / "copied.ckpt"


def test_parts_of_a_restored_config_that_are_not_built_are_not_imported_either(run, tmp_path):
    def plant(hp):
        hp["callbacks"]["evil"] = {"_target_": "no_such_module_anywhere.Evil"}

    ckpt = _copied_checkpoint(run, tmp_path, plant)
    assert predict.main([f"input={ckpt}", f"ckpt={ckpt}"]) == 1  # the ckpt is no image: its row


def test_a_lone_checkpoint_from_another_machine_works_here(run, synthetic_mnist, tmp_path):
    """Its stored paths name the training machine's project: they become this project's (eval
    would write into its logs/), and nothing is created under the old paths."""
    from mnistlab.lab.checkpoint import load
    from mnistlab.lab.config import ROOT
    from mnistlab.lab.rebuild import run_config

    there = tmp_path / "their_machine" / "project"

    def moved(hp):
        old = hp["paths"]["root_dir"]
        hp["paths"] = {k: v.replace(old, str(there)) for k, v in hp["paths"].items()}

    ckpt = _copied_checkpoint(run, tmp_path / "downloads", moved)
    cfg = run_config(None, load(ckpt, require_checksum=False), ckpt, [], "eval")
    assert Path(cfg.paths.output_dir).parent == ROOT / "logs" / "eval" / "runs"
    logs = f"paths.log_dir={tmp_path / 'logs'}"  # this test writes nothing into the checkout
    idx = synthetic_mnist.raw / "t10k-images-idx3-ubyte"
    assert evaluation.main([f"ckpt={ckpt}", logs]) == 0
    assert predict.main([f"input={idx}", f"ckpt={ckpt}"]) == 0
    assert export.main([f"ckpt={ckpt}"]) == 0
    (new,) = (tmp_path / "logs" / "eval" / "runs").glob("*/metrics.json")
    assert json.loads(new.read_text())["checkpoint"] == str(ckpt)
    assert (tmp_path / "downloads" / "model.safetensors").is_file()  # beside the checkpoint
    assert not (tmp_path / "their_machine").exists()


@pytest.mark.slow  # 12-27 s of training or fuzzing: the fast tier stays near 3 minutes
def test_predict_on_a_real_decompression_bomb_stays_in_bounded_memory(run, tmp_path):
    """A 20,000 x 20,000 PNG (400 MB of pixels, 0.4 MB on disk) among broken and good files,
    through the real command: six rows, two predictions, exit 1, peak memory under 1,152 MiB
    (about 800 MiB here; decoding the bomb would add 400)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    stroke = np.zeros((28, 28), np.uint8)
    stroke[6:22, 12:16] = 255  # a "1": a blank page would have no class to give (its own row)
    Image.fromarray(stroke).save(folder / "a_good.png")
    Image.fromarray(255 - stroke).save(folder / "b_good.png")
    Image.new("L", (20_000, 20_000)).save(folder / "c_bomb.png")
    (folder / "d_truncated.png").write_bytes((folder / "a_good.png").read_bytes()[:40])
    (folder / "e_empty.png").write_bytes(b"")
    (folder / "f-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03\0\0")
    # The command, reporting its own peak memory as it ends: VmHWM, its memory's high-water
    # mark since it started. (getrusage's ru_maxrss also counts what the forking test process
    # held: 1.6 GiB in a busy pytest worker, whatever predict does.)
    measured = (
        "import runpy, sys\n"
        "try:\n    runpy.run_module('mnistlab.classify.predict', run_name='__main__')\n"
        "finally:\n    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        "    print('peak', hwm[0].split()[1], file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", measured, f"input={folder}", f"run={run}"],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    peak_mib = int(proc.stderr.rsplit("peak ", 1)[1].split()[0]) / 1024
    rows = proc.stdout.splitlines()[1:]
    assert proc.returncode == 1 and len(rows) == 6, proc.stderr[-2000:]
    assert sum(" - " not in r for r in rows) == 2 and "decompression bomb" in rows[2]
    print(f"predict peak RSS: {peak_mib:.0f} MiB")
    assert peak_mib < 1152


@pytest.fixture(scope="module")
def wild_set(tmp_path_factory):
    """A small digits-in-the-wild set: a regular font of the dev split and a bold one of the
    held-out split, one typed and two pen-drawn pictures a digit, and the bold and heavy part."""
    from mnistlab.classify.wild_set import generate

    base = tmp_path_factory.mktemp("wild")
    fonts, folder = base / "fonts", base / "set"
    fonts.mkdir()
    for name in ("DejaVuSans.ttf", "LiberationSans-Bold.ttf"):
        for found in sorted(Path("/usr/share/fonts").rglob(name))[:1]:
            shutil.copy(found, fonts)  # else: Pillow's own font alone
    generate(folder, seed=5, fonts_dir=fonts, per_font=1, pen_per_digit=2, heavy_per_font=1)
    return folder


def test_the_wild_set_is_seeded_labelled_and_described(wild_set, tmp_path):
    from mnistlab.classify.wild import CONDITIONS
    from mnistlab.classify.wild_set import generate

    again = tmp_path / "again"
    generate(again, seed=5, fonts_dir=wild_set.parent / "fonts", per_font=1, pen_per_digit=2,
             heavy_per_font=1)  # fmt: skip
    assert (again / "labels.csv").read_bytes() == (wild_set / "labels.csv").read_bytes()
    rows = list(csv.DictReader((wild_set / "labels.csv").open()))
    assert all(
        (again / r["file"]).read_bytes() == (wild_set / r["file"]).read_bytes() for r in rows
    )
    assert sorted({int(r["label"]) for r in rows}) == list(range(10))
    assert {r["source"] for r in rows} >= {"pen", "font:pillow-default"}
    assert set(rows[0]) == {"file", "label", *CONDITIONS}
    fonts = {p.stem for p in (wild_set.parent / "fonts").iterdir()}
    if fonts == {"DejaVuSans", "LiberationSans-Bold"}:  # the machine has both
        heavy = [r for r in rows if r["source"].startswith("heavy:")]
        assert {(r["source"], r["weight"], r["split"]) for r in heavy} == {
            ("heavy:DejaVuSans", "heavy", "dev"),
            ("heavy:LiberationSans-Bold", "bold", "held-out"),
            ("heavy:LiberationSans-Bold", "heavy", "held-out"),
        }
        assert {r["weight"] for r in rows if r["source"] == "font:LiberationSans-Bold"} == {"bold"}


def test_heavy_type_nearly_closes_the_holes_and_a_family_is_held_out_by_its_name():
    """Thickened type keeps 15-45% of its hole's radius (a 0 still a 0, barely); a family's
    split follows its name (width aside), whatever the machine."""
    import random

    from PIL import ImageFont

    from mnistlab.classify.wild_set import _counter, _heavier, _typed, family, held_out

    dejavu = sorted(Path("/usr/share/fonts").rglob("DejaVuSans.ttf"))
    font = ImageFont.truetype(str(dejavu[0]), 120) if dejavu else ImageFont.load_default(120)
    zero = _typed("0", font)
    radius = _counter(zero)
    assert radius > 10
    for seed in range(6):
        left = _counter(_heavier(zero, radius, random.Random(seed)))
        assert 0.1 * radius <= left <= 0.5 * radius, (seed, left, radius)
    assert family("LiberationSansNarrow-BoldItalic") == family("LiberationSans") == "LiberationSans"
    assert held_out("LiberationSans-Bold") == held_out("LiberationSansNarrow-Regular")
    assert {held_out(f) for f in ("DejaVuSans", "LiberationSans", "NimbusSans", "P052")} == {
        True, False}  # fmt: skip


def test_heavy_type_keeps_its_apertures_open():
    """A 3, 5, 6 or 9 grown heavy keeps the gaps between its strokes: no new hole (a 6 whose
    tail meets its loop is a blot, not a black 6), while its strokes still grow."""
    import random

    from PIL import ImageFont
    from scipy import ndimage

    from mnistlab.classify.wild_set import _counter, _heavier, _typed

    def holes(ink):
        mask = ink > 0.5
        labels, _ = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
        return int((np.bincount(labels.ravel())[1:] >= 6).sum())

    dejavu = sorted(Path("/usr/share/fonts").rglob("DejaVuSans.ttf"))
    if not dejavu:
        missing("DejaVuSans.ttf is not under /usr/share/fonts (apt-get install fonts-dejavu-core)")
    font = ImageFont.truetype(str(dejavu[0]), 120)
    zero = _counter(_typed("0", font))
    for digit in "3569":
        ink = _typed(digit, font)
        for seed in range(4):
            heavy = _heavier(ink, zero, random.Random(seed))
            assert holes(heavy) == holes(ink), (digit, seed)
            assert (heavy > 0.5).sum() > 1.3 * (ink > 0.5).sum(), (digit, seed)


@pytest.mark.slow  # two preparations of the set and a predict run: the fast tier stays near 3 min
def test_eval_wild_scores_each_condition_as_predict_does(run, wild_set, tmp_path, capsys):
    """`make eval-wild`: the all-pictures accuracy with MNIST's preparation is predict's on the
    same files; each condition's rows cover every picture once; the error grid is written, into
    output= when given (a new folder, made) and the run's wild/ is left alone."""
    from mnistlab.classify import predict, wild

    scores = tmp_path / "scores" / "seed5"
    assert wild.main([f"run={run}", f"data={wild_set}", "seed=5", f"output={scores}"]) == 0
    assert not (run / "wild").exists()
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((wild_set / "labels.csv").open()))
    out = run / "predicted.csv"
    assert predict.main([f"input={wild_set}", f"run={run}", f"output={out}", "prepare=mnist"]) in (
        0,
        1,
    )
    predicted = {Path(r["file"]).name: r["class"] for r in csv.DictReader(out.open())}
    right = sum(predicted[r["file"]] == r["label"] for r in rows)
    table = (scores / "accuracy.md").read_text()
    assert table == printed
    assert f"| all |  | {len(rows)} | {right / len(rows):.1%} ({right}) |" in table
    for condition in ("generator", *wild.CONDITIONS[1:]):
        counts = [int(line.split("|")[3]) for line in table.splitlines()
                  if line.startswith(f"| {condition} |")]  # fmt: skip
        assert sum(counts) == len(rows), condition
    assert Image.open(scores / "errors.png").format == "PNG"


def test_eval_wild_refuses_a_broken_set_in_one_line(run, wild_set, tmp_path, capsys):
    from mnistlab.classify import wild

    broken = tmp_path / "broken"
    shutil.copytree(wild_set, broken)
    next(broken.glob("*.png")).unlink()
    assert wild.main([f"run={run}", f"data={broken}", "seed=5"]) == 1  # the data: exit 1
    err = capsys.readouterr().err.strip()
    assert "missing" in err and "delete the folder to remake it" in err and "\n" not in err


def test_eval_wild_names_a_bad_option_a_bad_row_and_another_seed(run, wild_set, tmp_path, capsys):
    from mnistlab.classify import wild

    assert wild.main([f"run={run}", f"data={wild_set}", "sed=3"]) == 2  # a typo: refused
    assert "sed=3: not an option of eval-wild" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert wild.main([f"run={run}", f"data={wild_set}", f"output={tmp_path / 'a_file'}"]) == 2
    assert "a_file: a file; name a folder (made if need be)" in capsys.readouterr().err
    assert wild.main([f"run={run}", f"data={wild_set}", "seed=6"]) == 2
    assert "was made with seed 5" in capsys.readouterr().err
    broken = tmp_path / "badrow"
    shutil.copytree(wild_set, broken)
    lines = (broken / "labels.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",", ",X,", 1).split(",X,")[0] + ",X"  # a row cut short
    (broken / "labels.csv").write_text("\n".join(lines) + "\n")
    assert wild.main([f"run={run}", f"data={broken}", "seed=5"]) == 1  # the data, not the command
    err = capsys.readouterr().err.strip()
    assert "labels.csv line 4: expected a picture's file name, its digit 0-9" in err, err
    assert "\n" not in err
    older = tmp_path / "older"  # a set made before the bold and heavy part: named, remade
    shutil.copytree(wild_set, older)
    lines = (older / "labels.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [k for k, name in enumerate(header) if name not in ("weight", "face", "split")]
    (older / "labels.csv").write_text(
        "\n".join(",".join(line.split(",")[k] for k in keep) for line in lines) + "\n"
    )
    assert wild.main([f"run={run}", f"data={older}", "seed=5"]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a wild-set label file of this version (no face, split, weight)" in err, err
    assert "delete the folder to remake it" in err and "\n" not in err


def test_eval_wild_refuses_a_damaged_picture_a_repeated_row_and_someone_else_s_folder(
    run, wild_set, tmp_path, capsys
):
    """A picture of the set that cannot be read, a row listed twice or an unknown split are the
    set's damage, named (exit 1), not scored as wrong answers; a folder of one's own pictures
    without labels.csv is never filled with the set."""
    from mnistlab.classify import wild

    damaged = tmp_path / "damaged"
    shutil.copytree(wild_set, damaged)
    victim = sorted(damaged.glob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated
    assert wild.main([f"run={run}", f"data={damaged}", "seed=5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's line
    assert victim.name in err and "cannot be read" in err, err
    for change, said in ((lambda ls: [*ls, ls[5]], "a file listed twice"),
                         (lambda ls: [ls[0], ls[1].replace(",dev,", ",devv,").replace(
                             ",held-out,", ",devv,"), *ls[2:]], "split 'devv'")):  # fmt: skip
        edited = tmp_path / said.replace(" ", "_").replace("'", "")
        shutil.copytree(wild_set, edited)
        lines = (edited / "labels.csv").read_text().splitlines()
        (edited / "labels.csv").write_text("\n".join(change(lines)) + "\n")
        assert wild.main([f"run={run}", f"data={edited}", "seed=5"]) == 1
        err = capsys.readouterr().err.strip()
        assert said in err and "\n" not in err, err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.png").write_bytes(b"mine")
    assert wild.main([f"run={run}", f"data={mine}", "seed=5"]) == 2
    assert "no labels.csv, so not a wild set" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["a.png"]


def _full_disk(monkeypatch):
    """Every file written whole (`mnistlab.lab.files.atomic_write`) fails as on a full disk."""

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mnistlab.lab.files.os.fsync", full)


def test_a_full_disk_ends_eval_predict_and_export_in_one_line_and_keeps_their_files(
    run, images, tmp_path, monkeypatch, capsys
):
    from mnistlab.lab import export

    folder, _ = images
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    kept = {p: p.read_bytes() for p in (run / "checkpoints").iterdir() if p.is_file()}
    out = tmp_path / "rows.csv"
    out.write_text("earlier rows\n")
    _full_disk(monkeypatch)
    for command, args, named in [
        (evaluation, [f"run={run}"], "metrics.json"),
        (predict, [f"input={folder}", f"run={run}", f"output={out}"], str(out)),
        (export, [f"ckpt={best}"], str(run / "checkpoints")),
    ]:
        assert command.main(args) == 1, command
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert named in err and "No space left on device" in err, err
    assert out.read_text() == "earlier rows\n"
    assert {p: p.read_bytes() for p in (run / "checkpoints").iterdir() if p.is_file()} == kept


def test_predict_checks_its_output_before_predicting(run, images, tmp_path, capsys):
    folder, truth = images
    (tmp_path / "a_file").write_text("")
    for output, message in [
        (tmp_path / "a_file" / "rows.csv", "a_file is a file, not a folder"),
        (tmp_path / "rows.txt", "name a .csv or .json file"),
        (tmp_path, "a folder"),
    ]:
        assert predict.main([f"input={folder}", f"run={run}", f"output={output}"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "image(s) in" not in err, err
    made = tmp_path / "new" / "folders" / "rows.json"  # made, as eval-wild's output= is
    assert predict.main([f"input={folder}", f"run={run}", f"output={made}"]) == 1  # one unreadable
    assert len(json.loads(made.read_text())) == len(truth) + 1
    assert f"{len(truth) + 1} row(s) written to {made}" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_a_fault_of_the_file_exit_1(run, images, tmp_path, capsys):
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    damaged = tmp_path / best.name
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    folder, _ = images
    for command, args in ((evaluation, []), (predict, [f"input={folder}"])):
        assert command.main([f"ckpt={damaged}", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert str(damaged) in err and "\n" not in err, err
    # In a copy of the run: its last.ckpt is named as what to use instead.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / best.name).write_bytes(bytes(data))
    assert evaluation.main([f"run={copy}"]) == 1
    assert "another of its folder may be intact (last.ckpt): which=last" in capsys.readouterr().err
    assert evaluation.main([f"run={copy}", "which=last"]) == 0

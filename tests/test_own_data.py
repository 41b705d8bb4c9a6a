"""Bring your own data: a folder of colour images of 5 named classes, of mixed sizes and formats,
one of them unreadable, through every feature of the template by its real command lines."""

import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHAPES, write_image_folder
from PIL import Image
from runner import cli_env, run_cli, start_cli, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.classify import predict
from mnistlab.classify.pictures import CELL, FONT_PX, confusion_image
from mnistlab.lab import UserError, export
from mnistlab.lab import eval as evaluation

N_TEST = 5 * 16
SIZE = 24  # neither MNIST's 28 nor the config's default 32


def args_for(root: Path, log_dir: Path, *overrides: str) -> list[str]:
    return [
        "data=image_folder",
        f"data.root={root}",
        f"data.image_size={SIZE}",
        "data.on_bad_image=skip",
        "data.batch_size=32",
        f"paths.log_dir={log_dir}",
        "trainer=cpu",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        *overrides,
    ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = write_image_folder(tmp_path_factory.mktemp("own") / "shapes")
    (root / "train" / "ring" / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("own_logs")
    proc = run_cli(*args_for(folder, log_dir, "callbacks.dashboard.graph=true"), cwd=log_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Skipping 1 undecodable file(s)" in proc.stderr and "broken.png" in proc.stderr
    (run,) = (log_dir / "train" / "runs").iterdir()
    return run


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())["metrics"]


def test_training_learns_the_classes_and_tests_every_test_image(run):
    metrics = results(run)
    assert metrics["test/acc"] >= 0.9  # chance is 0.2
    assert metrics["test/images"] == N_TEST
    config = (run / ".hydra" / "config.yaml").read_text()
    assert "image_folder" in config
    spec = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["input_spec"]
    assert (spec["channels"], spec["height"], spec["width"]) == (3, SIZE, SIZE)
    assert spec["classes"] == sorted(SHAPES) and len(spec["mean"]) == 3


def test_eval_reproduces_the_test_accuracy_exactly(run, capsys):
    assert evaluation.main([f"run={run}"]) == 0
    assert f"test/images {N_TEST}" in capsys.readouterr().out
    (record,) = [json.loads(p.read_text()) for p in run.parent.parent.parent.rglob("metrics.json")]
    assert record["metrics"]["test/acc"] == results(run)["test/acc"]


def test_predict_names_the_classes(run, folder, tmp_path, capsys):
    """A folder of class sub-folders is labelled: predict prints its accuracy, the scores per
    class and the confusion matrix, from the same rows it writes."""
    out = tmp_path / "preds.csv"
    assert predict.main([f"input={folder / 'test'}", f"run={run}", f"output={out}"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == N_TEST
    truth = [Path(r["file"]).parent.name for r in rows]
    right = sum(r["class"] == t for r, t in zip(rows, truth, strict=True))
    assert right >= 0.9 * N_TEST
    printed = capsys.readouterr().out
    assert f"Labelled by folder: accuracy {right / N_TEST:.4f} ({right} of {N_TEST})" in printed
    assert "confusion matrix (true rows, predicted columns)" in printed
    assert all(f"| {name}" in printed for name in SHAPES)
    # The run's own test, per class, in results.json: every test image counted once.
    per_class = json.loads((run / "results.json").read_text())["per_class"]
    assert sorted(per_class) == sorted(SHAPES)
    assert sum(row["support"] for row in per_class.values()) == N_TEST
    assert all(0 <= row["f1"] <= 1 for row in per_class.values())
    assert all(name.split(":")[0] in SHAPES for r in rows for name in r["top"].split())


def test_export_has_the_input_shape_and_class_names_with_parity(run, capsys):
    assert export.main([f"run={run}"]) == 0
    output = capsys.readouterr().out
    described = json.loads((run / "checkpoints" / "model.json").read_text())
    assert described["input"]["shape"] == [3, SIZE, SIZE] and described["input"]["mode"] == "RGB"
    assert described["classes"] == sorted(SHAPES)
    assert "safetensors 0.00e+00" in output
    if "onnx " in output:  # the export extras (CI installs them)
        assert float(output.split("onnx ")[-1].split()[0]) <= 1e-5
        import onnx

        dims = onnx.load(str(run / "checkpoints" / "model.onnx")).graph.input[0].type.tensor_type
        assert [d.dim_value for d in dims.shape.dim][1:] == [3, SIZE, SIZE]


def test_the_dashboard_draws_colour_images_and_a_5_by_5_matrix(run):
    events = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0}).Reload()
    (grid,) = events.Images("val/predictions")[-1:]
    picture = Image.open(__import__("io").BytesIO(grid.encoded_image_string))
    # The default sample of 16 of the 20 val images, 4 a row, each with its caption below (on
    # two lines when the class names make it wider than the cell).
    line = FONT_PX + 5
    assert picture.mode == "RGB" and picture.size[0] == 4 * CELL
    assert picture.size[1] in (4 * (CELL + line), 4 * (CELL + 2 * line)), picture.size
    pixels = np.asarray(picture)
    assert (np.abs(pixels[..., 0].astype(int) - pixels[..., 2]) > 30).any()  # in colour
    (matrix,) = events.Images("test/confusion_matrix")[-1:]
    drawn = Image.open(__import__("io").BytesIO(matrix.encoded_image_string))
    expected = confusion_image(torch.zeros(5, 5, dtype=torch.long), sorted(SHAPES))
    assert drawn.size == (expected.shape[1], expected.shape[0])
    (table,) = events.Tensors("test/confusion_matrix/text_summary")[-1:]
    lines = table.tensor_proto.string_val[0].decode().splitlines()
    assert lines[0].strip("| ").split(" | ")[1:] == sorted(SHAPES)
    counts = [[int(v) for v in line.strip("| ").split(" | ")[1:]] for line in lines[2:]]
    assert len(counts) == 5 and all(len(row) == 5 for row in counts)
    assert sum(map(sum, counts)) == N_TEST
    correct = sum(counts[i][i] for i in range(5))  # the diagonal: what test/acc counted
    assert abs(correct / N_TEST - results(run)["test/acc"]) < 1e-6
    assert events.Graph() is not None  # the network traced with a (1, 3, 24, 24) input


def test_a_data_override_the_network_cannot_take_is_refused_at_eval(run, capsys):
    assert evaluation.main([f"run={run}", "data.image_size=48"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.image_size=48" in err and f"3x{SIZE}x{SIZE}" in err


def test_the_cache_is_reused_rebuilt_when_the_folder_changes_and_when_damaged(tmp_path, caplog):
    from mnistlab.data.image_folder import ImageFolderDataModule

    caplog.set_level(logging.INFO)  # whatever an earlier test left the root logger at
    root = write_image_folder(tmp_path / "f", n_train=6, n_test=2)

    def setup():
        dm = ImageFolderDataModule(root, sorted(SHAPES), image_size=16, val_size=5)
        dm.prepare_data()
        dm.setup()
        return dm

    first = setup()
    caches = sorted((root / ".cache").glob("*.npy"))
    assert len(caches) == 2  # train and test
    caplog.clear()
    again = setup()
    assert "Decoding" not in caplog.text  # from the cache
    assert torch.equal(again.train_set.images, first.train_set.images)
    assert first.spec.mean == again.spec.mean and len(first.spec.mean) == 3
    Image.new("RGB", (30, 30), "red").save(root / "train" / "ring" / "new.png")
    caplog.clear()
    assert len(setup().train_set) == len(first.train_set) + 1 and "Decoding" in caplog.text
    (newest,) = (root / ".cache").glob("train-*.npy")  # the cache of the old folder is gone
    with open(newest, "r+b") as f:  # one flipped byte in the images
        f.seek(-1, 2)
        last = f.read(1)[0]
        f.seek(-1, 2)
        f.write(bytes([last ^ 0xFF]))
    caplog.clear()
    setup()
    assert "Damaged cache" in caplog.text and "Decoding" in caplog.text


def test_the_cache_sees_a_file_replaced_behind_its_back_and_edited_labels(tmp_path, caplog):
    """Images of one class replaced by another's of the same byte size, their modification time
    set back (`touch -r`): decoded anew. The labels edited in the cache's record: damaged."""
    from mnistlab.data.image_folder import ImageFolderDataModule

    caplog.set_level(logging.INFO)
    root = tmp_path / "f"
    for split, shade in (("train", 0), ("test", 0)):
        for name, value in (("dark", 20), ("light", 235)):
            (root / split / name).mkdir(parents=True)
            for i in range(4):  # BMP: the same size in bytes whatever the pixels
                Image.new("L", (8, 8), value + shade + i).save(root / split / name / f"{i}.bmp")

    def test_pixels():
        dm = ImageFolderDataModule(root, image_size=8, channels=1, val_size=2)
        dm.prepare_data()
        dm.setup("test")
        return dm.test_set.images.float().mean(dim=(1, 2, 3)), dm.test_set.labels

    before, labels = test_pixels()
    assert (before[labels == 0] < 100).all()
    for i in range(4):  # the dark test images become light ones, mtime and size as they were
        dark, light = root / "test" / "dark" / f"{i}.bmp", root / "test" / "light" / f"{i}.bmp"
        st = dark.stat()
        dark.write_bytes(light.read_bytes())
        os.utime(dark, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert dark.stat().st_size == st.st_size and dark.stat().st_mtime_ns == st.st_mtime_ns
    caplog.clear()
    after, labels = test_pixels()
    assert "Decoding 8 images" in caplog.text and (after[labels == 0] > 200).all()
    (record,) = (root / ".cache").glob("test-*.json")
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "labels": [1 - y for y in meta["labels"]]}))
    caplog.clear()
    _, again = test_pixels()
    assert "Damaged cache" in caplog.text and torch.equal(again, labels)


BAD_INPUTS = {
    "no root": (lambda root: root / "missing", "no such folder"),
    "no train/": (lambda root: (shutil.rmtree(root / "train"), root)[1], "train: no such folder"),
    "an empty class folder": (
        lambda root: ([p.unlink() for p in (root / "test" / "ring").iterdir()], root)[1],
        "ring: no images",
    ),
    "other classes in test/": (
        lambda root: ((root / "test" / "ring").rename(root / "test" / "circle"), root)[1],
        "every split needs the same class folders",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_folders_end_in_one_line_naming_the_path_and_leave_nothing(case, tmp_path):
    root = write_image_folder(tmp_path / "f", n_train=2, n_test=2)
    breaks, expected = BAD_INPUTS[case]
    given = breaks(root)
    proc = run_cli(*args_for(given, tmp_path / "logs"), cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert any(expected in line and str(given.name) in line for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in lines if "error" in line.lower()]) == 1, proc.stderr
    assert not (root / ".cache").exists() or case != "no root"


@pytest.mark.slow  # 12-27 s of training or fuzzing: the fast tier stays near 3 minutes
def test_an_undecodable_file_with_on_bad_image_fail_is_listed(tmp_path):
    root = write_image_folder(tmp_path / "f", n_train=2, n_test=2)
    (root / "train" / "blob" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 nothing")
    proc = run_cli(*[a for a in args_for(root, tmp_path / "logs") if "on_bad_image" not in a],
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "truncated.jpg" in proc.stderr and "data.on_bad_image=skip" in proc.stderr
    assert not list((root / ".cache").glob("train-*.npy"))  # nothing half-written


def test_an_image_past_pil_s_size_guard_is_a_bad_image_in_training_and_in_predict(
    run, tmp_path, monkeypatch, capsys
):
    from PIL import Image as PILImage

    from mnistlab.data.image_folder import ImageFolderDataModule

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 20_000)  # errors past 40,000 pixels
    root = write_image_folder(tmp_path / "f", n_train=4, n_test=2)
    PILImage.new("RGB", (300, 300), "blue").save(root / "train" / "blob" / "huge.png")
    # Past the limit but under twice it: PIL only warns, and would decode it; refused the same.
    PILImage.new("RGB", (160, 160), "blue").save(root / "train" / "blob" / "large.png")
    dm = ImageFolderDataModule(root, image_size=16, val_size=2, on_bad_image="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning on the console
        dm.prepare_data()
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 5 * 4  # huge.png and large.png left out
    with pytest.raises(UserError, match=r"huge\.png \(Image size \(90000 pixels\) exceeds limit"):
        ImageFolderDataModule(root, image_size=12, on_bad_image="fail").prepare_data()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(root / "train" / "blob" / "huge.png", inputs / "huge.png")
    shutil.copy(root / "train" / "blob" / "large.png", inputs / "large.png")
    shutil.copy(root / "test" / "blob" / "test_000.jpg", inputs / "small.jpg")
    assert predict.main([f"input={inputs}", f"run={run}"]) == 1  # two unreadable
    rows = capsys.readouterr().out.splitlines()[1:]
    assert "cannot read: Image size (90000 pixels)" in rows[0] and rows[2].split()[1] == "blob"
    assert (
        "(25600 pixels) exceeds limit of 20000 pixels (a decompression bomb?): scale it down"
        in rows[1]
    )


# ---------------------------------------------------------------------------- slow tier


@pytest.mark.slow
def test_resume_a_run_folder_continues_with_the_data_it_was_trained_on(folder, tmp_path):
    first = run_cli(*args_for(folder, tmp_path, "trainer.max_epochs=1"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    # Only the folder and the new epoch count: the data, size and trainer come from the run.
    more = run_cli(
        f"resume={run}", "trainer.max_epochs=2", f"paths.log_dir={tmp_path}", cwd=tmp_path
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert "Resuming from" in more.stderr and "(epoch 1, step 6)" in more.stderr
    assert json.loads((run / "results.json").read_text())["epochs"] == 2
    assert list((tmp_path / "train" / "runs").iterdir()) == [run]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_auto_ends_bitwise_equal(folder, tmp_path):
    exact = ["trainer.deterministic=true", "model.net.dropout=0.25", "resume=auto"]
    whole = run_cli(*args_for(folder, tmp_path / "a", *exact), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    pause = ["+callbacks.pause._target_=runner.PauseAt", "+callbacks.pause.step=8",
             f"+callbacks.pause.marker={tmp_path / 'm'}"]  # fmt: skip
    command = args_for(folder, tmp_path / "b", *exact, *pause)
    proc = start_cli(*command, cwd=tmp_path)
    wait_for(tmp_path / "m", proc)  # step 8 of 18: in epoch 2 of 3 (6 steps an epoch)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stderr
    (a,), (b,) = ([torch.load(p, weights_only=True) for p in (tmp_path / d).rglob("last.ckpt")]
                  for d in "ab")  # fmt: skip
    assert a["global_step"] == b["global_step"] == 18
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


@pytest.mark.slow
def test_ddp_makes_one_run_folder_and_tests_exactly_the_test_set(folder, tmp_path):
    proc = run_cli(*args_for(folder, tmp_path, "trainer=ddp_cpu", "trainer.devices=2"),
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    assert sorted(p.name for p in tmp_path.rglob(".hydra")) == [".hydra"]
    assert results(run)["test/images"] == N_TEST  # 80 over 2 processes: none padded or dropped


@pytest.mark.slow
def test_a_sweep_of_2_jobs_summarizes_both(folder, tmp_path):
    args = args_for(folder, tmp_path, "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path / 's'}")
    proc = run_cli("-m", *args, "model.optimizer.lr=1e-3,2e-3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "s" / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert {"val/acc_best", "test/acc", "test/loss"} <= set(rows[0])
    assert all(0.2 < float(r["test/acc"]) <= 1 for r in rows)


@pytest.mark.slow  # 12-27 s of training or fuzzing: the fast tier stays near 3 minutes
def test_a_new_dataset_class_from_the_readme_trains(tmp_path):
    """The README's example of a dataset of your own, code and config as written there (the
    module on PYTHONPATH instead of in src/mnistlab/data/), through the real command line."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("<!-- own-dataset -->")[1].split("```python\n")[1].split("```")[0]
    config = readme.split("<!-- own-dataset -->")[1].split("```yaml\n")[1].split("```")[0]
    assert len(code.splitlines()) + len(config.splitlines()) < 40
    (tmp_path / "my_data.py").write_text(code)
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "my_data.yaml").write_text(
        config.replace("mnistlab.data.my_data", "my_data")
    )
    root = write_image_folder(tmp_path / "images", n_train=12, n_test=4)
    for split in ("train", "test"):  # the same images, listed in CSV files instead
        rows = [
            f"{p.relative_to(root)},{p.parent.name}" for p in sorted((root / split).rglob("*.*"))
        ]
        (root / f"{split}.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    classes = "[" + ",".join(sorted(SHAPES)) + "]"
    proc = subprocess.run(
        [sys.executable, "-m", "mnistlab.train", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
         "data=my_data", f"data.root={root}", f"data.classes={classes}", f"paths.log_dir={tmp_path}",
         "trainer=cpu", "trainer.max_epochs=2"],
        cwd=tmp_path, env=cli_env({"PYTHONPATH": f"{tmp_path}:{cli_env()['PYTHONPATH']}"}),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    assert results(run)["test/images"] == 5 * 4 and results(run)["test/acc"] > 0.5


def test_a_class_folder_with_a_newline_in_its_name_is_refused_where_it_is_scanned(tmp_path):
    from mnistlab.data.folders import dataset_classes

    root = write_image_folder(tmp_path / "f", n_train=1, n_test=1)
    for split in ("train", "test"):
        (root / split / "ring").rename(root / split / "ri\nng")
    with pytest.raises(UserError, match=r"class folder 'ri\\nng' has a control character") as e:
        dataset_classes(root)
    assert "\n" not in str(e.value)

"""A really full disk (a small tmpfs mounted for the test; root only), slow tier: training that
meets it while writing a checkpoint, and eval-wild writing its report onto it, each end in one
line, exit 1, with every earlier file intact; once space is freed the same command continues."""

import os
import subprocess

import pytest
from conftest import missing
from runner import base_args, run_cli

from mnistlab.lab import checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        missing("mounting a small tmpfs needs root (.ci/run runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        missing(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_ends_training_and_eval_wild_in_one_line_and_loses_nothing(
    synthetic_mnist, small_disk, tmp_path, capsys
):
    args = base_args(synthetic_mnist, small_disk / "logs", "resume=auto", "logger=csv",
                     "+callbacks.full._target_=runner.FillDisk", "+callbacks.full.epoch=1",
                     f"+callbacks.full.marker={tmp_path / 'filled'}")  # fmt: skip
    full = run_cli(*args, cwd=tmp_path)
    assert full.returncode == 1, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    (run,) = (small_disk / "logs" / "train" / "runs").iterdir()
    assert f"cannot write checkpoint {run / 'checkpoints'}" in last and "disk full" in last, last
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in kept and not [n for n in kept if n.endswith(".tmp")], kept
    assert checkpoint.load(run / "checkpoints" / "last.ckpt")["epoch"] == 0  # epoch 1's, intact
    assert "epoch 1/2" in (run / "train.log").read_text()

    # eval-wild on the same full disk: its report cannot be written; one line, exit 1.
    from mnistlab.classify import wild
    from mnistlab.classify.wild_set import generate

    fonts, wild_set = tmp_path / "fonts", tmp_path / "wild"
    fonts.mkdir()
    generate(wild_set, seed=5, fonts_dir=fonts, per_font=1, pen_per_digit=1)
    assert wild.main([f"run={run}", f"data={wild_set}", "seed=5"]) == 1
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err.splitlines()[-1] and "Traceback" not in err, err
    assert not list(run.rglob("*.tmp")), "a half-written file left behind"

    # Space again: the same command continues from epoch 1's checkpoint and finishes.
    (run / "filler").unlink()
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in (run / "train.log").read_text()
    assert (run / "results.json").is_file()

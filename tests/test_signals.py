"""The command line under kill -9, SIGTERM, SIGINT and SLURM's SIGUSR1 (the `slow` tier: each
test starts a few training processes). A test callback (runner.PauseAt) holds the run at a known
step so the signal lands there."""

import json
import os
import signal
import stat

import pytest
import torch
from runner import base_args, run_cli, start_cli, wait_for

pytestmark = pytest.mark.slow

EXACT = [
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "data.batch_size=32",  # 500 images: 16 steps an epoch
    "model.net.dropout=0.25",
    "resume=auto",
]


def pause_at(step: int, marker) -> list[str]:
    return ["+callbacks.pause._target_=runner.PauseAt", f"+callbacks.pause.step={step}",
            f"+callbacks.pause.marker={marker}"]  # fmt: skip


def only_run(log_dir):
    (run,) = (log_dir / "train" / "runs").iterdir()
    return run


def last(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def test_kill_9_in_epoch_2_then_the_same_command_ends_bitwise_equal(synthetic_mnist, tmp_path):
    whole = run_cli(*base_args(synthetic_mnist, tmp_path / "a", *EXACT), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    command = base_args(synthetic_mnist, tmp_path / "b", *EXACT, *pause_at(24, tmp_path / "m"))
    proc = start_cli(*command, cwd=tmp_path)
    wait_for(tmp_path / "m", proc)  # held at step 24 of 48, in epoch 2
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert last(only_run(tmp_path / "b"))["global_step"] == 16  # the end of epoch 1

    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from" in again.stderr and "(epoch 1, step 16)" in again.stderr
    a, b = last(only_run(tmp_path / "a")), last(only_run(tmp_path / "b"))
    assert a["global_step"] == b["global_step"] == 48
    delta = max(
        (a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in a["state_dict"]
    )
    assert delta == 0.0
    results = [json.loads((only_run(tmp_path / d) / "results.json").read_text()) for d in "ab"]
    a_metrics, b_metrics = ({k: v for k, v in r["metrics"].items() if not k.startswith("perf/")}
                            for r in results)  # fmt: skip
    assert a_metrics == b_metrics and "test/acc" in a_metrics  # timings (perf/...) aside

    done = run_cli(*command, cwd=tmp_path)  # a finished run is not trained again
    assert done.returncode == 0 and "has already finished" in done.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_exits_128_plus_signal_and_resumes(
    synthetic_mnist, tmp_path, signum
):
    command = base_args(synthetic_mnist, tmp_path, *EXACT, *pause_at(24, tmp_path / "m"))
    proc = start_cli(*command, cwd=tmp_path)
    wait_for(tmp_path / "m", proc)
    proc.send_signal(signum)
    assert proc.wait(timeout=10) == 128 + signum  # 143, 130
    stderr = proc.stderr.read()
    assert f"Stopped by {signum.name}: checkpoint" in stderr and "Traceback" not in stderr
    run = only_run(tmp_path)
    assert last(run)["global_step"] == 24  # mid-epoch 2: the step it was stopped at

    if signum == signal.SIGTERM:
        again = run_cli(*command, cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "(epoch 2, step 24)" in again.stderr and last(run)["global_step"] == 48


def test_slurm_sigusr1_checkpoints_requeues_once_and_the_requeued_run_resumes(
    synthetic_mnist, tmp_path
):
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol-calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    command = base_args(synthetic_mnist, tmp_path, *EXACT, *pause_at(24, tmp_path / "m"))
    proc = start_cli(*command, cwd=tmp_path, env=env)
    wait_for(tmp_path / "m", proc)
    proc.send_signal(signal.SIGUSR1)
    proc.send_signal(signal.SIGUSR1)  # a second warning does not requeue twice
    assert proc.wait(timeout=10) == 128 + signal.SIGUSR1
    assert calls.read_text() == "requeue 4242\n"
    assert last(only_run(tmp_path))["global_step"] == 24

    requeued = run_cli(*command, cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "(epoch 2, step 24)" in requeued.stderr
    assert calls.read_text() == "requeue 4242\n"


def test_kill_9_while_testing_then_the_same_command_ends_with_every_metric(
    synthetic_mnist, tmp_path
):
    pause = [
        "+callbacks.pause._target_=runner.PauseInTest",
        f"+callbacks.pause.marker={tmp_path / 'm'}",
    ]
    command = base_args(synthetic_mnist, tmp_path / "b", "resume=auto", *pause)
    proc = start_cli(*command, cwd=tmp_path)
    wait_for(tmp_path / "m", proc)  # training done, the best checkpoint being tested
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    run = only_run(tmp_path / "b")
    assert not (run / "results.json").exists()
    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    assert {"val/acc_best", "val/acc", "train/acc", "test/acc", "test/loss"} <= set(metrics)
    assert "Done: val/acc_best" in again.stderr


def test_the_same_command_twice_at_once_one_trains_and_the_other_names_it(
    synthetic_mnist, tmp_path
):
    command = base_args(synthetic_mnist, tmp_path, *EXACT, *pause_at(4, tmp_path / "m"))
    first = start_cli(*command, cwd=tmp_path)
    wait_for(tmp_path / "m", first)  # training, in its run folder
    second = run_cli(*command, cwd=tmp_path)  # resume=auto: the same folder
    assert second.returncode == 1, second.stderr[-2000:]
    assert f"run folder is in use by pid {first.pid} on " in second.stderr
    assert "Traceback" not in second.stderr
    first.kill()
    assert first.wait(timeout=30) == -signal.SIGKILL
    third = run_cli(*command, cwd=tmp_path)  # takes the dead holder's lock over, and finishes
    assert third.returncode == 0, third.stderr[-2000:]
    assert len(list((tmp_path / "train" / "runs").iterdir())) == 1

"""Sweeps through the real command line (the `slow` tier): grid, a failing job and its re-run,
Optuna continued on the same study, joblib and submitit_local launchers.

The grid sweeper is this template's own and needs no extra; the Optuna and launcher tests need
the sweep extras, and skip without them (fail under CI=true, where .ci/run installs them)."""

import csv
import json
from pathlib import Path

import pytest
from conftest import need_modules
from runner import base_args, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow
INSTALL = "make install-sweep"
LAUNCHERS = {
    "joblib": ("joblib", "hydra_plugins.hydra_joblib_launcher"),
    "submitit_local": ("submitit", "hydra_plugins.hydra_submitit_launcher"),
}
TINY = ["trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]


def sweep(synthetic_mnist, tmp_path, *overrides: str, dir_name: str = "sweep"):
    args = base_args(synthetic_mnist, tmp_path, *TINY, f"hydra.sweep.dir={tmp_path / dir_name}")
    return run_cli("-m", *args, *overrides, cwd=tmp_path)


def summary(folder) -> list[dict]:
    return list(csv.DictReader((folder / "summary.csv").open()))


def test_grid_2x2_one_complete_folder_per_job_and_a_summary(synthetic_mnist, tmp_path):
    proc = sweep(synthetic_mnist, tmp_path, "model.optimizer.lr=1e-3,2e-3", "data.batch_size=32,64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = summary(tmp_path / "sweep")
    assert sorted(int(r["job"]) for r in rows) == [0, 1, 2, 3]
    assert {r["status"] for r in rows} == {"completed"}
    objectives = [float(r["objective"]) for r in rows]
    assert objectives == sorted(objectives, reverse=True)  # best first
    labels = [
        "lr=0.001,batch_size=32",
        "lr=0.001,batch_size=64",
        "lr=0.002,batch_size=32",
        "lr=0.002,batch_size=64",
    ]  # fmt: skip (as Hydra writes each job's values)
    for job, label in enumerate(labels):
        folder = tmp_path / "sweep" / str(job)
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        assert (folder / "results.json").is_file() and (folder / ".hydra/config.yaml").is_file()
        # TensorBoard names a run by its folder: the job's events are in <job>/<what it varies>/
        assert {p.parent.name for p in folder.glob("*/events.out.tfevents.*")} == {label}
        events = EventAccumulator(str(folder / label)).Reload()
        assert {"test/acc", "val/acc_best"} <= set(events.Tags()["scalars"])
        hparams = events.summary_metadata  # the HParams tab's record of the job: its columns
        assert any(m.plugin_data.plugin_name == "hparams" for m in hparams.values()), hparams
    assert "| job | status | objective |" in proc.stdout
    assert "4 completed" in (tmp_path / "sweep" / "summary.md").read_text()


def test_a_failed_job_does_not_stop_the_others_and_the_rerun_finishes_it(synthetic_mnist, tmp_path):
    fail = ["+callbacks.fail._target_=runner.FailOnce", "+callbacks.fail.lr=0.002",
            f"+callbacks.fail.marker={tmp_path / 'failed-once'}"]  # fmt: skip
    proc = sweep(synthetic_mnist, tmp_path, *fail, "model.optimizer.lr=1e-3,2e-3,3e-3")
    assert proc.returncode == 1
    rows = {int(r["job"]): r for r in summary(tmp_path / "sweep")}
    assert [rows[j]["status"] for j in range(3)] == ["completed", "failed", "completed"]
    error = rows[1]["error"]  # and where it was raised
    assert error.startswith("RuntimeError: injected failure in epoch 2 (runner.py:"), error
    assert "Job 1 failed" in proc.stderr and "Traceback" not in proc.stderr
    assert "Traceback" in (tmp_path / "sweep" / "1" / "train.log").read_text()

    again = sweep(synthetic_mnist, tmp_path, *fail, "model.optimizer.lr=1e-3,2e-3,3e-3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Job 0 completed in an earlier run of this sweep: skipped" in again.stderr
    assert "Job 2 completed in an earlier run of this sweep: skipped" in again.stderr
    assert "Resuming from" in (tmp_path / "sweep" / "1" / "train.log").read_text()
    assert {r["status"] for r in summary(tmp_path / "sweep")} == {"completed"}


def test_optuna_3_trials_then_the_same_study_continued_to_5(synthetic_mnist, tmp_path):
    need_modules("optuna", install=INSTALL)
    search = ["hparams_search=mnist_optuna", "hydra.sweeper.n_trials=3"]
    first = sweep(synthetic_mnist, tmp_path, *search)
    assert first.returncode == 0, first.stderr[-3000:]
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    assert best["trials"] == 3 and set(best["params"]) == {
        "model.optimizer.lr", "data.batch_size", "model.net.hidden"}  # fmt: skip
    before = {r["job"]: r["overrides"] for r in summary(tmp_path / "sweep")}

    more = sweep(
        synthetic_mnist, tmp_path, "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=5"
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert "Study mnist_optuna: 3 trials so far, 2 to go" in more.stderr
    after = {r["job"]: r["overrides"] for r in summary(tmp_path / "sweep")}
    assert sorted(after) == ["0", "1", "2", "3", "4"] and all(after[j] == before[j] for j in before)
    assert len(set(after.values())) == 5  # new trials, not the first ones drawn again
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    assert best["trials"] == 5 and Path(best["run_folder"]).parent == (tmp_path / "sweep")
    assert f"(run: {best['run_folder']})" in more.stderr
    import optuna  # each trial leads back to its run (optuna-dashboard shows these)

    from mnistlab.lab import sweeps

    storage = sweeps.opened(sweeps.default_storage(tmp_path / "sweep"))
    for trial in optuna.load_study(study_name="mnist_optuna", storage=storage).trials:
        attrs = trial.user_attrs
        assert attrs["run_folder"] == str((tmp_path / "sweep" / str(trial.number)).resolve())
        assert attrs["status"] == "completed" and attrs["seed"] == 12345, attrs
        assert 0 <= attrs["test/acc"] <= 1 and attrs["val/acc_best"] == trial.value
    for row in summary(tmp_path / "sweep"):  # each job's overrides as it recorded them
        job = json.loads((tmp_path / "sweep" / row["job"] / "job.json").read_text())
        assert row["overrides"] == " ".join(job["overrides"])

    other = sweep(synthetic_mnist, tmp_path, *search, "trainer.max_epochs=1")  # another experiment
    assert other.returncode == 2, other.stderr[-3000:]
    (line,) = [ln for ln in other.stderr.splitlines() if "error:" in ln]
    assert (
        "study mnist_optuna" in line
        and "another fixed overrides" in line
        and "trainer.max_epochs=1" in line
    )
    assert "hydra.sweeper.study_name=" in line and "Traceback" not in other.stderr
    assert len(summary(tmp_path / "sweep")) == 5  # not a trial added to the study


def test_the_submitit_local_launcher_runs_a_sweep_end_to_end(synthetic_mnist, tmp_path):
    """(joblib's: test_sweep_kills runs its sweeps to the end too.)"""
    need_modules(*LAUNCHERS["submitit_local"], install=INSTALL)
    proc = sweep(synthetic_mnist, tmp_path, "hydra/launcher=submitit_local",
                 "model.optimizer.lr=1e-3,2e-3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["status"] for r in summary(tmp_path / "sweep")] == ["completed", "completed"]


def test_the_same_sweep_twice_at_once_is_refused_and_a_killed_one_is_taken_over(
    synthetic_mnist, tmp_path
):
    from runner import start_cli, wait_for
    from test_signals import pause_at

    args = [*base_args(synthetic_mnist, tmp_path, *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}"),
            "model.optimizer.lr=1e-3,2e-3"]  # fmt: skip
    first = start_cli("-m", *args, *pause_at(2, tmp_path / "m"), cwd=tmp_path)
    wait_for(tmp_path / "m", first)  # job 0 is training
    second = run_cli("-m", *args, *pause_at(2, tmp_path / "m"), cwd=tmp_path)
    assert second.returncode == 1, second.stderr[-3000:]
    assert f"sweep folder is in use by pid {first.pid} on " in second.stderr
    assert "Traceback" not in second.stderr
    first.kill()
    first.wait(timeout=30)
    third = run_cli("-m", *args, *pause_at(2, tmp_path / "m"), cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert [r["status"] for r in summary(tmp_path / "sweep")] == ["completed", "completed"]


PRUNING = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
           "hydra.sweeper.seed=1", "trainer.max_epochs=3", "trainer.limit_train_batches=null",
           "+hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1}",
           # 1e-7 is the bad region: such a trial stays at chance and is pruned after epoch 1
           "model.optimizer.lr=choice(0.001,0.002,0.003,0.0000001)"]  # fmt: skip


def check_pruned_study(sweep_dir, n_trials: int = 6, epochs: int = 3, failed=()) -> None:
    """Every trial once, in the study and in the summary; the bad ones pruned before the end,
    with the epochs they ran saved; the others completed with a report every epoch, or failed
    (`failed`: their numbers)."""
    import optuna

    from mnistlab.lab.sweeps import open_storage

    study = optuna.load_study(study_name="search", storage=open_storage(str(sweep_dir / "optuna.journal")))  # fmt: skip
    assert [t.number for t in study.trials] == list(range(n_trials))
    states = {t.number: t.state.name for t in study.trials}
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned and all(len(t.intermediate_values) < epochs for t in pruned), states
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert sorted(t.intermediate_values) == list(range(epochs))
    rows = {int(r["job"]): r for r in summary(sweep_dir)}
    assert sorted(rows) == list(range(n_trials))
    assert [n for n, s in states.items() if s == "FAIL"] == list(failed)
    assert {n: rows[n]["status"] for n in rows} == {
        n: {"PRUNED": "pruned", "COMPLETE": "completed", "FAIL": "failed"}[s]
        for n, s in states.items()}  # fmt: skip
    for t in pruned:
        job = json.loads((sweep_dir / str(t.number) / "job.json").read_text())
        assert job["pruned_after_epoch"] == len(t.intermediate_values)
        assert (sweep_dir / str(t.number) / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_optuna_prunes_the_trials_that_fall_behind_two_at_a_time(synthetic_mnist, tmp_path,
                                                                 launcher):  # fmt: skip
    """Two trials at a time (joblib: in two worker processes) report every epoch to one study
    in a journal file; the median pruner stops those of the bad region after their first. The
    last trial's job crashes: the study goes on, the trial is failed, the sweep exits 1."""
    need_modules("optuna", *(LAUNCHERS["joblib"] if launcher == "joblib" else ()), install=INSTALL)
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    crash = ["+callbacks.fail._target_=runner.FailInTrial", "+callbacks.fail.trial=5"]
    proc = sweep(synthetic_mnist, tmp_path, *PRUNING, *extra, *crash)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Job 5 failed: RuntimeError: injected failure in trial 5" in proc.stderr
    check_pruned_study(tmp_path / "sweep", failed=[5])
    assert ", 1 failed" in (tmp_path / "sweep" / "summary.md").read_text().splitlines()[2]


def student_t_975(df: int) -> float:
    """The 97.5% quantile of Student's t, by mpmath (arbitrary precision), not by our code."""
    import mpmath

    def tail(x):  # P(T > x) = I_{df / (df + x^2)}(df / 2, 1 / 2) / 2
        return mpmath.betainc(df / 2, 0.5, 0, df / (df + x * x), regularized=True) / 2 - 0.025

    return float(mpmath.findroot(tail, 3))


def test_a_report_over_seeds_agrees_with_numpy_and_leaves_out_a_failed_run(synthetic_mnist,
                                                                          tmp_path, capsys):  # fmt: skip
    """2 learning rates x 3 seeds, one run failing: the report groups by lr, and n, mean, std
    and the 95% confidence interval equal numpy's (Student's t from mpmath) to 1e-12."""
    import numpy as np

    from mnistlab.lab import report

    fail = ["+callbacks.fail._target_=runner.FailOnce", "+callbacks.fail.lr=0.002",
            f"+callbacks.fail.marker={tmp_path / 'failed-once'}"]  # fmt: skip
    proc = sweep(synthetic_mnist, tmp_path, "model.optimizer.lr=1e-3,2e-3", "seed=1,2,3", *fail)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one job failed
    capsys.readouterr()
    assert report.main([f"sweep={tmp_path / 'sweep'}"]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # the table's cells, padding aside
    rows = {r["group"]: r for r in csv.DictReader((tmp_path / "sweep" / "report.csv").open())}
    assert sorted(rows) == ["model.optimizer.lr=0.001", "model.optimizer.lr=0.002"]
    assert (
        rows["model.optimizer.lr=0.001"]["failed"],
        rows["model.optimizer.lr=0.002"]["failed"],
    ) == ("0", "1")
    for label, row in rows.items():
        lr = label.split("=")[1]
        runs = [json.loads((f / "results.json").read_text())["metrics"]["test/acc"]
                for f in (tmp_path / "sweep").iterdir()
                if f.is_dir() and f.name.isdigit() and (f / "results.json").is_file()
                and f"model.optimizer.lr={lr}" in json.loads((f / "job.json").read_text())["overrides"]]  # fmt: skip
        values = np.array(runs)
        n = len(values)
        assert int(row["runs"]) == n == (3 if lr == "0.001" else 2)
        t = student_t_975(n - 1)
        expected = {"mean": values.mean(), "std": values.std(ddof=1),
                    "ci95": t * values.std(ddof=1) / np.sqrt(n), "min": values.min(), "max": values.max()}  # fmt: skip
        for key, value in expected.items():
            assert abs(float(row[f"test/acc:{key}"]) - value) <= 1e-12, (label, key)
    assert "| model.optimizer.lr=0.002 | 2 | 1 |" in printed
    summary_md = " ".join((tmp_path / "sweep" / "summary.md").read_text().split())  # its own too
    assert (
        "# Results over seeds" in summary_md
        and "| model.optimizer.lr=0.002 | 2 | 1 |" in summary_md
    )
    tex = (tmp_path / "sweep" / "report.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"\caption{" in tex
    # The figures: a valid PNG (its pixels are checked in test_report) and its SVG and PDF.
    from PIL import Image

    for metric in ("val_acc", "val_loss"):
        assert Image.open(tmp_path / "sweep" / f"curve_{metric}.png").format == "PNG"
        assert (tmp_path / "sweep" / f"curve_{metric}.pdf").read_bytes().startswith(b"%PDF")
    # Compared: lr is the one differing key; Welch's p of the two groups as compare.welch gives.
    from mnistlab.lab import compare

    assert compare.main([f"sweep={tmp_path / 'sweep'}"]) == 0
    printed = capsys.readouterr().out
    assert "| model.optimizer.lr | 0.001 | 0.002 |" in printed and "| seed |" not in printed
    accs = {lr: [json.loads((f / "results.json").read_text())["metrics"]["test/acc"]
                 for f in sorted((tmp_path / "sweep").iterdir())
                 if (f / "results.json").is_file()
                 and f"model.optimizer.lr={lr}" in json.loads((f / "job.json").read_text())["overrides"]]
            for lr in ("0.001", "0.002")}  # fmt: skip
    p = compare.welch(accs["0.001"], accs["0.002"])[2]
    assert f"p={p:.3g}" in printed.split("| test/acc |")[1].splitlines()[0]

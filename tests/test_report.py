"""The results-over-seeds report (mnistlab.lab.report) on run folders written here: grouping,
statistics, what is left out, and its one-line refusals. The slow tier runs it on a real sweep."""

import csv
import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_sweeps import student_t_975

from mnistlab.lab import report
from mnistlab.lab.stats import describe


def fake_run(folder, overrides, acc=None, status="completed"):
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"overrides": overrides, "status": status,
                                                 "wall_s": 1.0}))  # fmt: skip
    if acc is not None:
        metrics = {"test/acc": acc, "val/acc_best": acc, "test/loss": 1 - acc}
        (folder / "results.json").write_text(json.dumps({"metrics": metrics}))


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30])
def test_the_95_interval_uses_student_s_quantile_to_arbitrary_precision(df):
    values = list(np.linspace(0.9, 0.95, df + 1) ** 2)
    half = student_t_975(df) * np.std(values, ddof=1) / np.sqrt(df + 1)
    assert describe(values)["ci95"] == pytest.approx(half, rel=1e-12)


def test_runs_are_grouped_without_the_seed_and_failures_are_counted_apart(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    accs = {("1e-3", 1): 0.90, ("1e-3", 2): 0.92, ("1e-3", 3): 0.94, ("3e-4", 1): 0.80}
    for n, ((lr, seed), acc) in enumerate(accs.items()):
        fake_run(
            sweep / str(n),
            ["trainer.max_epochs=2", f"model.optimizer.lr={lr}", f"seed={seed}"],
            acc,
        )
    fake_run(
        sweep / "4", ["trainer.max_epochs=2", "model.optimizer.lr=3e-4", "seed=2"], None, "failed"
    )
    fake_run(
        sweep / "5", ["trainer.max_epochs=2", "model.optimizer.lr=3e-4", "seed=3"], 0.1, "pruned"
    )
    assert report.main([f"sweep={sweep}"]) == 0
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [(r["group"], r["runs"], r["failed"]) for r in rows] == [
        ("model.optimizer.lr=1e-3", "3", "0"), ("model.optimizer.lr=3e-4", "1", "2")]  # fmt: skip
    assert float(rows[0]["test/acc:mean"]) == pytest.approx(0.92, abs=1e-15)
    assert float(rows[0]["test/acc:ci95"]) == pytest.approx(
        student_t_975(2) * 0.02 / 3**0.5, abs=1e-12
    )
    assert rows[1]["test/acc:ci95"] == ""  # one run: no spread to speak of
    printed = " ".join(capsys.readouterr().out.split())  # the table's cells, padding aside
    assert "| model.optimizer.lr=3e-4 | 1 | 2 | 0.8000 |" in printed
    tex = (sweep / "report.tex").read_text()
    assert r"\toprule" in tex and r"val/acc\_best" in tex

    assert report.main([f"sweep={sweep}", "group_by=[seed]", "ignore=[]"]) == 0
    groups = [r["group"] for r in csv.DictReader((sweep / "report.csv").open())]
    assert sorted(groups) == ["seed=1", "seed=2", "seed=3"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name the runs: sweep=<multirun folder>"),
        (["sweep=/no/such/folder"], "sweep=/no/such/folder: no such folder"),
        (["sweep=.", "colour=red"], "colour=red: not an option (options: sweep, runs,"),
        (["sweep=.", "metric=[a]"], "metric=[a]: not an option (did you mean metrics=?"),
        (["sweep=.", "figures=maybe"], "figures=maybe: true or false"),
        (["sweep=.", "metrics=["], "metrics=[: not a list"),
    ],
)
def test_a_wrong_report_command_is_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def written_run(folder, overrides, acc, curve=()):
    """A finished run as train writes one: its config (composed from `overrides`, unresolved, as
    Hydra saves it), overrides, results and, when `curve` is given, val/acc events."""
    from conftest import compose_train
    from omegaconf import OmegaConf

    fake_run(folder, overrides, acc)
    (folder / ".hydra").mkdir()
    OmegaConf.save(compose_train(overrides), folder / ".hydra" / "config.yaml")
    if curve:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(folder)) as writer:
            for epoch, value in enumerate(curve):
                writer.add_scalar("val/acc", value, (epoch + 1) * 10)


def test_compare_lists_exactly_the_keys_that_differ(tmp_path, capsys):
    from mnistlab.lab import compare

    written_run(tmp_path / "a", [], 0.90)
    written_run(tmp_path / "b", ["model.optimizer.lr=3e-4", "data.batch_size=128"], 0.93)
    assert compare.main([f"runs=[{tmp_path / 'a'},{tmp_path / 'b'}]"]) == 0
    printed = capsys.readouterr().out
    configs = [compare.flat_config(tmp_path / r) for r in "ab"]
    assert compare.differing(configs, ignore=[]) == ["data.batch_size", "model.optimizer.lr"]
    configs[1]["resume"] = "auto"  # continued after a stop: the same run
    assert compare.differing(configs, ignore=[]) == ["data.batch_size", "model.optimizer.lr"]
    assert "| data.batch_size | 64 | 128 |" in printed
    assert "| model.optimizer.lr | 0.001 | 0.0003 |" in printed
    assert "| test/acc | 0.9000 | 0.9300, Δ +0.0300 |" in printed


def test_welch_p_values_match_an_integral_of_the_t_density():
    """Welch's t and degrees of freedom by hand, the p-value by mpmath's quadrature of Student's
    density (not by scipy, which our code uses)."""
    import mpmath

    from mnistlab.lab import compare

    a, b = [0.981, 0.983, 0.979, 0.984], [0.986, 0.990, 0.985]
    t, df, p = compare.welch(a, b)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    assert t == pytest.approx((np.mean(b) - np.mean(a)) / np.sqrt(va + vb), abs=1e-12)
    assert df == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2), abs=1e-9)

    def density(x):
        return (
            mpmath.gamma((df + 1) / 2)
            / (mpmath.sqrt(df * mpmath.pi) * mpmath.gamma(df / 2))
            * (1 + x * x / df) ** (-(df + 1) / 2)
        )

    assert p == pytest.approx(float(2 * mpmath.quad(density, [abs(t), mpmath.inf])), abs=1e-12)
    assert compare.welch([0.9], b) is None  # one run: no test


def _t_tail(t: float, df: float) -> float:
    """Two-sided p of Student's t by mpmath's quadrature of its density."""
    import mpmath

    def density(x):
        return (mpmath.gamma((df + 1) / 2) / (mpmath.sqrt(df * mpmath.pi) * mpmath.gamma(df / 2))
                * (1 + x * x / df) ** (-(df + 1) / 2))  # fmt: skip

    return float(2 * mpmath.quad(density, [abs(t), mpmath.inf]))


def test_groups_that_ran_the_same_seeds_are_compared_seed_by_seed(tmp_path, capsys):
    """A paired t-test over the shared seeds: the per-seed differences' t, n - 1 degrees of
    freedom, the p by quadrature; groups with other seeds fall back to Welch's."""
    from mnistlab.lab import compare

    fast = {1: 0.900, 2: 0.920, 3: 0.910, 4: 0.930}
    slow = {1: 0.905, 2: 0.928, 3: 0.913, 4: 0.936}  # better on every seed, by 3-8 thousandths
    sweep = tmp_path / "sweep"
    for n, (lr, seed, acc) in enumerate([("1e-3", s, a) for s, a in fast.items()]
                                        + [("3e-4", s, a) for s, a in slow.items()]):  # fmt: skip
        written_run(sweep / str(n), [f"model.optimizer.lr={lr}", f"seed={seed}"], acc)
    assert compare.main([f"sweep={sweep}", "baseline=model.optimizer.lr=1e-3"]) == 0
    printed = capsys.readouterr().out
    d = np.array([slow[s] - fast[s] for s in fast])
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    test = compare.paired(fast, slow)
    assert test[0] == pytest.approx(t, rel=1e-12) and test[1] == len(d) - 1
    assert test[2] == pytest.approx(_t_tail(t, len(d) - 1), abs=1e-12)
    assert f"p paired={test[2]:.3g}" in printed and test[2] < 0.05  # Welch's p: over 0.3
    assert compare.welch(list(fast.values()), list(slow.values()))[2] > 0.3
    assert compare.paired(fast, {1: 0.9, 2: 0.9, 5: 0.9, 6: 0.9}) is None  # other seeds


def test_sweep_groups_compared_with_welch_and_named_runs_labelled(tmp_path, capsys):
    from mnistlab.lab import compare

    sweep = tmp_path / "sweep"
    for n, (lr, seed, acc) in enumerate([("1e-3", 1, 0.90), ("1e-3", 2, 0.92), ("1e-3", 3, 0.91),
                                         ("3e-4", 1, 0.95), ("3e-4", 2, 0.96)]):  # fmt: skip
        written_run(sweep / str(n), [f"model.optimizer.lr={lr}", f"seed={seed}",
                                     f"name={'fast' if lr == '1e-3' else 'slow'}"], acc)  # fmt: skip
    assert compare.main([f"sweep={sweep}", "baseline=fast"]) == 0
    printed = capsys.readouterr().out
    p = compare.welch([0.90, 0.92, 0.91], [0.95, 0.96])[2]
    assert "| metric | fast | slow |" in printed  # the names, not the overrides
    assert f"0.9550 ± {describe([0.95, 0.96])['ci95']:.4f} (n=2), Δ +0.0450, p={p:.3g}" in printed
    assert "| model.optimizer.lr | 0.001 | 0.0003 |" in printed and "| seed |" not in printed
    assert (sweep / "compare.md").read_text() == printed


def test_the_figure_has_one_mean_curve_and_band_per_group(tmp_path):
    """Two groups of runs with val/acc events: the PNG holds the first two colours of
    matplotlib's cycle as lines and as their pale bands, and no third."""
    from PIL import Image

    from mnistlab.lab.figures import curves

    sweep = tmp_path / "sweep"
    shifts = [("1e-3", 0.0), ("1e-3", 0.03), ("1e-3", 0.015), ("3e-4", -0.3), ("3e-4", -0.27),
              ("3e-4", -0.33)]  # fmt: skip
    for n, (lr, shift) in enumerate(shifts):
        written_run(sweep / str(n), [f"model.optimizer.lr={lr}", f"seed={n}"], 0.9,
                    curve=[0.6 + shift, 0.75 + shift, 0.85 + shift, 0.9 + shift])  # fmt: skip
    groups = report.group([report.read_run(sweep / str(n)) for n in range(6)], ["seed"], [])
    written = curves(groups, tmp_path, metrics=["val/acc"])
    assert sorted(p.name for p in written) == ["curve_val_acc.pdf", "curve_val_acc.png",
                                               "curve_val_acc.svg"]  # fmt: skip
    image = Image.open(tmp_path / "curve_val_acc.png")
    assert image.format == "PNG"
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)

    def count(rgb, tolerance=6):
        return int((np.abs(pixels - rgb).max(1) <= tolerance).sum())

    cycle = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # matplotlib's C0, C1, C2
    band = [tuple(round(255 - 0.2 * (255 - c)) for c in rgb) for rgb in cycle]  # alpha 0.2 on white
    assert count(cycle[0]) > 300 and count(cycle[1]) > 300, "a curve per group"
    assert count(band[0]) > 2000 and count(band[1]) > 2000, "a band per group"
    assert count(cycle[2]) == 0 and count(band[2]) == 0, "no third group"


@pytest.mark.slow
def test_two_named_runs_compared_through_the_command_line(synthetic_mnist, tmp_path):
    """Two real runs, `name=` given, the second with another lr and batch size: the folders end
    in their names, and `compare` lists exactly those two keys, the runs titled by name."""
    from runner import base_args, run_cli

    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
    for extra in (["name=base"], ["name=wide", "model.optimizer.lr=3e-4", "data.batch_size=32"]):
        proc = run_cli(*base_args(synthetic_mnist, tmp_path, *tiny, *extra), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "train" / "runs").iterdir())
    assert [r.name.rsplit("_", 1)[1] for r in runs] == ["base", "wide"], runs
    proc = subprocess.run([sys.executable, "-m", "mnistlab.lab.compare", f"runs=[{runs[0]},{runs[1]}]"],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("## Config keys that differ")[1].split("## ")[0]
    keys = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert keys == ["key", "data.batch_size", "model.optimizer.lr"], proc.stdout
    assert f"| key | base ({runs[0].name}) | wide ({runs[1].name}) |" in proc.stdout
    from mnistlab.lab.provenance import commit_of  # each run's code, from its run.json

    if (Path(__file__).parents[1] / ".git").exists():  # run from a git checkout, as CI does
        assert commit_of(runs[0]) != "?"
        assert f"| commit | {commit_of(runs[0])} | {commit_of(runs[1])} |" in proc.stdout


def test_unreadable_records_are_named_and_counted_apart_never_a_traceback(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0", ["model.optimizer.lr=1e-3", "seed=1"], 0.9)
    fake_run(sweep / "1", ["model.optimizer.lr=1e-3", "seed=2"], 0.8)
    fake_run(sweep / "2", ["model.optimizer.lr=1e-3", "seed=3"], 0.7)
    (sweep / "1" / "results.json").write_text("[]")  # JSON, of the wrong shape
    (sweep / "2" / "results.json").write_text('{"metrics": "oops"}')
    fake_run(sweep / "3", ["model.optimizer.lr=1e-3", "seed=4"], 0.6)
    (sweep / "3" / "job.json").write_text('{"status": "comp')  # cut short
    assert report.main([f"sweep={sweep}", "figures=false"]) == 0
    rows = {
        r["group"]: (r["runs"], r["failed"]) for r in csv.DictReader((sweep / "report.csv").open())
    }
    # 3's results stand, but not its overrides: with no .hydra/overrides.yaml either, its group
    # is unknown, and it is not averaged with the others.
    assert rows == {"model.optimizer.lr=1e-3": ("1", "2"), "(defaults)": ("1", "0")}
    err = capsys.readouterr().err.splitlines()
    named = [line for line in err if "results.json:" in line]
    assert len([m for m in named if "counted as not finished" in m]) == 2, named
    assert len([m for m in named if "not a readable JSON object" in m]) == 1, named  # 1's
    (damaged,) = [line for line in err if "job.json:" in line]
    assert str(sweep / "3" / "job.json") in damaged and "read as if absent" in damaged


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["group_by=[nope.key]"], "group_by: no run was started with nope.key; the keys set:"),
        (["metrics=[test/acc,nope/x]"], "metrics: no run has nope/x; they have:"),
    ],
)
def test_a_key_or_metric_no_run_has_is_refused(args, message, tmp_path, capsys):
    fake_run(tmp_path / "s" / "0", ["model.optimizer.lr=1e-3", "seed=1"], 0.9)
    assert report.main([f"sweep={tmp_path / 's'}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "s" / "report.md").exists()  # nothing written over


def test_runs_that_are_not_runs_and_a_broken_config_are_one_line(tmp_path, capsys):
    from mnistlab.lab import compare

    (tmp_path / "empty").mkdir()
    assert report.main([f"runs=[{tmp_path / 'empty'}]"]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    written_run(tmp_path / "a", [], 0.9)
    written_run(tmp_path / "b", ["model.optimizer.lr=3e-4"], 0.9)
    (tmp_path / "b" / ".hydra" / "config.yaml").write_text("model: [unclosed\n  lr: 1\n")
    assert compare.main([f"runs=[{tmp_path / 'a'},{tmp_path / 'b'}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.yaml: cannot read the run's config" in err and "\n" not in err


def test_a_full_disk_ends_report_and_compare_in_one_line_and_keeps_their_files(
    tmp_path, monkeypatch, capsys
):
    from mnistlab.lab import compare

    sweep = tmp_path / "sweep"
    for n, (lr, seed) in enumerate([("1e-3", 1), ("1e-3", 2), ("3e-4", 1), ("3e-4", 2)]):
        fake_run(sweep / str(n), [f"model.optimizer.lr={lr}", f"seed={seed}"], 0.9 + n / 100)
        (sweep / str(n) / ".hydra").mkdir()
        (sweep / str(n) / ".hydra" / "config.yaml").write_text(f"seed: {seed}\nlr: {lr}\n")
    assert report.main([f"sweep={sweep}"]) == 0
    assert compare.main([f"sweep={sweep}"]) == 0
    written = {p: p.read_bytes() for p in sweep.iterdir() if p.is_file()}
    assert {"report.md", "report.csv", "report.tex", "compare.md", "curve_val_acc.pdf"} - {
        p.name for p in written
    } == {"curve_val_acc.pdf"}  # fake runs have no curves
    capsys.readouterr()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mnistlab.lab.files.os.fsync", full)
    for command, name in ((report, "report.md"), (compare, "compare.md")):
        assert command.main([f"sweep={sweep}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{sweep / name}: No space left on device" in err, err
    assert {p: p.read_bytes() for p in sweep.iterdir() if p.is_file()} == written


def test_odd_values_in_records_are_named_and_never_averaged(tmp_path, capsys):
    """NaN, Infinity, `true` and a string where numbers belong: each named, left out of the
    statistics, no traceback; a run whose overrides are a string is refused naming its file."""
    sweep = tmp_path / "sweep"
    for n, acc in enumerate([0.9, 0.8, 0.7, 0.6]):
        fake_run(sweep / str(n), ["model.optimizer.lr=1e-3", f"seed={n}"], acc)
    (sweep / "1" / "results.json").write_text('{"metrics": {"test/acc": NaN, "val/acc_best": 0.8}}')
    (sweep / "2" / "results.json").write_text('{"metrics": {"test/acc": true}}')
    job = json.loads((sweep / "3" / "job.json").read_text())
    (sweep / "3" / "job.json").write_text(json.dumps({**job, "wall_s": "abc"}))
    (sweep / "3" / "results.json").write_text('{"metrics": {"test/acc": Infinity}}')
    assert report.main([f"sweep={sweep}", "figures=false"]) == 0
    out, err = capsys.readouterr()
    (row,) = csv.DictReader((sweep / "report.csv").open())
    assert (row["test/acc:n"], float(row["test/acc:mean"])) == ("1", 0.9)
    assert (row["wall_s:n"], row["val/acc_best:n"]) == ("3", "2")
    assert "nan" not in out.lower() and "inf" not in out.lower()
    for named in ("1/results.json: test/acc is nan", "2/results.json: test/acc=true is not a",
                  '3/job.json: wall_s="abc" is not a', "3/results.json: test/acc is inf"):  # fmt: skip
        assert named in err, (named, err)
    job = json.loads((sweep / "0" / "job.json").read_text())
    (sweep / "0" / "job.json").write_text(json.dumps({**job, "overrides": "seed=1"}))
    assert report.main([f"sweep={sweep}"]) == 2
    assert "0/job.json: not a list of overrides" in capsys.readouterr().err


def test_report_checks_its_output_folder_first(tmp_path, capsys):
    sweep, taken = tmp_path / "sweep", tmp_path / "a_file"
    fake_run(sweep / "0", ["seed=1"], 0.9)
    taken.write_text("mine\n")
    assert report.main([f"sweep={sweep}", f"out={taken}"]) == 2
    assert "out=" in capsys.readouterr().err and taken.read_text() == "mine\n"


def test_small_metrics_keep_their_digits_in_compare_and_the_sweep_summary():
    """A regressor's loss of 1.4e-05 is not 0.0000 (three significant digits below 0.001)."""
    from mnistlab.lab import compare, sweeps

    assert compare._metric_cell({1: 1.431e-05}, {}, True, False) == "1.43e-05"
    assert (
        compare._metric_cell({1: 1.431e-05}, {1: 2.5e-05}, False, False) == "1.43e-05, Δ -1.07e-05"
    )
    assert sweeps._num(1.431e-05) == "1.43e-05" and sweeps._num(0.97) == "0.9700"


def test_a_continued_sweep_job_s_wall_time_adds_its_earlier_attempts(tmp_path):
    from mnistlab.lab import sweeps

    sweeps.begin(tmp_path, ["seed=1"])
    sweeps.record(tmp_path, status="interrupted", wall_s=3.5)
    sweeps.begin(tmp_path, ["seed=1", "resume=auto"])  # continued by the same sweep command
    sweeps.record(tmp_path, status="completed", wall_s=2.0)
    job = sweeps.read_job(tmp_path)
    assert (job["status"], job["wall_s"], job["overrides"]) == ("completed", 5.5, ["seed=1"])

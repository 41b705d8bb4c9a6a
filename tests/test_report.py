"""The results-over-seeds report (mnistlab.report) on run folders written here: grouping,
statistics, what is left out, and its one-line refusals. The slow tier runs it on a real sweep."""

import csv
import json

import pytest
from test_sweeps import student_t_975

from mnistlab import report


def fake_run(folder, overrides, acc=None, status="completed"):
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"overrides": overrides, "status": status,
                                                 "wall_s": 1.0}))  # fmt: skip
    if acc is not None:
        metrics = {"test/acc": acc, "val/acc_best": acc, "test/loss": 1 - acc}
        (folder / "results.json").write_text(json.dumps({"metrics": metrics}))


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30])
def test_student_t_quantiles_match_arbitrary_precision(df):
    assert report.t_quantile(0.975, df) == pytest.approx(student_t_975(df), abs=1e-12)


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
    assert "| model.optimizer.lr=3e-4 | 1 | 2 | 0.8000 |" in capsys.readouterr().out
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
        (["sweep=.", "colour=red"], "colour=red: not an option of the report"),
    ],
)
def test_a_wrong_report_command_is_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert report.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err

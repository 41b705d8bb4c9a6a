"""What `make report` writes for a paper: report.tex (caption, label, booktabs, rounding by the
spread, rows ordered by validation, the best marked; compiled with pdflatex), and figures for a
column (3.3 in, 8 pt text, TrueType fonts, no title, labels from a map, the metrics= option)."""

import json
import os
import re
import shutil
import subprocess

import pytest
from test_report import written_run

from mnistlab.lab import report
from mnistlab.lab.tables import rounded

IN_CI = os.environ.get("CI") == "true"


def paper_sweep(root):
    """2 configurations x 3 seeds, with val/acc curves: lr=3e-4 wins on test but loses on
    validation, so a table ranked by test would put it first."""
    sweep = root / "sweep"
    n = 0
    for lr, val, test in (("3e-4", 0.950, 0.980), ("1e-3", 0.970, 0.960)):
        for seed in (1, 2, 3):
            folder = sweep / str(n)
            written_run(folder, [f"model.optimizer.lr={lr}", f"seed={seed}"], test,
                        curve=[val - 0.1, val - 0.02 + seed / 1000, val + seed / 1000])  # fmt: skip
            results = {"metrics": {"val/acc_best": val + seed / 1000, "test/acc": test + seed / 500,
                                   "test/loss": 46.2029 + 38.9523 * (seed - 2)},
                       "reported": ["val/acc_best", "test/acc", "test/loss"],
                       "optimized": {"metric": "val/acc_best", "mode": "max"},
                       "per_class": {c: {"precision": 0.9, "recall": 0.8 + seed / 100,
                                         "f1": f1 + seed / 100, "support": 50}
                                     for c, f1 in (("cat", 0.7), ("dog", 0.9))}}  # fmt: skip
            (folder / "results.json").write_text(json.dumps(results))
            n += 1
    return sweep


def test_scores_per_class_agree_with_scikit_learn():
    import torch

    from mnistlab.classify.scores import per_class

    truth = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])  # class 3 is never predicted
    guess = torch.tensor([0, 1, 0, 1, 2, 2, 2, 0, 2, 0])
    matrix = torch.zeros(4, 4, dtype=torch.long)
    for t, g in zip(truth, guess, strict=True):
        matrix[t, g] += 1
    table = per_class(matrix, ["a", "b", "c", "d"])
    expected = {"precision": [2 / 4, 1 / 2, 3 / 4, 0], "recall": [2 / 3, 1 / 2, 3 / 4, 0],
                "f1": [4 / 7, 1 / 2, 3 / 4, 0], "support": [3, 2, 4, 1]}  # fmt: skip
    for column, values in expected.items():
        assert table[column].tolist() == pytest.approx(values, abs=1e-12), column
    sklearn = pytest.importorskip("sklearn.metrics", reason="scikit-learn: make install-digits")
    p, _, f, _ = sklearn.precision_recall_fscore_support(truth, guess, zero_division=0)
    assert table.f1.tolist() == pytest.approx(f.tolist(), abs=1e-12)
    assert table.precision.tolist() == pytest.approx(p.tolist(), abs=1e-12)


def test_two_metrics_alike_in_words_keep_their_names_in_the_tex_table(tmp_path):
    """test/loss (a classifier's) and test_loss (a module of one's own) both read "Test loss"."""
    runs = []
    for n, name in enumerate(("test/loss", "test_loss")):
        written_run(folder := tmp_path / f"r{n}", [f"seed={n}"], 0.9)
        results = {"metrics": {name: 0.5}, "reported": [name]}
        (folder / "results.json").write_text(json.dumps(results))
        runs.append(str(folder))
    out = tmp_path / "out"
    assert report.main([f"runs=[{','.join(runs)}]", f"out={out}", "figures=false"]) == 0
    tex = (out / "report.tex").read_text()
    assert r"test/loss" in tex and r"test\_loss" in tex


@pytest.mark.parametrize(
    ("mean", "spread", "shown"),
    [(46.2029, 38.9523, ("46", "39")), (0.98123, 0.00234, ("0.9812", "0.0023")),
     (0.98123, 0.0123, ("0.981", "0.012")), (0.8, None, ("0.8000", None)),
     (1234.5, None, ("1234", None))],
)  # fmt: skip
def test_values_are_rounded_by_their_spread(mean, spread, shown):
    assert rounded(mean, spread) == shown


def test_report_tex_is_a_table_a_paper_takes(tmp_path, capsys):
    sweep = paper_sweep(tmp_path)
    labels = tmp_path / "labels.yaml"
    labels.write_text("model.optimizer.lr=1e-3: 'Adam, $10^{-3}$'\ntest/acc: Test acc. (%)\n")
    assert report.main([f"sweep={sweep}", f"labels={labels}", "percent=true", "pm=std"]) == 0
    tex = (sweep / "report.tex").read_text()
    for part in (r"\begin{table*}", r"\caption{", r"\label{tab:sweep}", r"\toprule", r"\midrule",
                 r"\bottomrule", "standard deviation", r"$n = 3$"):  # fmt: skip
        assert part in tex, part
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")].strip().splitlines()[1:]
    # Ordered by validation: lr=1e-3 first and bold, though lr=3e-4 is better on test.
    assert body[0].startswith(r"\bfseries Adam, $10^{-3}$ & \bfseries 3 &")  # math as written
    assert body[1].startswith("lr=3e-4 & 3 &") and r"\bfseries" not in body[1]
    assert r"Test acc. (\%)" in tex and "Val. accuracy (best) (\\%)" in tex
    assert "46 $\\pm$ 39" in body[0]  # rounded by its spread, not 46.2029 +- 38.9523
    per_class = (sweep / "report_per_class.md").read_text()
    assert "| cat     | 0.720 ± 0.010" in per_class, per_class  # F1's std over the 3 seeds
    assert "cat/f1:ci95" in (sweep / "report_per_class.csv").read_text()
    printed = capsys.readouterr().out
    assert printed.index("Adam, $10^{-3}$ (best val.)") < printed.index("model.optimizer.lr=3e-4")

    assert report.main([f"sweep={sweep}", "order=sweep"]) == 0
    tex = (sweep / "report.tex").read_text()
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")].strip().splitlines()[1:]
    assert body[0].startswith("lr=3e-4") and body[1].startswith(r"\bfseries lr=1e-3")

    if shutil.which("pdflatex") is None:
        if IN_CI:
            pytest.fail("pdflatex is missing (CI=true): apt-get install texlive-latex-recommended")
        pytest.skip("no pdflatex here (apt-get install texlive-latex-recommended): the .tex"
                    " structure was checked, not compiled")  # fmt: skip
    (sweep / "paper.tex").write_text(
        "\\documentclass{article}\\usepackage{booktabs}\\usepackage{graphicx}\\begin{document}"
        "\\input{report.tex}\\input{curve_val_acc.tex}\\input{final_metrics.tex}\\end{document}\n"
    )
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
                          cwd=sweep, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]


def test_figures_fit_a_column_with_truetype_fonts(tmp_path):
    sweep = paper_sweep(tmp_path)
    labels = tmp_path / "labels.yaml"
    labels.write_text("model.optimizer.lr=1e-3: Adam fast\n")
    assert report.main([f"sweep={sweep}", f"labels={labels}", "percent=true"]) == 0
    for stem in ("curve_val_acc", "final_metrics"):
        pdf = (sweep / f"{stem}.pdf").read_bytes()
        assert b"/Type3" not in pdf and b"/FontFile2" in pdf  # TrueType embedded, no Type 3
        width = float(re.search(rb"/MediaBox \[\s*0 0 ([\d.]+)", pdf).group(1))
        assert width == pytest.approx(3.3 * 72, abs=0.5)
        svg = (sweep / f"{stem}.svg").read_text()
        sizes = [float(s) for s in re.findall(r"font-size:\s*([\d.]+)px", svg)]
        sizes += [float(s) for s in re.findall(r"font:\s*(?:\w+\s+)*([\d.]+)px", svg)]
        assert sizes and min(sizes) >= 8, sizes  # points at 72 per inch: 8 pt or more
        assert "<text" in svg  # editable text, not paths
        assert "mean and 95% CI" not in svg  # no baked-in title; the caption is in the .tex
        caption = (sweep / f"{stem}.tex").read_text()
        assert r"\caption{" in caption and f"{stem}.pdf" in caption
    svg = (sweep / "curve_val_acc.svg").read_text()
    assert "Adam fast (n=3)" in svg and "lr=3e-4 (n=3)" in svg and "Val. accuracy (%)" in svg

    for path in sweep.glob("*.pdf"):
        path.unlink()
    assert report.main([f"sweep={sweep}", "metrics=[test/acc]", "out=" + str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.pdf")) == ["final_metrics.pdf"]


@pytest.mark.parametrize(
    ("args", "message"),
    [(["pm=sem"], "pm=sem: one of ci, std, se"), (["order=test"], "order=test: val"),
     (["labels=/no/such.yaml"], "labels=/no/such.yaml: No such file"),
     (["width=0"], "width=0.0: a width in inches")],
)  # fmt: skip
def test_a_wrong_paper_option_is_one_line(tmp_path, capsys, args, message):
    sweep = paper_sweep(tmp_path)
    assert report.main([f"sweep={sweep}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_labels_name_groups_as_a_researcher_writes_them(tmp_path, capsys):
    """A short key and another spelling of the number name the group; a label that names
    nothing is said; a malformed per_class is named and its run counted apart (n=k)."""
    sweep = paper_sweep(tmp_path)
    results = json.loads((sweep / "0" / "results.json").read_text())
    (sweep / "0" / "results.json").write_text(json.dumps({**results, "per_class": [1, 2]}))
    labels = tmp_path / "labels.yaml"
    labels.write_text("lr=0.001: Adam fast\nlr=0.5: nothing\n")
    assert report.main([f"sweep={sweep}", f"labels={labels}", "width=6.9"]) == 0
    captured = capsys.readouterr()
    assert "Adam fast (best val.)" in captured.out
    assert "labels: 'lr=0.5' names no group" in captured.err
    assert "0/results.json: per_class is not" in captured.err
    per_class = (sweep / "report_per_class.md").read_text()
    assert "(n=2)" in per_class  # lr=3e-4's three runs, one without scores per class
    assert (sweep / "curve_val_acc.tex").read_text().startswith(r"\begin{figure*}")  # two columns
    assert report.main([f"sweep={sweep}", "metrics=[test/acc]"]) == 0
    assert not list(sweep.glob("curve_*"))  # no figure of the earlier report is left behind

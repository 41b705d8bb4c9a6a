"""A report's table as markdown (the terminal and summary.md), CSV and LaTeX (booktabs)."""

import csv
from pathlib import Path


def _cell(stats: dict) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["ci95"] is None:
        return f"{stats['mean']:.4f}"
    return f"{stats['mean']:.4f} ± {stats['ci95']:.4f}"


def markdown(table: list[dict], metrics: list[str]) -> str:
    lines = ["# Results over seeds", "",
             "mean ± half-width of the 95% confidence interval (Student t, n - 1 d.o.f.);"
             " std, min and max in report.csv", "",
             "| group | n | failed | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]  # fmt: skip
    for row in table:
        cells = " | ".join(_cell(row["stats"][m]) for m in metrics)
        lines.append(f"| {row['group']} | {row['n']} | {row['failed']} | {cells} |")
    return "\n".join(lines) + "\n"


def write_csv(table: list[dict], metrics: list[str], path: Path) -> None:
    fields = ["n", "mean", "std", "ci95", "min", "max"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "runs", "failed", *(f"{m}:{k}" for m in metrics for k in fields)])
        for row in table:
            writer.writerow([row["group"], row["n"], row["failed"],
                             *(row["stats"][m][k] for m in metrics for k in fields)])  # fmt: skip


TEX = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex(table: list[dict], metrics: list[str]) -> str:
    def tex(text: str) -> str:
        return "".join(TEX.get(c, c) for c in text)

    def cell(stats):
        if stats["mean"] is None:
            return "--"
        if stats["ci95"] is None:
            return f"{stats['mean']:.4f}"
        return f"{stats['mean']:.4f} $\\pm$ {stats['ci95']:.4f}"

    head = " & ".join(["Configuration", "$n$", *(tex(m) for m in metrics)])
    lines = [r"\begin{tabular}{l r " + "r " * len(metrics) + "}", r"\toprule", head + r" \\",
             r"\midrule"]  # fmt: skip
    for row in table:
        lines.append(" & ".join([tex(row["group"]), str(row["n"]),
                                 *(cell(row["stats"][m]) for m in metrics)]) + r" \\")  # fmt: skip
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"

"""A report's table, made and written with pandas: one row per group of runs, and for each metric
n, mean, std, the 95% confidence interval's half-width (Student t), min and max; as markdown (the
terminal and summary.md, through tabulate), CSV and LaTeX (booktabs rules, through pandas' Styler).
"""

import pandas as pd

STATS = ["n", "mean", "std", "ci95", "min", "max"]
NOTE = ("mean ± half-width of the 95% confidence interval (Student t, n - 1 d.o.f.);"
        " std, min and max in report.csv")  # fmt: skip


def summarize(groups: dict[str, list[dict]], metrics: list[str]) -> pd.DataFrame:
    """Indexed by group label, in `groups`' order: `runs` (averaged: the completed ones),
    `failed`, and a (metric, stat) column per metric and `STATS`."""
    from scipy import stats  # its t quantile; imported when a report is made: start-up stays light

    done = [{"group": label, **r["metrics"]} for label, runs in groups.items() for r in runs
            if r["metrics"]]  # fmt: skip
    values = pd.DataFrame(done, columns=["group", *metrics]).astype({m: float for m in metrics})
    found = values.groupby("group", sort=False)[metrics].agg(["count", "mean", "std", "min", "max"])
    found = found.rename(columns={"count": "n"}, level=1).reindex(list(groups))
    for metric in metrics:
        n = found[(metric, "n")].fillna(0)
        found[(metric, "n")] = n.astype(int)
        found[(metric, "ci95")] = stats.t.ppf(0.975, n - 1) * found[(metric, "std")] / n**0.5
    table = found.reindex(columns=pd.MultiIndex.from_product([metrics, STATS]))
    table.insert(
        0, ("failed", ""), [sum(not r["metrics"] for r in runs) for runs in groups.values()]
    )
    table.insert(
        0, ("runs", ""), [sum(bool(r["metrics"]) for r in runs) for runs in groups.values()]
    )
    return table.rename_axis("group")


def ranked(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The best mean of `metric` first: lowest for a loss or a time; groups without it last."""
    lower = "loss" in metric or metric == "wall_s"
    return table.sort_values((metric, "mean"), ascending=lower, na_position="last", kind="stable")


def _cells(table: pd.DataFrame, metrics: list[str], pm: str, none: str) -> pd.DataFrame:
    """mean ± CI per metric; `(n=k)` after it when fewer of the group's runs have the metric."""

    def cell(mean, ci, n, runs):
        if pd.isna(mean):
            return none
        text = f"{mean:.4f}" if pd.isna(ci) else f"{mean:.4f}{pm}{ci:.4f}"
        return text if n == runs else f"{text} (n={n})"

    shown = table[["runs", "failed"]].droplevel(1, axis=1)
    for m in metrics:
        columns = (table[(m, "mean")], table[(m, "ci95")], table[(m, "n")], table[("runs", "")])
        shown[m] = [cell(*values) for values in zip(*columns, strict=True)]
    return shown


def markdown(table: pd.DataFrame, metrics: list[str]) -> str:
    shown = _cells(table, metrics, " ± ", "-").rename(columns={"runs": "n"})
    return f"# Results over seeds\n\n{NOTE}\n\n{shown.to_markdown(tablefmt='github')}\n"


def csv_text(table: pd.DataFrame) -> str:
    flat = table.copy()
    flat.columns = [c if not s else f"{c}:{s}" for c, s in flat.columns]
    return flat.to_csv()


def latex(table: pd.DataFrame, metrics: list[str]) -> str:
    shown = _cells(table, metrics, r" $\pm$ ", "--").rename(columns={"runs": "n"})
    shown = shown.drop(columns="failed").rename_axis("Configuration").reset_index()
    styler = shown.style.hide(axis="index").format_index(escape="latex", axis=1)
    styler = styler.format(escape="latex", subset=["Configuration"])
    return styler.to_latex(hrules=True, column_format="l" + "r" * (len(shown.columns) - 1))

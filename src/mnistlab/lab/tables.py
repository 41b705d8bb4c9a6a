"""A report's table, made and written with pandas: one row per group of runs, and for each metric
n, mean, std, standard error, the 95% confidence interval's half-width (Student t), min and max;
as markdown (the terminal and summary.md, through tabulate), CSV (every statistic, unrounded) and
LaTeX (a booktabs `table` with its caption and label, through pandas' Styler).

Shown cells are `mean ± spread`, both rounded where the spread's second significant digit is
(38.9523 -> 39, 0.00234 -> 0.0023); the spread is the CI half-width, the std or the standard
error (`Style.pm`). A metric without a spread (one run) keeps four significant digits.
"""

import logging
import math
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger("mnistlab.lab.report")
STATS = ["n", "mean", "std", "se", "ci95", "min", "max"]
SPREADS = {  # pm=: the statistic after ±, and how a caption says what it is
    "ci": ("ci95", "the half-width of the 95% confidence interval of the mean (Student's t)"),
    "std": ("std", "the standard deviation over runs (n-1)"),
    "se": ("se", "the standard error of the mean (std / sqrt(n))"),
}
STAGES = {"train": "Train", "val": "Val.", "test": "Test"}
WORDS = {"acc": "accuracy", "acc_best": "accuracy (best)", "loss": "loss", "ece": "ECE",
         "loss_epoch": "loss (epoch mean)", "f1_macro": "F1 (macro)",
         "wall_s": "Wall time (s)"}  # fmt: skip


@dataclass
class Style:
    """How a table is shown: `pm` (ci | std | se), `labels` (a group label or metric name ->
    its text in print), `percent` (accuracies x 100), `best` (the group marked best by
    validation) and `order` (what the rows are ordered by, for the caption)."""

    pm: str = "ci"
    labels: dict[str, str] = field(default_factory=dict)
    percent: bool = False
    best: str | None = None
    order: str = "in the order the runs were started"

    def label(self, group: str, short: bool = True) -> str:
        """A group's text: the label map's, else (`short`) each override by its last key part
        where that names one key alone (`model.optimizer.lr=0.001` -> `lr=0.001`)."""
        if group in self.labels or not short:
            return self.labels.get(group, group)
        return " ".join(self.shorter.get(o.partition("=")[0], o.partition("=")[0])
                        + o.partition("=")[1] + o.partition("=")[2] for o in group.split(" "))  # fmt: skip

    shorter: dict[str, str] = field(default_factory=dict)


def resolve_labels(given: dict[str, str], groups, metrics, shorter: dict[str, str]) -> dict:
    """labels= entries by the group or metric they name: a group as its overrides were written
    in any order, a key by its short name, a number in any spelling (`lr=1e-3` names the group
    `model.optimizer.lr=0.001`). An entry that names nothing is said and left unused."""

    def canonical(text: str) -> tuple:
        parts = []
        for part in str(text).split():
            key, eq, value = part.partition("=")
            key = next((full for full, short in shorter.items() if short == key), key)
            with suppress(ValueError):
                value = repr(float(value))
            parts.append(f"{key}{eq}{value}")
        return tuple(sorted(parts))

    found = {canonical(g): g for g in groups}
    resolved = {}
    for key, text in given.items():
        if key in groups or key in metrics:
            resolved[key] = text
        elif (group := found.get(canonical(key))) is not None:
            resolved[group] = text
        else:
            log.warning("labels: %r names no group (%s) and no metric: left unused", key,
                        "; ".join(list(groups)[:4]) + ("; ..." if len(groups) > 4 else ""))  # fmt: skip
    return resolved


def shorter_keys(groups) -> dict[str, str]:
    """Override keys -> their last part, for the keys whose last part no other key has."""
    keys = {o.partition("=")[0] for g in groups for o in g.split(" ") if "=" in o}
    last = [k.rpartition(".")[2] for k in keys]
    return {k: k.rpartition(".")[2] for k in keys if last.count(k.rpartition(".")[2]) == 1}


def summarize(groups: dict[str, list[dict]], metrics: list[str]) -> pd.DataFrame:
    """Indexed by group label, in `groups`' order: `runs` (averaged: the completed ones),
    `failed`, and a (metric, stat) column per metric and `STATS`."""
    from scipy import stats  # its t quantile; imported when a report is made: start-up stays light

    done = [{"group": label, **r["metrics"]} for label, runs in groups.items() for r in runs
            if r["metrics"]]  # fmt: skip
    values = pd.DataFrame(done, columns=["group", *metrics]).astype({m: float for m in metrics})
    found = values.groupby("group", sort=False)[metrics].agg(["count", "mean", "std", "min", "max"])
    found = found.rename(columns={"count": "n"}, level=1).reindex(list(groups))
    n = found.xs("n", axis=1, level=1).fillna(0).astype(int)
    se = found.xs("std", axis=1, level=1) / n**0.5
    derived = {"n": n, "se": se, "ci95": se * stats.t.ppf(0.975, n - 1)}
    parts = [found.xs(s, axis=1, level=1, drop_level=False) for s in ("mean", "std", "min", "max")]
    parts += [frame.set_axis(pd.MultiIndex.from_product([frame.columns, [name]]), axis=1)
              for name, frame in derived.items()]  # fmt: skip
    table = pd.concat(parts, axis=1).reindex(columns=pd.MultiIndex.from_product([metrics, STATS]))
    counts = pd.DataFrame({("runs", ""): [sum(bool(r["metrics"]) for r in runs) for runs in groups.values()],
                           ("failed", ""): [sum(not r["metrics"] for r in runs) for runs in groups.values()]},
                          index=table.index)  # fmt: skip
    table = pd.concat([counts, table], axis=1)
    return table.rename_axis("group")


def ordered(table: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The best mean of `metric` first (`mode`: max or min); groups without it last."""
    return table.sort_values((metric, "mean"), ascending=mode == "min", na_position="last",
                             kind="stable")  # fmt: skip


def rounded(mean: float, spread: float | None) -> tuple[str, str | None]:
    """`mean` and `spread` as text, to the second significant digit of the spread."""
    if spread is None or pd.isna(spread) or spread <= 0 or not math.isfinite(spread):
        digits = max(0, 3 - math.floor(math.log10(abs(mean)))) if mean else 4
        return f"{mean:.{digits}f}", None
    spread = float(f"{spread:.2g}")  # two significant digits, then as many decimals as they need
    digits = max(0, 1 - math.floor(math.log10(spread)))
    return f"{mean:.{digits}f}", f"{spread:.{digits}f}"


def in_percent(metric: str, style: Style) -> bool:
    return style.percent and "acc" in metric.rpartition("/")[2]


def column(metric: str, style: Style) -> str:
    """A metric's column title: the label map's, else words (`test/acc` -> Test accuracy)."""
    if metric in style.labels:
        return style.labels[metric]
    stage, _, name = metric.rpartition("/")
    text = " ".join(p for p in (STAGES.get(stage, stage), WORDS.get(name, name.replace("_", " ")))
                    if p)  # fmt: skip
    text = text[:1].upper() + text[1:]
    return f"{text} (%)" if in_percent(metric, style) else text


def metrics_of(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(m for m, _ in table.columns if m not in ("runs", "failed")))


def _cells(table: pd.DataFrame, style: Style, pm: str, none: str):
    """mean ± spread per metric; `(n=k)` after it when fewer of the group's runs have the metric."""
    spread = SPREADS[style.pm][0]

    def cell(metric, mean, half, n, runs):
        if pd.isna(mean):
            return none
        scale = 100.0 if in_percent(metric, style) else 1.0
        mean_text, half_text = rounded(mean * scale, None if pd.isna(half) else half * scale)
        text = mean_text if half_text is None else f"{mean_text}{pm}{half_text}"
        return text if n == runs else f"{text} (n={n})"

    shown = table[["runs", "failed"]].droplevel(1, axis=1)
    for m in metrics_of(table):
        columns = (table[(m, "mean")], table[(m, spread)], table[(m, "n")], table[("runs", "")])
        shown[m] = [cell(m, *values) for values in zip(*columns, strict=True)]
    return shown


def note(style: Style) -> str:
    what = SPREADS[style.pm][1]
    best = "; the best by validation is marked" if style.best is not None else ""
    return f"mean ± {what}; rows {style.order}{best}. Every statistic, unrounded, in report.csv"


def markdown(table: pd.DataFrame, style: Style | None = None) -> str:
    style = style or Style()
    shown = _cells(table, style, " ± ", "-").rename(columns={"runs": "n"})
    shown.index = [style.label(g, short=False) + (" (best val.)" if g == style.best else "")
                   for g in shown.index]  # fmt: skip
    shown = shown.rename_axis("group").rename(
        columns={m: f"{m} (%)" for m in metrics_of(table) if in_percent(m, style)}
    )
    return f"# Results over seeds\n\n{note(style)}\n\n{shown.to_markdown(tablefmt='github', disable_numparse=True)}\n"


def csv_text(table: pd.DataFrame) -> str:
    flat = table.copy()
    flat.columns = [c if not s else f"{c}:{s}" for c, s in flat.columns]
    return flat.to_csv()


def latex(table: pd.DataFrame, style: Style, label: str) -> str:
    """A `table` float for `\\usepackage{booktabs}`: caption (n, what ± is, the order), label."""
    shown = _cells(table, style, r" $\pm$ ", "--").drop(columns="failed")
    metrics = metrics_of(table)
    titles = [column(m, style) for m in metrics]  # two alike in words: their names instead
    titles = [t if titles.count(t) == 1 else m for t, m in zip(titles, metrics, strict=True)]
    shown.columns = ["n", *map(tex_text, titles)]
    shown.insert(0, "Configuration", [tex_text(style.label(g)) for g in table.index])
    styler = shown.style.hide(axis="index")
    if style.best is not None and style.best in table.index:
        row = list(table.index).index(style.best)
        styler = styler.set_properties(subset=pd.IndexSlice[shown.index[row], :],
                                       **{"font-weight": "bold"})  # fmt: skip
    runs = sorted({int(n) for n in table[("runs", "")]})
    n_text = f"$n = {runs[0]}$" if len(runs) == 1 else f"$n = {runs[0]}$--${runs[-1]}$"
    failed = int(table[("failed", "")].sum())
    caption = (f"Mean $\\pm$ {_tex(SPREADS[style.pm][1])}, over {n_text} completed runs per"
               f" configuration{f' ({failed} failed or stopped runs left out)' if failed else ''}."
               f" Rows {_tex(style.order)}"
               f"{'; the best by validation in bold' if style.best is not None else ''}.")  # fmt: skip
    wide = len(metrics_of(table)) > 2  # wider than a column of a two-column paper: both columns
    return "% \\usepackage{booktabs} in the preamble\n" + styler.to_latex(
        hrules=True, column_format="l" + "r" * (len(shown.columns) - 1),
        environment="table*" if wide else "table",
        position="t", position_float="centering", caption=caption, label=label,
        convert_css=True,
    )  # fmt: skip


def _tex(text: str) -> str:
    return tex_text(text.replace("sqrt(n)", r"$\sqrt{n}$"))


def tex_text(text: str) -> str:
    """`text` for LaTeX: its special characters escaped, except in `$...$` (math, as written)."""
    special = {c: f"\\{c}" for c in "&%#_{}"} | {"$": r"\$", "~": r"\textasciitilde{}",
                                                  "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}  # fmt: skip
    parts = text.split("$")
    if len(parts) % 2 == 0:  # an odd number of $: no math, every $ a dollar
        return "".join(special.get(c, c) for c in text)
    return "$".join(p if i % 2 else "".join(special.get(c, c) for c in p)
                    for i, p in enumerate(parts))  # fmt: skip


def read_labels(path: str) -> dict[str, str]:
    """labels=FILE: a YAML mapping of group labels and metric names to the text shown."""
    import yaml

    from mnistlab.lab import UserError

    try:
        labels = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f"labels={path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"labels={path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in labels.items()
    ):
        raise UserError(f"labels={path}: a mapping of group labels or metric names to text,"
                        ' e.g. "model.optimizer.lr=0.001: Adam, lr 1e-3"')  # fmt: skip
    return {k: str(v) for k, v in labels.items()}


def checked_per_class(value, source: Path) -> dict:
    """A results.json's `per_class` if it is {class: {name: number}}, else {} (said, naming it)."""
    if isinstance(value, dict) and all(
        isinstance(row, dict) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                      and math.isfinite(v) for v in row.values())
        for row in value.values()):  # fmt: skip
        return value
    log.warning("%s: per_class is not {class: {precision: x, recall: x, f1: x, support: n}}: the"
                " run is left out of the scores per class", source)  # fmt: skip
    return {}


def per_class(groups: dict[str, list[dict]], style: Style) -> tuple[str, str] | None:
    """The runs' scores per class (results.json `per_class`) over seeds: markdown with a row per
    class and each group's F1 (mean ± spread), and CSV with every statistic of precision,
    recall and F1; None when no run has them. A value that is no number is left out."""
    scored = {label: [{**r, "metrics": {f"{c}/{k}": float(v) for c, row in r["per_class"].items()
                                        for k, v in row.items() if k in ("precision", "recall", "f1")
                                        and isinstance(v, int | float) and not isinstance(v, bool)}}
                      for r in runs if r.get("per_class")] for label, runs in groups.items()}  # fmt: skip
    scored = {label: runs for label, runs in scored.items() if runs}
    if not scored:
        return None
    metrics = list(dict.fromkeys(m for runs in scored.values() for r in runs for m in r["metrics"]))
    table = summarize(scored, metrics)
    classes = list(dict.fromkeys(m.rpartition("/")[0] for m in metrics))
    spread = SPREADS[style.pm][0]
    shown = pd.DataFrame(index=pd.Index(classes, name="class"))
    completed = {label: sum(bool(r["metrics"]) for r in runs) for label, runs in groups.items()}
    for group in table.index:
        cells = []
        for name in classes:
            mean, half, n = (table.loc[group, (f"{name}/f1", s)] for s in ("mean", spread, "n"))
            text = "-" if pd.isna(mean) else rounded(mean, None if pd.isna(half) else half)
            text = text if isinstance(text, str) else " ± ".join(t for t in text if t)
            cells.append(text if n == completed[group] or text == "-" else f"{text} (n={n})")
        shown[style.label(group, short=False)] = cells
    note_text = f"F1 per class: {note(style).split(';')[0]}"
    return (
        f"# Per class over seeds\n\n{note_text}\n\n{shown.to_markdown(tablefmt='github', disable_numparse=True)}\n",
        csv_text(table),
    )

"""A report's figures, drawn with matplotlib for a paper's column: learning curves over seeds (per
group of runs, the mean curve of a metric and its 95% confidence band, read from the runs'
TensorBoard event files) and the final metrics (per group, mean and the table's spread).

Sized for a column (`width` inches: 3.3 one column, 6.9 two) with 8 pt text at that size;
TrueType (Type 42) fonts in the PDF and editable text in the SVG; no title in the image: each
figure's caption and label are in its .tex beside it. Groups differ by colour, marker and line style,
so the figures read in greyscale too. `make report` calls `curves` and `finals`.
"""

import logging
import math
from pathlib import Path

from mnistlab.lab.files import atomic_write, write_whole
from mnistlab.lab.stats import describe
from mnistlab.lab.tables import SPREADS, Style, column, in_percent, metrics_of, tex_text

log = logging.getLogger("mnistlab.lab.report")

CURVES = {  # metric: (what it is, for the y label and caption; the values it can take)
    "val/acc": ("accuracy on the validation split", (0.0, 1.0)),
    "val/loss": ("loss on the validation split", (0.0, math.inf)),
    "train/loss_epoch": ("training loss, mean over each epoch", (0.0, math.inf)),
}
FORMATS = ("pdf", "svg", "png")
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1))), ("x", "-")]
TEXT = {"font.size": 8, "axes.labelsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
        "legend.fontsize": 8, "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none",
        "axes.spines.top": False, "axes.spines.right": False}  # fmt: skip


def read_curve(folder: Path, metric: str) -> list[float]:
    """A run's values of `metric` (its TensorBoard tag), one per validation, in step order.
    A resumed run's events are read as TensorBoard shows them: the stretch it redid once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # its per-file chatter, and its "out of order event.step ... TensorFlow restart" warning for
    # every resumed run: the purge it announces is how a resumed run is read, on purpose
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    if not any(Path(folder).glob("events.out.tfevents.*")):  # a sweep job's: <job>/<its label>/
        folder = next(
            (p.parent for p in sorted(Path(folder).glob("*/events.out.tfevents.*"))), folder
        )
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    if metric not in events.Tags().get("scalars", []):
        return []
    points = {e.step: e.value for e in events.Scalars(metric)}  # a later write of a step wins
    return [points[s] for s in sorted(points)]


def curves(groups: dict[str, list[dict]], out: Path, metrics=tuple(CURVES), style=None,
           width: float = 3.3) -> list[Path]:  # fmt: skip
    """One figure per metric that any run logged more than once (a curve): each group's mean
    over its completed runs at each epoch, with the 95% confidence interval of that mean
    (Student t) as a band where two or more runs reached the epoch, cut to the values the
    metric can take. A completed run without the curve is named and left out. Returns the
    files written."""
    style = style or Style()
    written = []
    for metric in metrics:
        series, without = {}, []
        for label, runs in groups.items():
            done = [r["folder"] for r in runs if r["metrics"]]
            values = [read_curve(Path(folder), metric) for folder in done]
            without += [folder for folder, v in zip(done, values, strict=True) if not v]
            if any(values):
                series[label] = [v for v in values if v]
        if not series or max(len(v) for s in series.values() for v in s) < 2:
            continue  # not a curve: one point a run (a test metric), or none
        if without:
            log.warning("%s: no events of it in %d completed run(s), left out of its figure: %s",
                        metric, len(without), ", ".join(without))  # fmt: skip
        what, (low, high) = CURVES.get(metric, (column(metric, Style()), (-math.inf, math.inf)))
        scale = 100.0 if in_percent(metric, style) else 1.0
        fig, ax = _figure(width)
        for (label, values), (marker, line) in zip(series.items(), _styles(), strict=False):
            epochs, means, lows, highs = [], [], [], []
            for epoch in range(max(len(v) for v in values)):
                stats = describe([v[epoch] for v in values if len(v) > epoch])
                epochs.append(epoch + 1)
                means.append(stats["mean"] * scale)
                half = math.nan if stats["ci95"] is None else stats["ci95"]  # one run: no band
                lows.append(max(low, stats["mean"] - half) * scale)
                highs.append(min(high, stats["mean"] + half) * scale)
            (drawn,) = ax.plot(epochs, means, marker=marker, linestyle=line, markersize=3.5,
                               linewidth=1.2, label=f"{style.label(label)}"
                               f" (n={len(values)})")  # fmt: skip
            ax.fill_between(epochs, lows, highs, color=drawn.get_color(), alpha=0.18, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(column(metric, style))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, linewidth=0.5)
        ax.legend(frameon=False)
        caption = (f"{what[:1].upper()}{what[1:]} ({metric}) per epoch: the mean over each"
                   " configuration's runs, with the 95% confidence interval of the mean (Student's"
                   " t) as a band.")  # fmt: skip
        written += _save(fig, out / f"curve_{metric.replace('/', '_')}", caption)
    return written


def finals(table, metrics: list[str], out: Path, style=None, width: float = 3.3) -> list[Path]:
    """The final metrics (time aside) as points with the report table's spread (`style.pm`),
    one panel per metric under each other, a row per group in the table's order: the table
    drawn. Returns the files written."""
    from matplotlib.ticker import MaxNLocator

    style = style or Style()
    shown = [m for m in metrics_of(table) if m in metrics and m != "wall_s"
             and table[(m, "n")].max() > 0]  # fmt: skip
    if not shown:
        return []
    spread = SPREADS[style.pm][0]
    rows = list(table.index)[::-1]  # the table's first row at the top
    fig, axes = _figure(width, panels=len(shown), rows=len(rows))
    for ax, metric in zip(axes, shown, strict=True):
        scale = 100.0 if in_percent(metric, style) else 1.0
        for y, group in enumerate(rows):
            mean, half = table.loc[group, (metric, "mean")], table.loc[group, (metric, spread)]
            if math.isnan(mean):
                continue
            half = 0.0 if math.isnan(half) else half
            ax.errorbar(mean * scale, y, xerr=half * scale, color="black", capsize=2,
                        fmt="D" if group == style.best else "o", markersize=3.5, linewidth=1)  # fmt: skip
        ax.set_xlabel(column(metric, style))
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.grid(axis="x", alpha=0.3, linewidth=0.5)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_yticks(range(len(rows)), [style.label(g) for g in rows])
    caption = (f"Final metrics per configuration: mean $\\pm$ {SPREADS[style.pm][1]}, as in"
               f" the table{'; the best by validation drawn as a diamond' if style.best else ''}.")  # fmt: skip
    return _save(fig, out / "final_metrics", caption)


def _figure(width: float, panels: int = 1, rows: int = 0):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    plt.rcParams.update(TEXT)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # its font subsetting, at INFO
    height = min(width * 0.68, 2.6) if not rows else panels * (0.45 + 0.2 * rows)
    fig, axes = plt.subplots(panels, 1, figsize=(width, height), layout="constrained",
                             squeeze=False)  # fmt: skip
    return (fig, axes[0][0]) if not rows else (fig, list(axes[:, 0]))


def _styles():
    while True:
        yield from STYLES


def _save(fig, stem: Path, caption: str) -> list[Path]:
    """PDF, SVG and PNG, each written whole or not at all, and beside them the figure's LaTeX
    with its caption and label (`\\input{curve_val_acc.tex}`)."""
    import matplotlib.pyplot as plt

    written = []
    for fmt in FORMATS:
        with atomic_write(stem.with_suffix(f".{fmt}")) as f:
            fig.savefig(f, format=fmt, dpi=300)
        written.append(stem.with_suffix(f".{fmt}"))
    plt.close(fig)
    wide = fig.get_figwidth() > 3.5  # wider than one column of a two-column paper: both
    env = "figure*" if wide else "figure"
    write_whole(stem.with_suffix(".tex"), f"\\begin{{{env}}}[t]\n  \\centering\n"
                f"  \\includegraphics{{{stem.name}.pdf}}\n  \\caption{{{tex_text(caption)}}}\n"
                f"  \\label{{fig:{stem.name.replace('_', '-')}}}\n\\end{{{env}}}\n")  # fmt: skip
    return written


def remove_stale(out: Path, drawn: list[Path]) -> None:
    """A figure an earlier report drew in `out` and this one did not (other metrics= or no
    curves): its files go, so that `\\input{curve_x.tex}` never brings back an old figure."""
    kept = {p.stem for p in drawn}
    for path in [*out.glob("curve_*"), *out.glob("final_metrics.*")]:
        if path.stem not in kept and path.suffix in (".pdf", ".svg", ".png", ".tex"):
            path.unlink(missing_ok=True)

"""Learning curves over seeds: per group of runs, the mean curve of a metric and its 95% confidence
band, read from the runs' TensorBoard event files and drawn with matplotlib.

`make report` calls `curves` for its groups; one figure per metric, as PNG, SVG and PDF.
"""

import logging
import math
from pathlib import Path

from mnistlab.lab.files import atomic_write
from mnistlab.lab.stats import describe

log = logging.getLogger("mnistlab.lab.report")

CURVES = {  # metric: (y label, title, the values it can take)
    "val/acc": ("accuracy (validation split)", "Validation accuracy", (0.0, 1.0)),
    "val/loss": ("cross-entropy (validation split)", "Validation loss", (0.0, math.inf)),
    "train/loss_epoch": ("cross-entropy (training, epoch mean)", "Training loss", (0.0, math.inf)),
}
FORMATS = ("png", "svg", "pdf")


def read_curve(folder: Path, metric: str) -> list[float]:
    """A run's values of `metric` (its TensorBoard tag), one per validation, in step order.
    A resumed run's events are read as TensorBoard shows them: the stretch it redid once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # its per-file chatter
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
    if metric not in events.Tags().get("scalars", []):
        return []
    points = {e.step: e.value for e in events.Scalars(metric)}  # a later write of a step wins
    return [points[s] for s in sorted(points)]


def curves(groups: dict[str, list[dict]], out: Path, metrics=tuple(CURVES)) -> list[Path]:
    """One figure per metric that any run logged more than once (a curve; `CURVES` gives the
    classifier's their labels, any other metric is named as logged): each group's mean over its completed runs at
    each epoch, with the 95% confidence interval of that mean (Student t) as a band where two or
    more runs reached the epoch, cut to the values the metric can take. A completed run without
    the curve in its event files is named and left out of it. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

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
        ylabel, title, (low, high) = CURVES.get(metric, (metric, metric, (-math.inf, math.inf)))
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=150, layout="constrained")
        for label, values in series.items():
            epochs, means, lows, highs = [], [], [], []
            for epoch in range(max(len(v) for v in values)):
                stats = describe([v[epoch] for v in values if len(v) > epoch])
                epochs.append(epoch + 1)
                means.append(stats["mean"])
                if stats["ci95"] is None:  # one run reached this epoch: no band
                    lows.append(math.nan)
                    highs.append(math.nan)
                else:
                    lows.append(max(low, stats["mean"] - stats["ci95"]))
                    highs.append(min(high, stats["mean"] + stats["ci95"]))
            (line,) = ax.plot(epochs, means, marker="o", markersize=3, linewidth=1.6,
                              label=f"{label} (n={len(values)})")  # fmt: skip
            ax.fill_between(epochs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: mean and 95% CI over seeds")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        stem = out / f"curve_{metric.replace('/', '_')}"
        for fmt in FORMATS:  # written whole or not at all: a killed report leaves no half figure
            with atomic_write(stem.with_suffix(f".{fmt}")) as f:
                fig.savefig(f, format=fmt)
            written.append(stem.with_suffix(f".{fmt}"))
        plt.close(fig)
    return written

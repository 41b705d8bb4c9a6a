"""Runs side by side: the config keys that differ, the metrics with their difference, and for
groups of several seeds Welch's t-test against a baseline group.

    python -m mnistlab.lab.compare runs=[run_a,run_b]          (make compare RUNS="a b")
    python -m mnistlab.lab.compare sweep=<multirun folder> baseline="model.optimizer.lr=0.001"

Runs are grouped as `make report` groups them (their overrides without the seed). Each group's
config is its first run's `.hydra/config.yaml`, as written (interpolations unresolved, so a path
or timestamp that follows another key does not show as a difference of its own). With one run
per group the metrics are shown run by run with their difference from the baseline (the first
run, or `baseline=`); with groups of two or more, mean ± 95% CI and Welch's two-sided p-value.
Light on purpose: no torch, no Lightning.
"""

import logging
import statistics
import sys
from pathlib import Path

from mnistlab.lab import UserError
from mnistlab.lab.command import command
from mnistlab.lab.files import write_whole
from mnistlab.lab.provenance import commit_of
from mnistlab.lab.report import SELECT, override_key, selected
from mnistlab.lab.stats import describe, number

log = logging.getLogger("mnistlab.lab.compare")

USAGE = """usage: python -m mnistlab.lab.compare (runs=[A,B,...] | sweep=FOLDER | logdir=FOLDER)
                                 [baseline=GROUP] [metrics=[test/acc,...]] [ignore=[seed,...]]
                                 [group_by=[KEY,...]] [out=FOLDER]

The config keys that differ between the runs (or groups of runs over seeds), side by side; each
metric with its difference from the baseline (the first, or `baseline=`: a run folder or a group
label as the table prints it), and for groups of two or more runs Welch's t-test p-value.
Printed, and written as compare.md into the sweep folder, or `out` (default: no file for runs=).
"""

SKIPPED = ("hydra.", "paths.")  # where a run is, not what it is
LABELS = ("name", "resume")  # what a run is called (its column's title), how it was continued


@command("mnistlab-compare", USAGE, overrides=False, **SELECT, baseline=str)
def main(args: dict, _) -> int:
    groups, metrics, out = selected(args)
    if len(groups) < 2:
        runs = sum(map(len, groups.values()))
        raise UserError(
            f"{runs} run(s) in one group: nothing to compare; name runs that differ"
            " (or ignore=[] to keep the seed apart)"
        )
    base = _baseline(args["baseline"], groups)
    text = render(groups, list(groups), base, metrics, args["ignore"])
    print(text, end="")
    if args["sweep"] or args["logdir"] or args["out"]:
        out.mkdir(parents=True, exist_ok=True)
        write_whole(out / "compare.md", text)
        log.info("Written: %s", out / "compare.md")
    return 0


def _baseline(wanted: str | None, groups: dict[str, list[dict]]) -> str:
    if not wanted:
        return next(iter(groups))
    if wanted in groups:
        return wanted
    folder = str(Path(wanted).resolve())
    for label, runs in groups.items():
        if any(str(Path(r["folder"]).resolve()) == folder for r in runs):
            return label
    raise UserError(f"baseline={wanted}: neither a group ({', '.join(groups)}) nor one of the runs")


# ------------------------------------------------------------------ configs


def flat_config(folder: str) -> dict[str, object]:
    """A run's config as written in `.hydra/config.yaml`, as dotted keys."""
    import yaml

    path = Path(folder) / ".hydra" / "config.yaml"
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot read the run's config ({first})") from None
    return _flatten(tree)


def _flatten(tree, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}  # fmt: skip
    return {prefix.rstrip("."): tree}


def differing(configs: list[dict[str, object]], ignore: list[str]) -> list[str]:
    """The keys whose value is not the same in every config (absent counts as a value)."""
    keys = sorted(set().union(*configs))
    missing = object()

    def kept(key):
        return not key.startswith(SKIPPED) and key not in (*ignore, *LABELS)

    return [k for k in keys if kept(k) and len({repr(c.get(k, missing)) for c in configs}) > 1]


# ------------------------------------------------------------------ statistics


def welch(a: list[float], b: list[float]) -> tuple[float, float, float] | None:
    """Welch's unequal-variance t-test of b against a (scipy): (t, degrees of freedom,
    two-sided p), or None when either side has fewer than two values or both have no spread."""
    if len(a) < 2 or len(b) < 2 or statistics.variance(a) + statistics.variance(b) == 0:
        return None
    from scipy import stats

    result = stats.ttest_ind(b, a, equal_var=False)
    return float(result.statistic), float(result.df), float(result.pvalue)


def paired(a: dict, b: dict) -> tuple[float, float, float] | None:
    """The paired t-test of b against a over the seeds both ran (scipy), when each group ran the
    same two or more seeds (a seed's runs share its data order and initial weights, so their
    difference is the change alone); None otherwise, or when the differences have no spread."""
    seeds = sorted(a.keys() & b.keys(), key=str)
    if len(seeds) < 2 or len(seeds) != len(a) or len(seeds) != len(b) or None in seeds:
        return None
    differences = [b[s] - a[s] for s in seeds]
    if statistics.variance(differences) == 0:
        return None
    from scipy import stats

    result = stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds])
    return float(result.statistic), float(result.df), float(result.pvalue)


# ------------------------------------------------------------------ output


def render(groups: dict[str, list[dict]], labels: list[str], base: str, metrics: list[str],
           ignore: list[str] = ("seed",)) -> str:  # fmt: skip
    """The comparison as Markdown. `ignore`: keys that vary within a group (the seed), left out
    of the differing keys when a group has several runs."""
    several = any(len(runs) > 1 for runs in groups.values())
    configs = [flat_config(groups[label][0]["folder"]) for label in labels]
    keys = differing(configs, ignore=list(ignore) if several else [])
    head = [_short(label, groups) for label in labels]
    lines = ["# Compared", "", f"baseline: {_short(base, groups)}", "",
             "## Config keys that differ", ""]  # fmt: skip
    if keys:
        lines += ["| key | " + " | ".join(head) + " |", "|---|" + "---|" * len(labels)]
        for key in keys:
            cells = [_value(c.get(key, "(absent)")) for c in configs]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    else:
        lines.append("(none: the runs were configured alike)")
    code = [
        ", ".join(dict.fromkeys(commit_of(r["folder"]) for r in groups[label])) for label in labels
    ]
    if any(c != "?" for c in code):  # run.json's commit (`+changes`: uncommitted changes, patched)
        lines += ["", "## Code", "", "| | " + " | ".join(head) + " |", "|---|" + "---|" * len(labels),
                  "| commit | " + " | ".join(code) + " |"]  # fmt: skip
    lines += ["", "## Metrics", ""]
    if several:
        lines += ["mean ± 95% CI half-width (n); Δ: difference of means from the baseline;"
                  " p: two-sided, paired t-test over the seeds when both groups ran the same"
                  " seeds (p paired), else Welch's t-test", ""]  # fmt: skip
    lines += ["| metric | " + " | ".join(head) + " |", "|---|" + "---|" * len(labels)]
    for metric in metrics:
        values = {label: _by_seed(groups[label], metric) for label in labels}
        if not any(values.values()):
            continue
        cells = [
            _metric_cell(values[label], values[base], label == base, several) for label in labels
        ]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    failed = {label: sum(not r["metrics"] for r in runs) for label, runs in groups.items()}
    if any(failed.values()):
        lines += ["", "Not finished (left out): "
                  + ", ".join(f"{_short(k, groups)}: {v} run(s)" for k, v in failed.items() if v)]  # fmt: skip
    return "\n".join(lines) + "\n"


def _short(label: str, groups: dict[str, list[dict]]) -> str:
    """A group's column title: its label; a lone run's folder name beside it."""
    runs = groups[label]
    return f"{label} ({Path(runs[0]['folder']).name})" if len(runs) == 1 else label


def _by_seed(runs: list[dict], metric: str) -> dict:
    """A metric's values by the seed of their run (its `seed=` override; a run without one
    under its folder, so that no value is lost)."""
    return {_seed(r) or r["folder"]: r["metrics"][metric] for r in runs if metric in r["metrics"]}


def _seed(run: dict) -> str | None:
    return next(
        (o.partition("=")[2] for o in reversed(run["overrides"]) if override_key(o) == "seed"), None
    )


def _value(value) -> str:
    return "null" if value is None else str(value).replace("|", "\\|")


def _metric_cell(by_seed: dict, base_by_seed: dict, is_base: bool, several: bool) -> str:
    values, base = list(by_seed.values()), list(base_by_seed.values())
    if not values:
        return "-"
    stats = describe(values)
    shown = number(stats["mean"])
    if several:
        shown += (
            f" ± {number(stats['ci95'])}" if stats["ci95"] is not None else ""
        ) + f" (n={len(values)})"
    if is_base or not base:
        return shown
    delta = stats["mean"] - statistics.fmean(base)
    shown += f", Δ {'+' if delta >= 0 else ''}{number(delta)}"
    if not several:
        return shown
    if test := paired(base_by_seed, by_seed):
        return shown + f", p paired={test[2]:.3g}"
    test = welch(base, values)
    return shown + (f", p={test[2]:.3g}" if test else "")


if __name__ == "__main__":
    sys.exit(main())

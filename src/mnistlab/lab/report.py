"""Results over seeds: runs grouped by configuration, each group's mean, spread and confidence.

    python -m mnistlab.lab.report sweep=logs/train/multiruns/<timestamp>     (make report SWEEP=...)
    python -m mnistlab.lab.report runs=[run_a,run_b,run_c]                    (make report RUNS="a b c")
    python -m mnistlab.lab.report logdir=logs/train                           (every run under it)

Runs are grouped by the overrides they were started with, `seed` left out (`ignore=[seed,...]`
to leave out more keys, `group_by=[model.optimizer.lr]` to group by those keys alone). For each
group and metric: n, mean, standard deviation, the half-width of the 95% confidence interval of
the mean (Student's t with n - 1 degrees of freedom), min and max. A run that failed or did not
finish is counted in its group's `failed` column and never averaged in. The table is printed and
written as report.md, report.csv and report.tex (booktabs) into the sweep folder (or `out=`).
Light on purpose: no torch, no Lightning.
"""

import json
import logging
import math
import sys
from pathlib import Path

from mnistlab.lab import UserError, tables
from mnistlab.lab.command import command
from mnistlab.lab.files import new_folder, read_object, write_whole
from mnistlab.lab.run_folder import without_resume
from mnistlab.lab.tables import Style, csv_text, latex, markdown
from mnistlab.lab.trust import recorded_command

log = logging.getLogger("mnistlab.lab.report")

USAGE = """usage: python -m mnistlab.lab.report (sweep=FOLDER | runs=[A,B,...] | logdir=FOLDER)
                                [metrics=[test/acc,...]] [ignore=[seed,...]] [group_by=[KEY,...]]
                                [order=val|sweep] [pm=ci|std|se] [labels=FILE.yaml]
                                [percent=false] [width=3.3] [out=FOLDER] [figures=false]

Groups runs by their overrides without the seed, and prints n and mean ± spread of each metric
per group (pm: 95% CI half-width, std or standard error), ordered by the validation metric the
runs were chosen by (`optimized_metric`; order=sweep: as started), never by a test metric.
Writes report.md, report.csv (every statistic) and report.tex (a booktabs table with caption and
label) into the sweep folder, or `out`, and figures as PDF, SVG and PNG: the groups' mean
validation curves with their bands, and the final metrics with the same intervals. labels: a
YAML file mapping a group label or a metric to its text in tables and figures; width: the
figures' width in inches (3.3 one column, 6.9 two)."""

METRICS = ["test/acc", "val/acc_best", "test/loss", "wall_s"]  # for runs that do not say theirs


# The options of report and compare: which runs, which metrics, how they are grouped.
SELECT = {"sweep": str, "runs": list, "logdir": str, "metrics": list, "ignore": ["seed"],
          "group_by": list, "out": str}  # fmt: skip
SHOW = {"order": "val", "pm": "ci", "labels": str, "percent": False, "width": 3.3}


@command("mnistlab-report", USAGE, overrides=False, **SELECT, **SHOW, figures=True)
def main(args: dict, _) -> int:
    groups, metrics, out = selected(args)
    if args["pm"] not in tables.SPREADS:
        raise UserError(f"pm={args['pm']}: one of {', '.join(tables.SPREADS)}")
    if args["width"] <= 0:
        raise UserError(f"width={args['width']}: a width in inches, e.g. 3.3 or 6.9")
    labels = tables.read_labels(args["labels"]) if args["labels"] else {}
    table, style = summarize(groups, metrics, args["order"], pm=args["pm"], labels=labels,
                             percent=args["percent"])  # fmt: skip
    metrics = tables.metrics_of(table)  # with the one rows are ordered by
    text = markdown(table, style)
    if args["runs"] and not args["out"]:  # logs/reports/<timestamp>: a suffix if it is taken
        out = new_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    write_whole(out / "report.md", text)
    write_whole(out / "report.csv", csv_text(table))
    write_whole(out / "report.tex", latex(table, style, f"tab:{_tex_key(out.name)}"))
    if classes := tables.per_class(groups, style):
        write_whole(out / "report_per_class.md", classes[0])
        write_whole(out / "report_per_class.csv", classes[1])
    drawn = []
    if args["figures"]:
        from mnistlab.lab.figures import CURVES, curves, finals, remove_stale

        given = args["metrics"]  # these alone; else the curves and every metric of the table
        shown = given or [*CURVES, *(m for m in metrics if m not in CURVES)]
        drawn = curves(groups, out, shown, style, args["width"])
        drawn += finals(table, given or metrics, out, style, args["width"])
        remove_stale(out, drawn)
    print(text, end="")
    log.info("Report: %s (and report.csv, report.tex%s)", out / "report.md",
             ", report_per_class.md and .csv" if classes else "")  # fmt: skip
    for path in drawn:
        if path.suffix == ".pdf":
            log.info("Figure: %s (and .svg, .png)", path)
    return 0


def _tex_key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-:." else "-" for c in name) or "results"


# ------------------------------------------------------------------ runs


def selected(args: dict) -> tuple:
    """The runs that `SELECT`'s options name, grouped; the metrics; the output folder."""
    if args["out"] and Path(args["out"]).exists() and not Path(args["out"]).is_dir():
        raise UserError(f"out={args['out']}: a file; name a folder (made if it does not exist)")
    runs, out = _runs(args)
    by, metrics = args["group_by"] or [], args["metrics"] or default_metrics(runs)
    keys = {override_key(o) for r in runs for o in r["overrides"]}
    if unknown := [k for k in by if k not in keys]:
        raise UserError(f"group_by: no run was started with {', '.join(unknown)}; the keys set:"
                        f" {', '.join(sorted(keys)) or '(none)'}")  # fmt: skip
    known = {m for r in runs for m in r["metrics"]}
    if args["metrics"] and known and (unknown := [m for m in metrics if m not in known]):
        raise UserError(f"metrics: no run has {', '.join(unknown)}; they have:"
                        f" {', '.join(sorted(known))}")  # fmt: skip
    return group(runs, ignore=args["ignore"], by=by), metrics, out


def default_metrics(runs: list[dict]) -> list[str]:
    """What the runs' configs report (`report_metrics`, kept in results.json), and time."""
    reported = [m for r in runs for m in r["reported"]]
    return [*dict.fromkeys(reported), "wall_s"] if reported else METRICS


def _runs(args: dict) -> tuple[list[dict], Path]:
    given = [k for k in ("sweep", "runs", "logdir") if args[k]]
    if len(given) != 1:
        raise UserError("name the runs: sweep=<multirun folder>, runs=[a,b,...] or logdir=<folder>")
    if args["sweep"]:
        sweep = _folder(args["sweep"], "sweep")
        folders = sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()),
                         key=lambda p: int(p.name))  # fmt: skip
        out = sweep
    elif args["runs"]:
        folders = [_folder(r, "runs") for r in args["runs"]]
        for folder in folders:
            if not any((folder / f).exists() for f in (".hydra", "job.json", "results.json")):
                raise UserError(f"runs: {folder} is not a run folder (no .hydra/, job.json or"
                                " results.json)")  # fmt: skip
        from time import strftime

        from mnistlab.lab.config import project_path

        out = project_path("logs") / "reports" / strftime("%Y-%m-%d_%H-%M-%S")
    else:
        root = _folder(args["logdir"], "logdir")
        folders = sorted({p.parent.parent for p in root.rglob(".hydra/overrides.yaml")})
        out = root
    if not folders:
        raise UserError(f"no runs in {out}: a run folder holds .hydra/ or job.json")
    return [read_run(f) for f in folders], Path(args["out"]) if args["out"] else out


def _folder(path: str, key: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{key}={path}: no such folder")
    return folder


def read_run(folder: Path) -> dict:
    """A run's overrides, status, metrics and wall time, from its own records. A record that
    cannot be read is said, and the run counted as not finished."""
    job = read_object(folder / "job.json")
    results = read_object(folder / "results.json")
    measured = _measured(results.get("metrics"), folder / "results.json")
    results = {**results, "metrics": measured} if measured is not None else {}
    if job.get("status") == "completed" and "metrics" not in results:
        log.warning("%s: unreadable or missing, though job.json says completed: counted as"
                    " not finished", folder / "results.json")  # fmt: skip
    overrides, source = job.get("overrides"), folder / "job.json"
    if overrides is None:
        import yaml

        source = folder / ".hydra" / "overrides.yaml"
        try:
            overrides = yaml.safe_load(source.read_text()) or []
        except (OSError, yaml.YAMLError):
            overrides = []
    recorded_command(overrides, str(source), replayed=False)  # data, or the run is refused
    finished = "metrics" in results
    status = job.get("status") or ("completed" if finished else "incomplete")
    if status == "completed" and not finished:
        status = "incomplete"
    metrics = dict(results.get("metrics", {}))
    if job.get("wall_s") is not None:
        metrics |= _measured({"wall_s": job["wall_s"]}, folder / "job.json") or {}
    reported = results.get("reported")
    if not (isinstance(reported, list) and all(isinstance(m, str) for m in reported)):
        reported = []
    per_class = tables.checked_per_class(results.get("per_class", {}), folder / "results.json")
    optimized = results.get("optimized")
    if not (isinstance(optimized, dict) and isinstance(optimized.get("metric"), str)
            and optimized.get("mode") in ("min", "max")):  # fmt: skip
        optimized = None
    # Only runs that completed are averaged: a failed, stopped or pruned run is counted apart.
    return {"folder": str(folder), "overrides": overrides, "status": status,
            "metrics": metrics if status == "completed" else {}, "reported": reported,
            "optimized": optimized and (optimized["metric"], optimized["mode"]),
            "per_class": per_class if status == "completed" else {}}  # fmt: skip


def _measured(values, source: Path) -> dict[str, float] | None:
    """The finite numbers of a record's metrics (None when it holds no mapping of them). A value
    that is no number (`true`, "abc") or not finite (NaN, inf) is named and never averaged."""
    if not isinstance(values, dict):
        return None
    kept = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            log.warning("%s: %s=%s is not a number: left out", source, key, json.dumps(value)[:40])
        elif not math.isfinite(value):
            log.warning("%s: %s is %s: left out of the statistics", source, key, value)
        else:
            kept[str(key)] = float(value)
    return kept


# ------------------------------------------------------------------ groups and statistics


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def group(runs: list[dict], ignore: list[str], by: list[str]) -> dict[str, list[dict]]:
    """Runs by configuration: the overrides that differ between runs, those in `ignore` left out
    (`by`: only those keys), as one label per group in the order first met."""

    def kept(run):
        return [o for o in without_resume(run["overrides"]) if override_key(o) not in ignore
                and not override_key(o).startswith("hydra.") and (not by or override_key(o) in by)]  # fmt: skip

    common = set.intersection(*(set(kept(r)) for r in runs)) if runs else set()
    groups: dict[str, list[dict]] = {}
    for run in runs:
        label = " ".join(o for o in kept(run) if o not in common)
        groups.setdefault(label, []).append(run)
    empty = "(all runs)" if len(groups) == 1 else "(defaults)"  # runs with no override of their own
    groups = {label or empty: runs for label, runs in groups.items()}
    return _named(groups)


def _named(groups: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """A group whose runs share a `name=` is labelled by it, when no other group has it."""

    def names(runs):
        return {([o.partition("=")[2] for o in r["overrides"] if override_key(o) == "name"] or [None])[-1]
                or None for r in runs}  # fmt: skip

    shared = {label: n.pop() if len(n := names(runs)) == 1 else None
              for label, runs in groups.items()}  # fmt: skip
    taken = list(shared.values())
    return {(name if name is not None and taken.count(name) == 1 else label): runs
            for (label, runs), name in zip(groups.items(), shared.values(), strict=True)}  # fmt: skip


def summarize(groups: dict[str, list[dict]], metrics: list[str], order: str = "val", **style):
    """The table (`mnistlab.lab.tables`) and how it is shown (`tables.Style`, `style` its
    fields). order=val: ordered by the validation metric the runs were chosen by, shown as a
    column too, the best group marked; order=sweep: as started, the best still marked."""
    if order not in ("val", "sweep"):
        raise UserError(f"order={order}: val (by the validation metric) or sweep (as started)")
    chosen = chosen_by(groups, metrics)
    if chosen and chosen[0] not in metrics:
        metrics = [chosen[0], *metrics]
    table = tables.summarize(groups, metrics)
    style["shorter"] = tables.shorter_keys(groups)
    style["labels"] = tables.resolve_labels(style.get("labels") or {}, groups, metrics,
                                            style["shorter"])  # fmt: skip
    if chosen is None:
        return table, Style(**style)
    metric, mode = chosen
    best = tables.ordered(table, metric, mode)
    best = best.index[0] if best[(metric, "n")].iloc[0] else None
    shown = tables.column(metric, Style(labels=style["labels"]))
    words = f"{shown} ({metric}), {'higher' if mode == 'max' else 'lower'} is better"
    if order == "val":
        return tables.ordered(table, metric, mode), Style(best=best, order=f"by {words}", **style)
    return table, Style(best=best, order=f"as started; best by {words}", **style)


def chosen_by(groups: dict[str, list[dict]], metrics: list[str]) -> tuple[str, str] | None:
    """The validation metric runs are chosen by and its mode: what their results.json says
    (`optimized`), else the first `val/` metric shown; never a test metric (then None)."""
    said = {r["optimized"] for runs in groups.values() for r in runs if r.get("optimized")}
    found = {m for runs in groups.values() for r in runs for m in r["metrics"]}
    if len(said) == 1 and (chosen := said.pop())[0] in found:
        if not chosen[0].startswith("test/"):
            return chosen
        log.warning("optimized_metric=%s is a test metric: rows are not ordered by it", chosen[0])
        return None
    val = [m for m in metrics if m.startswith("val/")]
    return (val[0], "min" if "loss" in val[0] else "max") if val else None


if __name__ == "__main__":
    sys.exit(main())

"""Kill anywhere, extended to sweeps (slow tier): a 3-job grid sweep over seeds, run by the basic
and the joblib launcher, is stopped at seeded points by `kill -9` or SIGTERM to the sweep's own
process, and continued with the same command each time. It must end with every job completed
exactly once (a completed job is never run again), one group in the report (the continued jobs
keep their group), and no process of any attempt left behind."""

import csv
import random
import signal
import time
from pathlib import Path

import pytest
from conftest import need_modules
from runner import STOP_AT, base_args, run_cli, start_cli
from test_sweeps import INSTALL, LAUNCHERS, TINY, summary

pytestmark = pytest.mark.slow

SEED, STOPS = 29, 4
PHASES = {"train": 4, "val": 2, "test": 1}  # at most this many of each in a job's process


def points(seed: int) -> list[tuple[int, str, int, signal.Signals]]:
    """Stop points in job order (a job is never stopped after it completed), two by each signal."""
    rng = random.Random(seed)
    where = sorted(rng.sample([(j, p) for j in range(3) for p in PHASES], STOPS),
                   key=lambda jp: (jp[0], list(PHASES).index(jp[1])))  # fmt: skip
    signals = rng.sample([signal.SIGKILL, signal.SIGTERM] * (STOPS // 2), STOPS)
    return [(j, p, rng.randint(1, PHASES[p]), s) for (j, p), s in zip(where, signals, strict=True)]


def family(pid: int) -> set[int]:
    from hydra_plugins.mnistlab_sweepers.common import _children

    found, todo = set(), [pid]
    while todo:
        found |= (new := set(_children(todo.pop())) - found)
        todo += new
    return found


def results(folder: Path) -> dict[str, tuple[int, int]]:
    """Each completed job's results.json, by identity: rewritten, it would differ."""
    return {
        f.parent.name: (f.stat().st_ino, f.stat().st_mtime_ns)
        for f in folder.glob("*/results.json")
    }


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_stopped_anywhere_continues_to_each_job_completed_once(synthetic_mnist, tmp_path,
                                                                        launcher):  # fmt: skip
    if launcher != "basic":
        need_modules(*LAUNCHERS[launcher], install=INSTALL)
    folder = tmp_path / "sweep"
    args = ["-m", *base_args(synthetic_mnist, tmp_path, *TINY, f"hydra.sweep.dir={folder}"),
            "seed=1,2,3", "logger=csv", "+callbacks.stop._target_=runner.StopAt"]  # fmt: skip
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    done: dict[str, tuple[int, int]] = {}
    for i, (job, phase, n, sig) in enumerate(points(SEED + len(launcher))):
        point, marker = f"{sig.name} at job {job} {phase}:{n}", tmp_path / f"at{i}"
        proc = start_cli(*args, cwd=tmp_path, env={STOP_AT: f"{job}:{phase}:{n}:{marker}"})
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.05)
        processes = family(proc.pid)
        assert proc.poll() is None, f"{point} not reached: {proc.communicate()[1][-3000:]}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
        expected = -9 if sig == signal.SIGKILL else 128 + signal.SIGTERM
        assert proc.returncode == expected, f"{point}: {err[-3000:]}"
        if sig == signal.SIGTERM:  # the sweep wrote its summary, every job's state in it
            states = [r["status"] for r in summary(folder)]
            assert len(states) == 3 and "running" not in states, (point, states)
            assert "interrupted" in states, (point, states)
            assert "same command and resume=auto" not in err, f"{point}: the sweep continues it"
        deadline = time.monotonic() + 60
        while (alive := {p for p in processes if Path(f"/proc/{p}").exists()}) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert not alive, f"{point}: processes left running: {alive}"
        now = results(folder)
        assert {k: now[k] for k in done} == done, f"{point}: a completed job ran again"
        done = now

    final = run_cli(*args, cwd=tmp_path, env={STOP_AT: ""})
    assert final.returncode == 0, final.stderr[-3000:]
    assert [r["status"] for r in summary(folder)] == ["completed"] * 3
    now = results(folder)
    assert sorted(now) == ["0", "1", "2"]
    assert {k: now[k] for k in done} == done, "a completed job ran again"

    from mnistlab.lab import report

    assert report.main([f"sweep={folder}"]) == 0
    (row,) = csv.DictReader((folder / "report.csv").open())
    assert (row["group"], row["runs"], row["failed"]) == ("(all runs)", "3", "0")

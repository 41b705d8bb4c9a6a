"""What a sweep records and reports, in process (the sweeps themselves run in the slow tier):
each job's row, sorted by the sweeper's direction; a study that continues only its own search."""

import json

import pytest
from conftest import need_modules

from mnistlab.lab import sweeps


def job(folder, overrides, loss, status="completed"):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"metrics": {"test/loss": loss}}))
    (folder / "job.json").write_text(json.dumps({"status": status, "overrides": overrides}))
    return folder


@pytest.mark.parametrize("maximize", [True, False])
def test_rows_follow_the_direction_and_each_job_s_own_record(tmp_path, maximize):
    jobs = [(n, ["lr=the command now"], job(tmp_path / str(n), [f"lr={n}"], loss))
            for n, loss in enumerate([0.3, 0.1, 0.2])]  # fmt: skip
    jobs.append((3, ["lr=9"], tmp_path / "3"))  # never started
    table = sweeps.rows(jobs, "test/loss", ["test/loss"], maximize=maximize)
    assert [r["job"] for r in table] == ([0, 2, 1, 3] if maximize else [1, 2, 0, 3])
    assert [r["overrides"] for r in table[:3]] == [
        f"lr={r['job']}" for r in table[:3]
    ]  # as each job recorded them, not as the command says now
    assert table[-1]["status"] == "not started" and table[-1]["objective"] is None


def test_a_study_continues_only_under_the_command_that_started_it(tmp_path, capsys):
    need_modules("optuna", install="make install-sweep")
    import optuna

    from hydra_plugins.mnistlab_sweepers.optuna_sweeper import _same_search

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    fixed = ["hparams_search=mnist_optuna", "trainer.max_epochs=2"]
    _same_search(study, fixed, space, "maximize", tmp_path)  # recorded
    _same_search(study, fixed[::-1], space, "maximize", tmp_path)  # the same, in another order
    for other in ([*fixed, "data.batch_size=32"], fixed[:1]):
        with pytest.raises(SystemExit) as stop:
            _same_search(study, other, space, "maximize", tmp_path)
        assert stop.value.code == 2
        (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
        assert "study s in" in line and "another fixed overrides" in line
    with pytest.raises(SystemExit):
        _same_search(study, fixed, space, "minimize", tmp_path)
    assert "another direction" in capsys.readouterr().err
    wider = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}
    with pytest.raises(SystemExit):
        _same_search(study, fixed, wider, "maximize", tmp_path)
    assert "another search space" in capsys.readouterr().err


def test_a_continued_job_keeps_its_group_and_loses_its_old_error(tmp_path):
    """A job stopped by SIGINT, then continued by the same sweep command (`resume=auto` added):
    its new record has no error, and the report puts it in one group with its siblings."""
    from mnistlab.lab import report

    folder = tmp_path / "1"
    folder.mkdir()
    sweeps.record(folder, overrides=["seed=2"], status="interrupted", signal=2,
                  error="Stopped by SIGINT")  # fmt: skip
    sweeps.begin(folder, ["seed=2", "resume=auto"])
    assert sweeps.read_job(folder) == {"overrides": ["seed=2"], "status": "running"}
    runs = [{"overrides": o, "metrics": {"test/acc": 0.9}}
            for o in (["seed=1"], ["seed=2", "resume=auto"], ["seed=3"])]  # fmt: skip
    assert list(report.group(runs, ignore=["seed"], by=[])) == ["(all runs)"]


def test_two_sweeps_share_a_study_and_only_a_dead_sweep_s_trial_is_failed(tmp_path):
    """A trial records its sweep's folder; another sweep of the same study leaves it running
    while that sweep holds its folder's lock, and fails it once the sweep is gone."""
    need_modules("optuna", install="make install-sweep")
    import optuna

    from hydra_plugins.mnistlab_sweepers.optuna_sweeper import _asked, _fail_stale_trials
    from mnistlab.lab.run_folder import hold

    study = optuna.create_study(storage=sweeps.open_storage(str(tmp_path / "o.journal")))
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    first, second = tmp_path / "first", tmp_path / "second"
    with hold(first, "sweep"):
        trial = _asked(study, space, first)
        _fail_stale_trials(study, second)  # the first sweep is alive: its trial is left to it
        assert study.trials[trial.number].state == optuna.trial.TrialState.RUNNING
    _fail_stale_trials(study, second)  # the first sweep has ended without a word
    assert study.trials[trial.number].state == optuna.trial.TrialState.FAIL


def test_a_lock_named_by_someone_else_s_record_is_only_read_never_waited_on(tmp_path):
    """A study's trial names its sweep's folder: that folder's `.lock` may be anything."""
    import os

    from mnistlab.lab.run_folder import LOCK, held

    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / LOCK)  # opening it to read would wait for a writer
    (tmp_path / "dir" / LOCK).mkdir(parents=True)
    assert not any(held(tmp_path / name) for name in ("fifo", "dir", "missing"))


def test_a_job_is_named_by_the_values_its_sweep_varies(tmp_path):
    """TensorBoard's run name for a sweep job: the swept keys of its overrides (a command-line
    list or range, and the sweeper's search space), short keys, one folder name; a missing or
    broken multirun.yaml names nothing."""
    import yaml

    record = {"hydra": {"overrides": {"task": ["model.optimizer.lr=1e-3,3e-4", "data.root=/a,/b",
                                                "seed=range(1,3)", "trainer.max_epochs=2"]},
                        "sweeper": {"params": {"model.net.hidden": "choice(64, 128)"}}}}  # fmt: skip
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(record))
    job = ["model.optimizer.lr=0.001", "data.root=/a", "seed=1", "trainer.max_epochs=2",
           "model.net.hidden=64"]  # fmt: skip
    assert sweeps.job_label(tmp_path, job) == "lr=0.001,root=-a,seed=1,hidden=64"
    (tmp_path / "multirun.yaml").write_text("hydra: [unclosed\n")
    assert sweeps.job_label(tmp_path, job) == ""
    assert sweeps.job_label(tmp_path / "nowhere", job) == ""

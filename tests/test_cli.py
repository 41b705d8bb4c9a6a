"""Bad command lines end in one line on stderr, before anything heavy is imported, loaded or written."""

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import yaml
from conftest import compose_train, need_modules
from runner import cli_env

from mnistlab.lab import UserError
from mnistlab.lab.cli import prepare
from mnistlab.lab.resume import NothingToDo

BAD = {
    "trainer.max_epoch=3": "unknown key trainer.max_epoch; did you mean trainer.max_epochs?",
    "+trainer.max_epoch=3": "unknown key trainer.max_epoch; did you mean trainer.max_epochs?",
    "+model.optimizer.lrr=0.1": "unknown key model.optimizer.lrr; did you mean model.optimizer.lr?",
    "+seeed=1": "unknown key seeed; did you mean seed?",
    "trainer.max_epochs=abc": "trainer.max_epochs=abc: expected an integer or null",
    "trainer.max_epochs=0": "trainer.max_epochs=0: must be >= 1, or -1 for no limit",
    "model.optimizer.lr=-0.001": "model.optimizer.lr=-0.001: must be > 0",
    "data.batch_size=0": "data.batch_size=0: must be >= 1",
    "data.val_size=1.5": "data.val_size=1.5: must be a count >= 1 or a fraction in (0, 1)",
    "data.val_size=0.0": "data.val_size=0.0: must be a count >= 1 or a fraction in (0, 1)",
    "model/net=cnnn": "model/net=cnnn: no such option; did you mean model/net=cnn?",
    "experiment=two_conf": "experiment=two_conf: no such option; did you mean experiment=two_conv?",
    "trainer.precision=bf16mixed": "did you mean bf16-mixed?",
    "resume=maybe": "resume=maybe: not auto, must, never or a run folder",
    "trainer.gradient_clip_val=1": "add it: +trainer.gradient_clip_val=1",
    # found by people and by tests/test_fuzz.py: each once ended in a traceback
    "data.batch_size=99999999999999999999999": "data.batch_size=99999999999999999999999: expected",
    "model.optimizer.lr=1e999": "model.optimizer.lr=inf: expected a finite number",
    "paths.log_dir=/proc/nope": "cannot create a folder in /proc (No such file or directory)",
    "hydra.run.dir=/proc/nope": "/proc/nope: cannot create a folder in /proc",
    "data=null": "Config group override must be a string",
    "~paths.log_dir=null": "paths.log_dir",
    "--nope": "unrecognized arguments: --nope (see --help)",
    "~model._target_": "model._target_ is not set, and the config refers to it: set it, model._t",
}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_augment.scale=[2]", "data.batch_augment.scale=[2]: must be [low, high]"),
    ],
)
def test_a_bad_augmentation_is_refused_before_anything_runs(override, message):
    with pytest.raises(UserError) as err:
        prepare(["experiment=robust", override], "train")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override", list(BAD))
def test_a_bad_override_is_named_in_one_line(override):
    with pytest.raises(UserError) as err:
        prepare([override], "train")
    assert BAD[override] in str(err.value) and "\n" not in str(err.value)


def test_a_config_file_that_is_not_yaml_is_named_in_one_line(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "bad.yaml").write_text("# @package _global_\ntrainer: [unclosed\n")
    with pytest.raises(UserError, match=r"bad\.yaml, line 3: not valid YAML \(expected ','"):
        prepare(["experiment=bad", f"hydra.searchpath=[file://{tmp_path}]"], "train")
    # a config folder that is not there (Hydra only warns, then looks elsewhere): refused
    with pytest.raises(UserError, match=r"^hydra.searchpath names /nope/conf: no such folder$"):
        prepare(["experiment=reference", "hydra.searchpath=[file:///nope/conf]"], "train")
    with pytest.raises(UserError, match=r"no such option; one of your own: its config folder wit"):
        prepare(["experiment=intensity"], "train")


def test_sweeps_check_every_value():
    with pytest.raises(UserError, match=r"data\.batch_size=0: must be >= 1"):
        prepare(["-m", "data.batch_size=32,0"], "train")
    assert prepare(["-m", "data.batch_size=32,64"], "train") == ["-m", "data.batch_size=32,64"]
    with pytest.raises(UserError, match=r"model\.optimizer\.lr=-1\.0: must be > 0"):
        prepare(["-m", "data.batch_size=32,64", "model.optimizer.lr=1e-3,-1.0"], "train")
    with pytest.raises(UserError, match=r"name=a,b: a sweep has one name"):
        prepare(["-m", "name=a,b", "seed=1,2"], "train")


def test_a_name_is_a_folder_suffix_that_cannot_leave_the_folder():
    from mnistlab.lab.config import folder_label

    assert [folder_label(n) for n in (None, "", "wide_lr", "../x y", "lr=1e-3,b")] == [
        "", "", "_wide_lr", "_..-x-y", "_lr=1e-3,b"]  # fmt: skip
    cfg = compose_train(["name=wide"])
    assert cfg.name == "wide"


def test_an_optuna_pruner_is_checked_before_hydra_builds_it():
    """Hydra builds the sweeper, its pruner with it, before the run starts: a wrong pruner is
    named in one line by the command line's check, not in Hydra's error."""
    need_modules("optuna", install="make install-sweep")
    search = ["-m", "hparams_search=mnist_optuna"]
    with pytest.raises(UserError, match=r"hydra\.sweeper\.pruner\._target_=optuna\.pruners\.Nope"):
        prepare([*search, "hydra.sweeper.pruner._target_=optuna.pruners.NopePruner"], "train")
    with pytest.raises(UserError, match=r"unknown key hydra\.sweeper\.pruner\.n_startup"):
        prepare([*search, "+hydra.sweeper.pruner.n_startup=3"], "train")
    assert prepare([*search, "hydra.sweeper.pruner.n_startup_trials=3"], "train")


RUN_MODULE = (
    "import sys, runpy\n"
    "sys.argv = ['mnistlab-train', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('mnistlab.train', run_name='__main__')\n"
    "finally:\n"
    "    print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))\n"
)


@pytest.mark.parametrize(
    ("override", "message", "imported"),
    [
        ("model.optimizer.lr=-1", "model.optimizer.lr=-1: must be > 0", "[]"),
        # An unknown key is looked up in the real signature (Lightning's): imported, on this path only.
        ("+trainer.max_epoch=3", "unknown key trainer.max_epoch; did you mean trainer.max_epochs?",
         "['lightning', 'torch']"),
    ],
)  # fmt: skip
def test_the_command_line_fails_before_data_or_logs(tmp_path, override, message, imported):
    """The same process the user runs: one line on stderr, exit 2, nothing written; a bad value
    is found without importing torch or Lightning (importing them alone takes seconds)."""
    logs, data = tmp_path / "logs", tmp_path / "data"
    args = [f"paths.log_dir={logs}", f"paths.data_dir={data}", override]
    proc = subprocess.run([sys.executable, "-c", RUN_MODULE, *args], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"mnistlab-train: error: {message}"]
    assert proc.stdout.strip().splitlines()[-1] == imported
    assert not logs.exists() and not data.exists()


def test_a_correct_command_line_is_checked_without_importing_torch(tmp_path):
    args = [f"paths.log_dir={tmp_path}", "trainer.max_epochs=2", "--cfg", "job"]
    proc = subprocess.run([sys.executable, "-c", RUN_MODULE, *args], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "max_epochs: 2" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]"


COUNT_COMPOSITIONS = (  # Hydra's one door to a composed config: compose(), hydra.main, sweeps
    "import atexit, sys, runpy\n"
    "from hydra._internal.config_loader_impl import ConfigLoaderImpl as C\n"
    "load, n = C.load_configuration, []\n"
    "C.load_configuration = lambda *a, **k: n.append(1) or load(*a, **k)\n"
    "atexit.register(lambda: print('compositions', len(n)))\n"
    "sys.argv = ['mnistlab-train', *sys.argv[1:]]\n"
    "runpy.run_module('mnistlab.train', run_name='__main__')\n"
)


def test_a_run_is_composed_once_and_recorded_as_hydra_main_records_it(tmp_path):
    """Checked, then run on the config the check composed (hydra.main would compose it twice
    more): a run's `.hydra/` is the same as Hydra's own run writes. The data is missing: the run
    fails at its start, exit 1, with its log."""
    run = tmp_path / "run"
    args = [f"paths.data_dir={tmp_path / 'none'}", "data.sources=[local]", f"hydra.run.dir={run}"]
    proc = subprocess.run([sys.executable, "-c", COUNT_COMPOSITIONS, *args], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "compositions 1" in proc.stdout, proc.stderr[-2000:]
    assert "MNIST" in (run / "train.log").read_text()
    hydra_cfg = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["overrides"] == {"hydra": [f"hydra.run.dir={run}", "hydra.mode=RUN"],
                                      "task": args[:2]}  # fmt: skip
    assert hydra_cfg["mode"] == "RUN" and hydra_cfg["runtime"]["output_dir"] == str(run)
    assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) == args[:2]


@pytest.mark.slow  # 6-10 s: the fast tier stays near 3 minutes
def test_hydra_s_own_logging_options_replace_ours_whole(tmp_path):
    """hydra/job_logging=disabled once failed on our console's stream, merged into it."""
    quiet = [f"paths.data_dir={tmp_path / 'none'}", "data.sources=[local]",
             "hydra/job_logging=disabled", f"hydra.run.dir={tmp_path / 'quiet'}"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "mnistlab.train", *quiet], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_resume_picks_the_newest_run_of_the_same_command(tmp_path):
    runs = tmp_path / "train" / "runs"
    command = [f"paths.log_dir={tmp_path}", "trainer.max_epochs=2", "resume=auto"]
    for name, overrides in [
        ("2026-01-01_00-00-00", command),
        ("2026-01-02_00-00-00", [*reversed(command[:2]), "resume=must"]),  # same command
        ("2026-01-03_00-00-00", [*command, "seed=1"]),  # another one
    ]:
        (runs / name / ".hydra").mkdir(parents=True)
        (runs / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    chosen = runs / "2026-01-02_00-00-00"
    assert prepare(command, "train") == [*command, f"hydra.run.dir={chosen}"]

    results = {"max_epochs": 2, "max_steps": None, "metrics": {"test/acc": 0.98}}
    (chosen / "results.json").write_text(json.dumps(results))
    with pytest.raises(NothingToDo, match=r"has already finished \(test/acc 0\.9800\)"):
        prepare(command, "train")
    for near, said in ((chosen / ".hydra", f"a folder inside a run; name the run itself: resume={chosen}"),
                       (chosen / "results.json", "a file, not a run folder; ckpt_path=<file> starts"),
                       (tmp_path / "train", f"a folder of 1 finished run(s); name one, e.g. the newest: resume={chosen}")):  # fmt: skip
        with pytest.raises(UserError, match=re.escape(f"resume={near}: {said}")):
            prepare([f"resume={near}"], "train")
    longer = [f"resume={chosen}", "trainer.max_epochs=3"]  # a named run, to train it further
    recorded = [f"paths.log_dir={tmp_path}"]  # the run's own overrides, those given now on top
    assert prepare(longer, "train") == [*recorded, *longer, f"hydra.run.dir={chosen}"]

    with pytest.raises(UserError, match=rf"resume=must: no earlier run of this command in {runs}"):
        prepare([*command[:2], "seed=5", "resume=must"], "train")
    assert prepare([*command[:2], "seed=5", "resume=auto"], "train")[-1] == "resume=auto"


def test_the_shipped_search_composes_or_says_what_to_install():
    argv = ["-m", "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=3"]
    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(UserError, match="make install-sweep"):
            prepare(argv, "train")
    else:
        assert prepare(argv, "train") == argv


def test_the_same_sweep_command_continues_an_incomplete_sweep(tmp_path):
    sweeps = tmp_path / "train" / "multiruns"
    command = [f"paths.log_dir={tmp_path}", "model.optimizer.lr=1e-3,2e-3"]
    statuses = {"2026-01-01_00-00-00": "completed", "2026-01-02_00-00-00": "failed"}
    for name, status in statuses.items():
        (sweeps / name).mkdir(parents=True)
        (sweeps / name / "multirun.yaml").write_text(
            yaml.safe_dump({"hydra": {"overrides": {"task": command}}})
        )
        (sweeps / name / "summary.csv").write_text(f"job,status\n0,completed\n1,{status}\n")
    incomplete = sweeps / "2026-01-02_00-00-00"
    assert prepare(["-m", *command], "train") == ["-m", *command, f"hydra.sweep.dir={incomplete}"]
    (incomplete / "summary.csv").write_text("job,status\n0,completed\n1,completed\n")
    assert prepare(["-m", *command], "train") == ["-m", *command]  # all done: a new sweep
    for damaged in ("job,status\n0,comp", "", "\x00\xff"):  # cut short, empty, garbage
        (incomplete / "summary.csv").write_text(damaged)
        assert prepare(["-m", *command], "train")[-1] == f"hydra.sweep.dir={incomplete}"


def test_resume_of_a_run_folder_from_elsewhere_refuses_a_target_outside_the_allow_list(
    tmp_path, monkeypatch
):
    """(More payloads in test_trust.py.)"""
    run = tmp_path / "their_run"
    (run / ".hydra").mkdir(parents=True)
    hostile = "+callbacks.x._target_=builtins.exec"
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([hostile, "seed=3"]))
    with pytest.raises(UserError, match=r"callbacks\.x\._target_=builtins\.exec: refused"):
        prepare([f"resume={run}"], "train")
    monkeypatch.setenv("MNISTLAB_TRUST", "builtins")  # the opt-in
    assert hostile in prepare([f"resume={run}"], "train")


def test_two_commands_started_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    """The folder is made when the command line is settled (`mkdir`, which fails on one that
    exists), not when Hydra starts: the second command gets a suffix, never the first's."""
    from datetime import datetime
    from pathlib import Path

    from mnistlab.lab.files import new_folder

    class OneSecond(datetime):  # Hydra's ${now:}, held at one second
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 1)

    monkeypatch.setattr("hydra.core.utils.datetime", OneSecond)
    for sweep, key in (([], "hydra.run.dir"), (["-m", "seed=1,2"], "hydra.sweep.dir")):
        argv = [*sweep, f"paths.log_dir={tmp_path}", "name=x"]
        first, second = (prepare(argv, "train", claim=True)[-1] for _ in range(2))
        assert first.endswith("2026-01-01_00-00-00_x") and second == f"{first}_1"
        assert first.startswith(f"{key}=") and Path(second.split("=", 1)[1]).is_dir()
    assert prepare([f"paths.log_dir={tmp_path}", "seed=3"], "train")[-1] == "seed=3"  # no claim
    assert [new_folder(tmp_path / "e").name for _ in range(3)] == ["e", "e_1", "e_2"]


@pytest.mark.parametrize(
    "folder", ["/tmp/a,b/x", "/tmp/My Drive/x", "/tmp/a(1)/[x]", "/tmp/é/x", "/tmp/it's", "/q\\'x/"]
)
def test_a_settled_folder_reads_back_as_it_is_whatever_its_characters(folder):
    """The folder `prepare` puts on the command line (a new run's, the one resume= continues)
    goes through Hydra's override grammar: a comma must not make it a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mnistlab.lab.cli import _with

    (line,), _ = _with([], "hydra.run.dir", folder, None)
    assert OverridesParser.create().parse_override(line).value() == folder


def test_a_full_disk_is_one_line_before_hydra_writes_the_run_s_config(tmp_path, monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mnistlab.lab.cli.os.fsync", full)
    with pytest.raises(UserError, match="No space left on device; free some space") as e:
        prepare([f"paths.log_dir={tmp_path}"], "train", claim=True)
    assert e.value.code == 1 and "\n" not in str(e.value)
    assert not list((tmp_path / "train" / "runs").iterdir())  # the folder it made is gone

"""The machinery serves any LightningModule: a plain one written from Lightning's documentation
alone (`PLAIN` below, in a folder outside src/ with its own config, plugged in by the command
line), and the second worked example, `experiment=autoencoder`, which is not a classifier.
Each goes through the real command line: train, eval, export; in the slow tier also kill -9 and
`resume=auto` bitwise, `trainer=ddp_cpu` as one run folder, and a seed sweep with its report."""

import csv
import json
import signal
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from runner import TESTS, base_args, run_cli, start_cli, wait_for

from mnistlab.lab import eval as evaluation
from mnistlab.lab import export, report

PLAIN = """
import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class Plain(L.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 1e-3, dropout: float = 0.25):
        super().__init__()
        self.save_hyperparameters()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(),
                                    nn.Dropout(dropout), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("test_acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class Broken(Plain):
    def training_step(self, batch, batch_idx):
        raise ValueError("boom in my training_step")


class BrokenTest(Plain):
    def test_step(self, batch, batch_idx):
        raise ValueError("boom in my test_step")


class Clashing(Plain):  # saves `seed`, a key of the run's config too
    def __init__(self, hidden: int = 32, lr: float = 1e-3, dropout: float = 0.25, seed: int = 0):
        super().__init__(hidden, lr, dropout)
        self.save_hyperparameters()


class Lazy(Plain):  # its first layer's input size is found on the first batch
    def __init__(self, hidden: int = 32, lr: float = 1e-3, dropout: float = 0.25):
        super().__init__(hidden, lr, dropout)
        self.layers[1] = nn.LazyLinear(hidden)
"""

# What a researcher adds to plug it in: a config file, and these settings.
PLAIN_CONFIG = "_target_: plainmod.Plain\nhidden: 32\nlr: 0.001\n"
MODELS = {
    "plain": ["model=plain", "monitor=val_loss", "mode=min", "optimized_metric=val_loss",
              "report_metrics=[val_loss,test_loss,test_acc]", "callbacks.pictures=null"],
    "autoencoder": ["experiment=autoencoder"],
}  # fmt: skip
LOSS = {"plain": "test_loss", "autoencoder": "test/loss"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder outside src/ holding the plain module and its config, as a fork would."""
    folder = tmp_path_factory.mktemp("own")
    (folder / "plainmod.py").write_text(textwrap.dedent(PLAIN))
    (folder / "conf" / "model").mkdir(parents=True)
    (folder / "conf" / "model" / "plain.yaml").write_text(PLAIN_CONFIG)
    return folder


@pytest.fixture
def importable(project, monkeypatch):
    monkeypatch.syspath_prepend(str(project))
    yield project
    sys.modules.pop("plainmod", None)


def env(project: Path) -> dict:
    return {"PYTHONPATH": f"{project}:{TESTS}"}


def args(kind: str, project: Path, synthetic_mnist, log_dir: Path, *extra: str) -> list[str]:
    return [*base_args(synthetic_mnist, log_dir, *extra), f"hydra.searchpath=[file://{project / 'conf'}]",
            *MODELS[kind]]  # fmt: skip


def only_run(log_dir: Path) -> Path:
    (run,) = (log_dir / "train" / "runs").iterdir()
    return run


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def trained_runs(project, synthetic_mnist, tmp_path_factory) -> dict[str, Path]:
    """One run of each, through the real command line."""
    runs = {}
    for kind in MODELS:
        log_dir = tmp_path_factory.mktemp(kind)
        proc = run_cli(
            *args(kind, project, synthetic_mnist, log_dir), cwd=log_dir, env=env(project)
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[kind] = only_run(log_dir)
        if kind == "plain":  # its monitored metric on each epoch's line, though not on the bar
            (epoch,) = [ln for ln in proc.stderr.splitlines() if " - epoch 1/" in ln]
            assert " val_loss " in epoch, epoch
    return runs


def test_a_tiny_metric_is_shown_with_its_digits_not_as_zero():
    from mnistlab.lab.stats import number

    assert [number(v) for v in (0.98351, 0.0473, 3.21e-05, 0.0)] == [
        "0.9835", "0.0473", "3.21e-05", "0.0000"]  # fmt: skip


def test_a_run_continues_with_its_own_config_folder_which_is_signed(
    trained_runs, project, tmp_path
):
    """resume=<run> of a run started with hydra.searchpath= (a config folder of one's own) finds
    its configs without being told again; a searchpath written into its hydra.yaml afterwards
    makes it a run from elsewhere."""
    import shutil

    from mnistlab.lab.cli import prepare
    from mnistlab.lab.signing import made_here

    run = trained_runs["plain"]
    argv = prepare([f"resume={run}", "trainer.max_epochs=9"], "train")  # model=plain: its conf/
    assert [a for a in argv if a.startswith("hydra.searchpath=")] == [
        f"hydra.searchpath=[file://{project / 'conf'}]"
    ], argv
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert made_here(copy)
    hydra = copy / ".hydra" / "hydra.yaml"
    hydra.write_text(
        hydra.read_text().replace("searchpath=[file://", "searchpath=[file:///tmp/x,file://")
    )
    assert not made_here(copy)


def test_a_wrong_value_for_one_s_own_module_is_refused_before_a_sweep_starts(
    project, synthetic_mnist, tmp_path
):
    """Its constructor's type hints, for every value of a sweep (a single run's the same way),
    on the command line: exit 2, one line, no folder made."""
    logs = tmp_path / "logs"
    proc = run_cli("-m", *args("plain", project, synthetic_mnist, logs, "model.hidden=16,abc"),
                   cwd=tmp_path, env=env(project))  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "mnistlab-train: error: model.hidden=abc: expected an integer"
    ]
    assert not logs.exists()


@pytest.mark.parametrize("kind", MODELS)
def test_trained_then_evaluated_and_exported_with_parity(kind, trained_runs, importable, capsys):
    run = trained_runs[kind]
    trained = results(run)
    assert trained["reported"] == list(
        {"plain": ["val_loss", "test_loss", "test_acc"], "autoencoder": ["val/loss", "test/loss"]}[
            kind
        ]
    )
    best = Path(trained["best_checkpoint"])
    assert best.name.startswith("epoch") and ("val_loss" in best.name)  # monitored, minimized
    # Lightning, imported by the command line's check before Hydra set up logging, still logs
    assert "`Trainer.fit` stopped: `max_epochs=" in (run / "train.log").read_text()
    if kind == "plain":  # the HParams tab shows its own lr and hidden (no model.optimizer here)
        hparams = (run / "hparams.yaml").read_text().splitlines()
        assert "lr: 0.001" in hparams and "hidden: 32" in hparams, hparams

    assert evaluation.main([f"run={run}"]) == 0  # the run's own config, this checkout's run
    (record,) = [json.loads(p.read_text()) for p in (run.parents[2] / "eval").rglob("metrics.json")]
    assert record["metrics"][LOSS[kind]] == trained["metrics"][LOSS[kind]]  # to the last bit

    capsys.readouterr()
    assert export.main([f"run={run}"]) == 0
    out = capsys.readouterr().out
    assert "safetensors 0.00e+00" in out
    if "onnx " in out:  # the export extras (CI installs them)
        assert float(out.split("onnx ")[-1].split()[0]) <= 1e-5
    described = json.loads((best.parent / "model.json").read_text())
    assert described["input"]["shape"] == [1, 28, 28] and described["input"]["dtype"] == "uint8"
    assert described["network"]["kind"] == {"plain": "module", "autoencoder": "net"}[kind]
    assert ("classes" in described) == (kind == "plain")  # its logits: a score per digit
    loaded = export.load_exported(best.parent)
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    shape = (3, 10) if kind == "plain" else (3, 1, 28, 28)
    assert loaded(images).shape == shape


def test_a_failure_in_the_module_s_code_ends_eval_in_one_line_naming_where(
    trained_runs, importable, capsys, monkeypatch
):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    run = trained_runs["plain"]
    assert evaluation.main([f"run={run}", "model._target_=plainmod.BrokenTest"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mnistlab-eval: failed: ValueError: boom in my test_step (plainmod.py:")
    assert err.endswith(", in test_step); HYDRA_FULL_ERROR=1 shows the traceback"), err


def test_a_failure_with_no_frame_of_one_s_own_is_still_one_line():
    from mnistlab.lab import failure

    assert failure(ValueError("first\nsecond")) == "ValueError: first"  # never raised: no frames


def test_the_classification_tools_refuse_a_module_that_is_not_a_classifier_in_one_line(
    trained_runs, tmp_path, capsys, monkeypatch
):
    from PIL import Image

    from mnistlab.classify import predict
    from mnistlab.classify.pictures import Pictures
    from mnistlab.lab import UserError
    from mnistlab.lab.checkpoint import load
    from mnistlab.lab.config import build
    from mnistlab.lab.rebuild import build_model, run_config

    run = trained_runs["autoencoder"]
    image = tmp_path / "x.png"
    Image.new("L", (28, 28)).save(image)
    assert predict.main([f"run={run}", f"input={image}"]) == 2
    err = capsys.readouterr().err
    assert "needs a classifier: AutoEncoder's forward on a (1, 1, 28, 28) batch gives" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setattr("mnistlab.lab.rebuild._newest_finished_run", lambda: run)  # no run=
    assert predict.main([f"input={image}"]) == 2
    assert "logits for the 10 classes; name a classifier's run with run= (RUN=)" in (
        capsys.readouterr().err
    )

    path = Path(results(run)["best_checkpoint"])
    checkpoint = load(path, require_checksum=False)
    cfg = run_config(run, checkpoint, path, [], "eval")
    trainer = SimpleNamespace(datamodule=build(cfg, "data"))
    with pytest.raises(UserError, match=r"callbacks\.pictures .* needs a classifier"):
        Pictures().setup(trainer, build_model(cfg, checkpoint, path), "fit")


@pytest.mark.slow  # 20-25 s of runs: the fast tier stays near 3 minutes
def test_own_hyperparameters_and_lazy_layers_resume_evaluate_and_export(
    project, importable, synthetic_mnist, tmp_path, capsys
):
    """A module that saves its own hyperparameters (`self.save_hyperparameters()`, as Lightning's
    docs say) and has a lazy layer: continued with more epochs it warns of that change alone (its
    own keys beside the run's config are no change), and its lone checkpoint evaluates and
    exports (a lazy layer's shape is no mismatch)."""
    searchpath = f"hydra.searchpath=[file://{project / 'conf'}]"
    lazy = [*MODELS["plain"], "model._target_=plainmod.Lazy"]
    first = run_cli(*base_args(synthetic_mnist, tmp_path, searchpath, *lazy), cwd=tmp_path,
                    env=env(project))  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    run = only_run(tmp_path)
    more = run_cli(f"resume={run}", "trainer.max_epochs=3", searchpath, cwd=tmp_path,
                   env=env(project))  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    (warned,) = [line for line in more.stderr.splitlines() if "changed config" in line]
    changed = "log_hparams.max_epochs 2 -> 3, trainer.max_epochs 2 -> 3"  # the first follows
    assert warned.endswith(f"Resuming with a changed config: {changed}"), warned
    best = Path(results(run)["best_checkpoint"])
    assert evaluation.main([f"ckpt={best}"]) == 0
    assert export.main([f"run={run}"]) == 0
    assert "safetensors 0.00e+00" in capsys.readouterr().out
    # Its own hyperparameter named as a key of the run's config: one would overwrite the other.
    clash = run_cli(*base_args(synthetic_mnist, tmp_path / "c", searchpath, *MODELS["plain"],
                               "model._target_=plainmod.Clashing"), cwd=tmp_path, env=env(project))  # fmt: skip
    assert clash.returncode == 1
    assert "Clashing's own save_hyperparameters() saves ['seed'], which the run's config" in (
        clash.stderr
    )


EXACT = ["trainer.max_epochs=2", "trainer.deterministic=true", "trainer.limit_train_batches=null",
         "trainer.limit_val_batches=null", "data.batch_size=32", "resume=auto"]  # fmt: skip


def last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", MODELS)
def test_kill_9_then_resume_auto_ends_bitwise_equal(kind, project, synthetic_mnist, tmp_path):
    whole = run_cli(*args(kind, project, synthetic_mnist, tmp_path / "a", *EXACT), cwd=tmp_path,
                    env=env(project))  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    pause = ["+callbacks.pause._target_=runner.PauseAt", "+callbacks.pause.step=24",
             f"+callbacks.pause.marker={tmp_path / 'm'}"]  # fmt: skip
    command = args(kind, project, synthetic_mnist, tmp_path / "b", *EXACT, *pause)
    proc = start_cli(*command, cwd=tmp_path, env=env(project))
    wait_for(tmp_path / "m", proc)  # held at step 24 of 32, in epoch 2
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    again = run_cli(*command, cwd=tmp_path, env=env(project))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(epoch 1, step 16)" in again.stderr
    a, b = last(only_run(tmp_path / "a")), last(only_run(tmp_path / "b"))
    assert a["global_step"] == b["global_step"] == 32
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    untimed = [{k: v for k, v in results(only_run(tmp_path / d))["metrics"].items()
                if not k.startswith("perf/")} for d in "ab"]  # fmt: skip
    assert untimed[0] == untimed[1] and LOSS[kind] in untimed[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", MODELS)
def test_ddp_on_two_cpu_processes_is_one_run_folder(kind, project, synthetic_mnist, tmp_path):
    extra = ["trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=1",
             "trainer.limit_train_batches=null", "data.batch_size=50"]  # fmt: skip
    proc = run_cli(*args(kind, project, synthetic_mnist, tmp_path, *extra), cwd=tmp_path,
                   env=env(project))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob(".hydra")) == [".hydra"]
    assert [p.name for p in run.glob("*.log")] == ["train.log"]
    writers = {p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}
    assert len(writers) == 1, writers  # one process wrote the TensorBoard run
    # 500 training images (600 less the 100 held out), 250 a process, 50 a step: 5 steps.
    assert results(run)["global_step"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("kind", MODELS)
def test_a_seed_sweep_and_its_report(kind, project, synthetic_mnist, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *args(kind, project, synthetic_mnist, tmp_path, "trainer.max_epochs=1"),
                   f"hydra.sweep.dir={sweep}", "seed=1,2", cwd=tmp_path, env=env(project))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    capsys.readouterr()
    assert report.main([f"sweep={sweep}"]) == 0
    (row,) = csv.DictReader((sweep / "report.csv").open())
    assert row["runs"] == "2" and float(row[f"{LOSS[kind]}:std"]) >= 0
    losses = [results(sweep / n)["metrics"][LOSS[kind]] for n in ("0", "1")]
    assert float(row[f"{LOSS[kind]}:mean"]) == pytest.approx(sum(losses) / 2, abs=1e-12)


@pytest.mark.slow
def test_a_module_s_own_failures_are_one_line_naming_where(project, synthetic_mnist, tmp_path):
    """An exception in the module's code: one line naming its file and line, the traceback in
    the run's train.log. A monitor the module never logs: refused before the first step."""
    proc = run_cli(*args("plain", project, synthetic_mnist, tmp_path / "a", "model._target_=plainmod.Broken"),
                   cwd=tmp_path, env=env(project))  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if "Run failed" in ln]
    assert "ValueError: boom in my training_step (plainmod.py:" in line and "train.log" in line
    assert "Traceback" in (only_run(tmp_path / "a") / "train.log").read_text()

    wrong = [a.replace("monitor=val_loss", "monitor=val_f1")
             for a in args("plain", project, synthetic_mnist, tmp_path / "b")]  # fmt: skip
    proc = run_cli(*wrong, cwd=tmp_path, env=env(project))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        "monitor=val_f1: the model logs no such metric in validation (it logs val_acc, val_loss)"
        in proc.stderr
    )
    assert "epoch 1/" not in proc.stderr  # before any training

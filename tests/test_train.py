"""The real entry point: in process on tiny synthetic data, and as a command line in a subprocess."""

import json
import os
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import compose_train
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf, open_dict
from runner import cli_args, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.lab.config import ROOT
from mnistlab.nets import ConvNet
from mnistlab.train import train

SCALARS = {
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/acc_best",
    "test/loss",
    "test/acc",
}


def test_network_maps_images_to_logits():
    for net in (ConvNet(), ConvNet(channels=(8, 16), hidden=32, dropout=0.25)):
        assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_training_learns_far_better_than_chance(tiny_cfg):
    """~48 Adam steps on 500 synthetic images. A ReLU on the logits stalls near 0.6-0.7 accuracy
    here; a softmax fed to the loss cannot bring cross-entropy below log(1 + 9/e) = 1.46."""
    cfg = tiny_cfg(
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=null",
        "trainer.limit_val_batches=null",
        "trainer.limit_test_batches=null",
        "data.batch_size=32",
    )
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.9, metrics
    assert metrics["val/acc_best"] >= 0.9 and metrics["test/loss"] < 0.5


def test_command_line_run_leaves_a_complete_run_folder(synthetic_mnist, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*cli_args(synthetic_mnist, run_dir), cwd=tmp_path)  # not the project root
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/acc" in proc.stderr and f"Run folder: {run_dir}" in proc.stderr

    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.trainer.max_epochs == 2
    assert "Done:" in (run_dir / "train.log").read_text()
    assert OmegaConf.load(run_dir / "hparams.yaml").lr == 1e-3

    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in checkpoints} >= {"last.ckpt"} and len(checkpoints) == 2
    for path in checkpoints:
        ckpt = torch.load(path, weights_only=True)  # plain data only: no pickled objects
        assert ckpt["hyper_parameters"]["model"]["net"]["channels"] == [16]
        assert ckpt["hyper_parameters"]["data"]["batch_size"] == 64
    net = ConvNet()
    net.load_state_dict(
        {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    )

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags >= set(SCALARS), tags
    assert "epoch" not in tags and not any(t.startswith("hp/") for t in tags)  # no one-point charts
    assert len(events.Scalars("val/acc")) == 2 and len(events.Scalars("train/loss")) == 6
    # The epoch lines show each epoch's mean loss (not the last step's value, then stale).
    means = [e.value for e in events.Scalars("train/loss_epoch")]
    lines = [line for line in (run_dir / "train.log").read_text().splitlines()
             if " epoch 1/2 " in f" {line} " or " epoch 2/2 " in f" {line} "]  # fmt: skip
    assert len(lines) == 2 == len(means), lines
    for line, mean in zip(lines, means, strict=True):
        assert f"train/loss_epoch {mean:.4f}" in line and "train/loss " not in line, line
    assert "hp_metric" not in tags
    from tbparse import SummaryReader  # what other tools read: the metric names as logged

    found = SummaryReader(str(run_dir)).scalars
    results = json.loads((run_dir / "results.json").read_text())["metrics"]
    (value,) = found[found.tag == "test/acc"].value
    assert value == pytest.approx(results["test/acc"], rel=1e-6)
    assert not (tmp_path / "lightning_logs").exists() and not (ROOT / "lightning_logs").exists()


def test_command_line_reports_missing_data_in_a_few_lines(synthetic_mnist, tmp_path):
    run_dir = tmp_path / "run"
    args = [*cli_args(synthetic_mnist, run_dir), f"paths.data_dir={tmp_path / 'empty'}"]
    proc = run_cli(*args, cwd=tmp_path, env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert f"MNIST files missing or unverified in {tmp_path / 'empty' / 'MNIST' / 'raw'}" in output
    assert "by hand" in output
    assert (run_dir / "train.log").is_file()  # a failed run keeps its log


@pytest.mark.slow  # a command line run: 10 s; the fast tier stays near 3 minutes
def test_a_setting_the_library_refuses_is_one_line_in_the_console_and_the_log(
    synthetic_mnist, tmp_path
):
    """A value only Lightning can judge (an accelerator it does not know) is not Hydra's
    several-line report: one line naming the key, exit 1, and the failed run's log has it."""
    run_dir = tmp_path / "run"
    args = [*cli_args(synthetic_mnist, run_dir), "trainer.accelerator=tpu2"]
    proc = run_cli(*args, cwd=tmp_path, env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "Error" in line]
    assert len(errors) == 1 and "trainer: cannot be built:" in errors[0] and "tpu2" in errors[0]
    assert "trainer: cannot be built:" in (run_dir / "train.log").read_text()


@pytest.mark.slow  # a sweep through the command line: 12 s; the fast tier stays near 3 minutes
def test_multirun_gives_each_job_a_complete_folder(synthetic_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = [a for a in cli_args(synthetic_mnist, tmp_path / "run") if "hydra.run.dir" not in a]
    proc = run_cli(
        "-m", *args, f"hydra.sweep.dir={sweep_dir}", "data.batch_size=32,64", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, batch_size in (("0", 32), ("1", 64)):
        assert (
            OmegaConf.load(sweep_dir / job / ".hydra" / "config.yaml").data.batch_size == batch_size
        )
        assert (sweep_dir / job / "checkpoints" / "last.ckpt").is_file()
        label = f"batch_size={batch_size}"  # TensorBoard's run: <job>/<what the sweep varies>
        assert list((sweep_dir / job / label).glob("events.out.tfevents.*"))
        assert (sweep_dir / job / "train.log").is_file()


def test_optional_histograms_and_graph_are_written(tiny_cfg, tmp_path):
    train(tiny_cfg("callbacks.dashboard.histograms=true", "callbacks.dashboard.graph=true"))
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"histograms": 0}).Reload()
    histograms = set(events.Tags()["histograms"])
    assert {"weights/net.layers.0.weight", "grads/net.layers.0.weight"} <= histograms
    assert events.Tags()["graph"]


def test_the_training_loss_is_the_batch_mean_of_cross_entropy(tiny_cfg):
    from hydra.utils import instantiate

    model = instantiate(tiny_cfg().model)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    expected = torch.nn.functional.cross_entropy(model(x), y)  # the mean over the batch
    assert torch.allclose(model._step((x, y), "train")[0], expected)


@pytest.mark.slow  # 12-27 s of training or fuzzing: the fast tier stays near 3 minutes
def test_label_smoothing_and_class_weights_are_set_from_the_command_line(synthetic_mnist, tmp_path):
    """The loss is a config node: smoothing and per-class weights need no code, reach the
    criterion, and a weight list of the wrong length is one line naming the key."""
    from hydra.utils import instantiate

    from mnistlab.lab import UserError
    from mnistlab.lab.cli import prepare
    from mnistlab.lab.config import build

    weights = [1.0] * 9 + [3.0]
    cfg = compose_train(["model.loss.label_smoothing=0.1", f"model.loss.weight={weights}"])
    model = instantiate(cfg.model, num_classes=10)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    expected = torch.nn.functional.cross_entropy(
        model(x), y, weight=torch.tensor(weights), label_smoothing=0.1, reduction="none"
    ).mean()  # per image, weighted by its class, then the batch mean
    assert torch.allclose(model._step((x, y), "train")[0], expected)
    with pytest.raises(UserError, match=r"model\.loss\.weight has 3 values for 10 classes"):
        build(compose_train(["model.loss.weight=[1,2,3]"]), "model")  # as a run builds it

    run_dir = tmp_path / "run"
    proc = run_cli(*cli_args(synthetic_mnist, run_dir), "model.loss.label_smoothing=0.1",
                   f"model.loss.weight={weights}", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model.loss.weight" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    with pytest.raises(UserError, match=r"model\.loss\.label_smoothing=2: must be within \[0, 1\]"):
        prepare(["model.loss.label_smoothing=2"], "train")  # the command line's own check


def test_the_final_test_runs_on_the_best_checkpoint(tiny_cfg, caplog):
    caplog.set_level("INFO")
    metrics = train(tiny_cfg("trainer.max_epochs=2"))
    (run,) = {r.getMessage().split(" at ")[-1] for r in caplog.records
              if "Restoring states from the checkpoint path" in r.getMessage()}  # fmt: skip
    assert "epoch" in run and run.endswith(".ckpt") and "test/acc" in metrics


def test_a_resumed_run_hides_the_old_events_after_its_checkpoint(tiny_cfg):
    """TensorBoard's purge_step: the resumed writer marks the checkpoint's step, so events the
    interrupted run logged after it are not shown twice."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    first = tiny_cfg("trainer.max_epochs=1")
    train(first)
    train(tiny_cfg("trainer.max_epochs=2", "resume=auto"))  # the same output_dir: continues it
    starts = [
        event.step
        for path in sorted(Path(first.paths.output_dir).glob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        if event.HasField("session_log") and event.session_log.status == SessionLog.START
    ]
    assert starts == [4]  # 4 steps in epoch 1 (limit_train_batches=4)


class BlindInEpoch2(Callback):
    """Validation of epoch 2 sees a network whose last layer is zero (every image: class 0), so
    the validation accuracy drops there; the weights come back after validating."""

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1 and not trainer.sanity_checking:
            last = [m for m in pl_module.modules() if isinstance(m, torch.nn.Linear)][-1]
            self.saved = (last, last.weight.detach().clone(), last.bias.detach().clone())
            with torch.no_grad():
                last.weight.zero_(), last.bias.zero_()

    def on_validation_end(self, trainer, pl_module) -> None:
        if getattr(self, "saved", None):
            last, weight, bias = self.saved
            with torch.no_grad():
                last.weight.copy_(weight), last.bias.copy_(bias)
            self.saved = None


def test_val_acc_best_is_the_best_epoch_so_far_not_the_last(tiny_cfg):
    cfg = tiny_cfg("trainer.max_epochs=3")
    with open_dict(cfg):
        cfg.callbacks.blind = {"_target_": "test_train.BlindInEpoch2"}
    train(cfg)
    events = EventAccumulator(cfg.paths.output_dir).Reload()
    acc, best = ([e.value for e in events.Scalars(t)] for t in ("val/acc", "val/acc_best"))
    assert acc[1] < acc[0]  # the dip
    assert best == [max(acc[: i + 1]) for i in range(len(acc))]


class CountsSteps(Callback):
    last = None

    def __init__(self):
        self.steps = 0
        CountsSteps.last = self

    def on_train_batch_end(self, *args) -> None:
        self.steps += 1


def test_hooks_a_callback_defines_run_and_the_inherited_ones_are_not_dispatched(tiny_cfg):
    """lean.skip_empty_hooks: Lightning skips the per-batch hooks a callback only inherits."""
    cfg = tiny_cfg("trainer.limit_train_batches=3", "trainer.limit_test_batches=1")
    with open_dict(cfg):
        cfg.callbacks.counts = {"_target_": "test_train.CountsSteps"}
    train(cfg)
    counts = CountsSteps.last
    assert counts.steps == 3
    assert counts.on_train_batch_start is None and counts.on_before_backward is None


class SeesNvmlCheck(Callback):
    seen: ClassVar[list] = []

    def on_train_batch_end(self, *args) -> None:
        SeesNvmlCheck.seen.append(os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"))


def test_a_cpu_fit_makes_no_nvml_query_per_step_and_puts_the_setting_back(tiny_cfg, monkeypatch):
    """lean.NoCudaProbe: `import lightning` sets PYTORCH_NVML_BASED_CUDA_CHECK=1, which makes
    every optimizer step ask NVML whether CUDA is there. A CPU fit runs without it; the
    process has it again afterwards (a later forked DDP launch relies on it)."""
    cfg = tiny_cfg("trainer.limit_train_batches=2", "trainer.limit_test_batches=1")
    with open_dict(cfg):
        cfg.callbacks.sees = {"_target_": "test_train.SeesNvmlCheck"}
    SeesNvmlCheck.seen = []
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as `import lightning` sets it
    train(cfg)
    assert SeesNvmlCheck.seen == [None, None]
    assert os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1"


def test_the_hook_name_is_a_plain_attribute_and_modules_still_register():
    """Classifier.__setattr__'s fast path is for Lightning's `_current_fx_name` alone."""
    from torch import nn

    from mnistlab.classifier import Classifier
    from mnistlab.nets import ConvNet

    model = Classifier(ConvNet(), torch.optim.Adam)
    model._current_fx_name = "training_step"
    model.extra = nn.Linear(2, 2)
    assert model._current_fx_name == "training_step" and "_current_fx_name" in vars(model)
    assert "extra" in model._modules and "extra.weight" in model.state_dict()


def test_the_run_module_reads_alone():
    """`train(cfg)` is the whole run: importing it brings in none of the command's machinery
    (the command line, exits, sweep jobs, requeue), which lives in mnistlab.lab.launch."""
    import subprocess
    import sys

    code = ("import sys, mnistlab.train\n"
            "print(sorted(m for m in ('mnistlab.lab.launch', 'mnistlab.lab.cli', 'hydra_plugins')"
            " if m in sys.modules))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_hparams_columns_are_the_experiment_and_every_key_set_on_the_command_line():
    from mnistlab.lab.dashboard import hparams

    overrides = ["experiment=two_conv", "model.optimizer.lr=3e-4", "paths.log_dir=/x", "name=w",
                 "hydra.job.chdir=false", "+trainer.limit_train_batches=3"]  # fmt: skip
    cfg = compose_train(overrides)
    columns = hparams(cfg, {"experiment": "two_conv", "data": "mnist"}, overrides)
    assert {k: columns[k] for k in ("experiment", "name", "trainer.limit_train_batches")} == {
        "experiment": "two_conv", "name": "w", "trainer.limit_train_batches": 3}  # fmt: skip
    assert "model.optimizer.lr" not in columns  # log_hparams' lr is that key already
    assert not any(k.startswith(("paths.", "hydra.")) for k in columns), columns
    assert columns["channels"] == [16, 32] and columns["lr"] == 3e-4  # log_hparams, resolved
    assert hparams(compose_train())["experiment"] == "none"


def test_make_tensorboard_pins_the_validation_curves(capsys):
    """The URL make tensorboard prints opens Time Series with val/acc and val/loss pinned at
    the top: TensorBoard's own pinned cards, named in its `pinnedCards` query parameter."""
    import importlib.util
    import json
    import urllib.parse

    spec = importlib.util.spec_from_file_location("serve", ROOT / "scripts/serve_tensorboard.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    url = launcher.url("127.0.0.1", 6006, ["val/acc", "val/loss"])
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert json.loads(query["pinnedCards"][0]) == [
        {"plugin": "scalars", "tag": "val/acc"}, {"plugin": "scalars", "tag": "val/loss"}]  # fmt: skip
    assert url.endswith("#timeseries")


def test_lightning_s_tips_are_not_printed_and_its_messages_reach_the_run_s_log(caplog):
    import logging

    from mnistlab.lab import quiet_lightning

    quiet_lightning()
    said = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level("INFO"):
        said.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        said.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]

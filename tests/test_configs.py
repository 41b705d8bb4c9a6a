"""Every shipped config option composes, instantiates, and (for whole-run options) trains."""

import math

import pytest
import torch
from conftest import compose_train, need_modules
from hydra.utils import instantiate

from mnistlab.lab.config import CONF_DIR, to_plain
from mnistlab.lab.schema import validate
from mnistlab.train import train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


TRACKERS = {"mlflow": ["mlflow"], "wandb": ["wandb"], "comet": ["comet_ml"], "many": ["mlflow"]}
COMPONENT_GROUPS = ["data", "model", "model/net", "trainer", "callbacks", "logger"]
GROUP_OPTIONS = [(g, o) for g in COMPONENT_GROUPS for o in options(g)]


def test_every_group_has_options():
    assert all(options(g) for g in [*COMPONENT_GROUPS, "experiment", "debug"])


@pytest.mark.parametrize(
    ("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS]
)
def test_group_option_composes_and_instantiates(group, option, tmp_path, image_folder,
                                               monkeypatch):  # fmt: skip
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}"]
    if group == "logger" and option in TRACKERS:  # the loggers extra: make install-loggers
        need_modules(*TRACKERS[option], install="make install-loggers")
        monkeypatch.setenv("COMET_START_ONLINE", "false")  # as logger=comet's command sets it
    if option == "image_folder":
        overrides.append(f"data.root={image_folder}")
    if option == "fashion_mnist":
        overrides.append("data.checksums={}")
    cfg = compose_train(overrides)
    validate(to_plain(cfg), deep=True)  # every key a shipped option sets is a real argument
    model = instantiate(cfg.model)
    size = cfg.data.image_size
    shape = (cfg.data.channels, *((size, size) if isinstance(size, int) else size))
    out = model(torch.zeros(2, *shape)).shape  # logits, or the images again (model=autoencoder)
    assert out == ((2, *shape) if option == "autoencoder" else (2, len(cfg.data.classes)))
    instantiate(cfg.data)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c]
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("trainer=gpu composes, but needs a GPU to instantiate")
    instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


@pytest.mark.parametrize(
    "override",
    [f"experiment={o}" for o in options("experiment")] + [f"debug={o}" for o in options("debug")],
)
def test_run_option_trains_a_few_steps(override, tiny_cfg, tmp_path):
    if override == "experiment=digits":  # its own data: scikit-learn's digits, not MNIST
        need_modules("sklearn", install="make install-digits")
        cfg = compose_train([override, "trainer=cpu", "trainer.max_epochs=1",
                             "trainer.limit_train_batches=4", f"paths.log_dir={tmp_path}",
                             f"paths.output_dir={tmp_path / 'run'}"])  # fmt: skip
    else:
        cfg = tiny_cfg(override)
    metrics = train(cfg)
    assert all(math.isfinite(metrics[k]) for k in cfg.report_metrics), metrics
    if "test/acc" in cfg.report_metrics:
        assert 0.0 <= metrics["test/acc"] <= 1.0


@pytest.mark.parametrize("override", ["logger=csv", "logger=none", "callbacks=early_stopping"])
def test_component_option_trains_a_few_steps(override, tiny_cfg, tmp_path):
    metrics = train(tiny_cfg(override))
    assert "val/acc_best" in metrics
    if override == "logger=csv":
        assert (tmp_path / "run" / "metrics.csv").read_text().count("test/acc") == 1


def test_reference_experiment_is_the_origin_document():
    cfg = compose_train(["experiment=reference"])
    assert cfg.data.batch_size == 64 and cfg.trainer.max_epochs == 5
    assert list(cfg.data.mean) == [0.5] and list(cfg.data.std) == [0.5]
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 1e-3
    assert cfg.model.scheduler is None and cfg.data.augment is None
    net = instantiate(cfg.model.net)
    layers = ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert [type(m).__name__ for m in net.layers] == layers
    assert (
        sum(p.numel() for p in net.parameters()) == 16 * 9 + 16 + 3136 * 128 + 128 + 128 * 10 + 10
    )


def test_defaults_equal_the_reference_experiment():
    """`make train` with no arguments is the reference experiment."""
    default, reference = compose_train([]), compose_train(["experiment=reference"])
    assert default == reference


def test_early_stopping_says_when_it_ends_a_run(tiny_cfg, caplog):
    """Stopping early is logged (train.log), with the metric and why: not a silent short run."""
    cfg = tiny_cfg("callbacks=early_stopping", "callbacks.early_stopping.patience=0",
                   "callbacks.early_stopping.min_delta=2", "trainer.max_epochs=4")  # fmt: skip
    with caplog.at_level("INFO"):
        train(cfg)
    stops = [
        r.getMessage() for r in caplog.records if "Signaling Trainer to stop" in r.getMessage()
    ]
    assert len(stops) == 1 and "val/acc" in stops[0], stops


@pytest.mark.parametrize(("monitor", "name"), [("val/acc", "val_acc"), ("val/loss", "val_loss")])
def test_the_best_checkpoint_s_name_follows_the_monitored_metric(monitor, name):
    cfg = compose_train([f"monitor={monitor}", "mode=min" if "loss" in monitor else "mode=max"])
    node = cfg.callbacks.model_checkpoint
    assert node.monitor == monitor
    assert node.filename == f"epoch{{epoch:03d}}-{name}{{{monitor}:.4g}}"
    # four significant digits: a regressor's small losses get names of their own
    checkpoint = instantiate(node, dirpath="/tmp/x")
    names = [checkpoint.format_checkpoint_name({"epoch": 2, monitor: torch.tensor(value)})
             for value in (0.98361, 1.431e-05, 1.52e-05)]  # fmt: skip
    assert names[0].endswith(f"epoch002-{name}0.9836.ckpt") and len(set(names)) == 3, names

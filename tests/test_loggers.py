"""The experiment trackers of conf/logger/ (`make install-loggers`): each option composes to a
Lightning Logger the schema and the trust check accept, and a real run leaves its hyperparameters
and final `test/acc` in the tracker's own store (read back with the tracker's own reader). A run
test skips when its package is missing (fails under CI=true)."""

import json
import struct
import zipfile
from pathlib import Path

import pytest
from conftest import compose_train, need_modules

from mnistlab.lab.config import to_plain
from mnistlab.lab.schema import validate
from mnistlab.lab.trust import check_target
from mnistlab.train import train

INSTALL = "make install-loggers"
LOGGERS = {"mlflow": ["mlflow"], "wandb": ["wandb"], "comet": ["comet"],
           "many": ["tensorboard", "csv", "mlflow"]}  # fmt: skip
HPARAMS = {"lr": 0.001, "batch_size": 64, "seed": 12345}  # some of conf/train.yaml's log_hparams


@pytest.mark.parametrize("option", sorted(LOGGERS))
def test_logger_option_composes_to_loggers_the_checks_accept(option, tmp_path):
    cfg = compose_train([f"logger={option}", f"paths.output_dir={tmp_path}"])
    assert sorted(cfg.logger) == sorted(LOGGERS[option])
    validate(to_plain(cfg), deep=True)  # every key a real argument of its logger
    from lightning.pytorch.loggers import Logger

    for name, node in cfg.logger.items():  # what a restored run's config may build, too
        assert issubclass(check_target(node._target_, f"logger.{name}", "a Logger"), Logger)
        assert str(cfg.paths.output_dir) in json.dumps(to_plain(node)) or name == "mlflow"


def _logged_hparams_are_there(params: dict) -> None:
    assert {k: str(params.get(k)) for k in HPARAMS} == {k: str(v) for k, v in HPARAMS.items()}


@pytest.mark.slow  # a training run with three loggers: the fast tier stays near 3 minutes
def test_mlflow_store_holds_the_runs_params_and_test_acc_beside_tensorboard_and_csv(tiny_cfg):
    need_modules("mlflow", install=INSTALL)
    import mlflow

    cfg = tiny_cfg("logger=many", "name=tiny")
    metrics = train(cfg)
    uri = cfg.logger.mlflow.tracking_uri
    assert uri == f"sqlite:///{cfg.paths.log_dir}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.task_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.tags["run_folder"] == cfg.paths.output_dir
    _logged_hparams_are_there(run.data.params)
    assert run.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    run_folder = Path(cfg.paths.output_dir)
    assert (run_folder / "metrics.csv").read_text().count("test/acc") == 1
    assert list(run_folder.glob("events.out.tfevents.*"))


def _wandb_records(path: Path):
    """The records of a .wandb file (LevelDB's log format: 32 KiB blocks of chunks, each with a
    7-byte header: CRC, length, type), parsed with wandb's own protobuf classes."""
    from wandb.proto import wandb_internal_pb2

    data, block, pending = path.read_bytes(), 32768, b""
    assert data[:4] == b":W&B", path
    pos = 7  # the file's header: ":W&B", magic, version
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header: padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += room
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


@pytest.mark.slow
def test_wandb_offline_run_in_the_run_folder_holds_the_config_and_test_acc(tiny_cfg, monkeypatch):
    need_modules("wandb", install=INSTALL)
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the logger sets it: put it back after
    cfg = tiny_cfg("logger=wandb")
    try:
        metrics = train(cfg)
        assert wandb.run is None  # train ended it: a sweep's next job gets a run of its own
    finally:
        wandb.finish()
    (store,) = Path(cfg.paths.output_dir, "wandb").glob("offline-run-*/run-*.wandb")
    config, history = {}, {}
    for record in _wandb_records(store):
        kind = record.WhichOneof("record_type")
        items = {"config": record.config.update, "history": record.history.item}.get(kind, [])
        for item in items:
            key = item.key or "/".join(item.nested_key)
            (config if kind == "config" else history)[key] = json.loads(item.value_json)
    _logged_hparams_are_there(config)
    assert history["test/acc"] == pytest.approx(metrics["test/acc"])


def _comet_messages(archive: Path) -> tuple[dict, dict]:
    params, metrics = {}, {}
    with zipfile.ZipFile(archive) as z:
        for line in z.read("messages.json").decode().splitlines():
            payload = json.loads(line)["payload"]
            for value in payload.values():
                if isinstance(value, dict) and "paramName" in value:
                    params[value["paramName"]] = value["paramValue"]
                if isinstance(value, dict) and "metricName" in value:
                    metrics[value["metricName"]] = float(value["metricValue"])
    return params, metrics


@pytest.mark.slow
def test_comet_offline_archive_in_the_run_folder_holds_the_params_and_test_acc(
    tiny_cfg, monkeypatch
):
    need_modules("comet_ml", install=INSTALL)
    monkeypatch.setenv("COMET_START_ONLINE", "false")  # what the config's hydra.job.env_set does
    monkeypatch.delenv("COMET_DISABLE_AUTO_LOGGING", raising=False)  # the logger sets it
    cfg = tiny_cfg("logger=comet")
    Path(cfg.paths.output_dir).mkdir(parents=True)  # Hydra makes it before a run from the command
    import comet_ml

    try:
        metrics = train(cfg)
        # train ended the experiment: its archive is written whole, before this process ends
        (archive,) = Path(cfg.paths.output_dir).glob("*.zip")
    finally:
        if comet_ml.get_running_experiment() is not None:
            comet_ml.get_running_experiment().end()
    params, logged = _comet_messages(archive)
    _logged_hparams_are_there(params)
    assert logged["test/acc"] == pytest.approx(metrics["test/acc"])


def test_comet_is_offline_when_run_from_the_command_line():
    cfg = compose_train(["logger=comet"])
    assert "hydra" not in cfg  # the task config; the setting is Hydra's, for the run's process
    from hydra import compose, initialize_config_dir

    from mnistlab.lab.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        full = compose("train", overrides=["logger=comet"], return_hydra_config=True)
    assert full.hydra.job.env_set.COMET_START_ONLINE == "false"

"""DDP on this CPU (gloo): one run folder, exact metrics, the same run from the Trainer, from
torchrun and from srun; sweeps of DDP jobs, SLURM parameters, mixed precision, compiled
checkpoints, the on-device data path."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import SyntheticMNIST, need_modules
from runner import base_args, cli_args, cli_env, run_cli

from mnistlab.data.in_memory import EpochSampler, ShardSampler
from mnistlab.data.mnist import MNISTDataModule
from mnistlab.lab import UserError
from mnistlab.lab import eval as evaluation
from mnistlab.train import train

# 301 test images: not a multiple of 2 processes, so padding (DistributedSampler's) would show.
N_TEST = 301
DDP_ARGS = [
    "trainer=ddp_cpu",
    "trainer.devices=2",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=null",
    "trainer.limit_test_batches=null",
    "data.eval_batch_size=50",
]


@pytest.fixture(scope="module")
def odd_mnist(tmp_path_factory) -> SyntheticMNIST:
    return SyntheticMNIST(tmp_path_factory.mktemp("odd"), n_train=300, n_test=N_TEST)


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "-m", "mnistlab.train", *args]  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def the_only_run(log_dir: Path) -> Path:
    """The run folder, checked to be the only one and to hold one of everything."""
    runs = [p for p in (log_dir / "train" / "runs").iterdir()]
    assert len(runs) == 1, runs
    run = runs[0]
    assert sorted(p.name for p in log_dir.rglob(".hydra")) == [".hydra"]
    assert [p.name for p in run.glob("*.log")] == ["train.log"]
    assert len(list(run.glob("checkpoints/last.ckpt"))) == 1
    writers = {p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}  # pid per file
    assert len(writers) == 1, writers  # one process wrote the TensorBoard run
    return run


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_ddp_from_the_trainer_and_from_torchrun_is_one_run_with_exact_metrics(
    odd_mnist, tmp_path, capsys
):
    results = {}
    for how in ("trainer", "torchrun"):
        log_dir = tmp_path / how
        args = [a for a in cli_args(odd_mnist, log_dir / "x") if not a.startswith("hydra.run")]
        args = [*args, *DDP_ARGS]
        proc = run_cli(*args, cwd=tmp_path) if how == "trainer" else torchrun(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "2 processes: each step trains on 2 x data.batch_size 64 = 128 images" in proc.stderr
        run = the_only_run(log_dir)
        results[how] = (run, json.loads((run / "results.json").read_text()))

    (run, trainer_run), (_, torchrun_run) = results["trainer"], results["torchrun"]
    metrics = trainer_run["metrics"]
    assert metrics["test/images"] == N_TEST  # each test image once: no padding, none dropped
    # 200 training images, 100 per process, batches of 64 per process: 2 steps an epoch.
    assert trainer_run["global_step"] == 2 * 2

    def results_of(run):  # timings aside
        return {k: v for k, v in run["metrics"].items() if not k.startswith("perf/")}

    assert results_of(torchrun_run) == results_of(trainer_run)  # the same run, however launched
    best = Path(trainer_run["best_checkpoint"])
    other = Path(torchrun_run["best_checkpoint"])
    assert best.name == other.name
    for key, value in weights(best).items():
        assert torch.equal(value, weights(other)[key]), key

    # One process, the same checkpoint: the same accuracy, to the last bit.
    assert evaluation.main([f"run={run}"]) == 0
    out = capsys.readouterr().out
    assert f"test/images {N_TEST}" in out
    (record,) = [
        json.loads(p.read_text()) for p in (tmp_path / "trainer" / "eval").rglob("metrics.json")
    ]
    assert record["metrics"]["test/acc"] == metrics["test/acc"]
    assert record["metrics"]["test/images"] == N_TEST


@pytest.mark.slow
def test_a_sweep_of_ddp_jobs_one_folder_each_a_failure_reported_and_the_rerun_finishes(
    odd_mnist, tmp_path
):
    import csv

    args = [a for a in cli_args(odd_mnist, tmp_path / "x") if not a.startswith("hydra.run")]
    fail = ["+callbacks.fail._target_=runner.FailOnce", "+callbacks.fail.lr=0.002",
            f"+callbacks.fail.marker={tmp_path / 'failed-once'}"]  # fmt: skip
    command = ["-m", *args, *DDP_ARGS, *fail, f"hydra.sweep.dir={tmp_path / 'sweep'}",
               "model.optimizer.lr=1e-3,2e-3"]  # fmt: skip
    proc = run_cli(*command, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr  # in job 1's train.log instead
    rows = {r["job"]: r for r in csv.DictReader((tmp_path / "sweep" / "summary.csv").open())}
    assert (rows["0"]["status"], rows["1"]["status"]) == ("completed", "failed")
    error = rows["1"]["error"]  # and where it was raised
    assert error.startswith("RuntimeError: injected failure in epoch 2 (runner.py:"), error
    assert "Traceback" in (tmp_path / "sweep" / "1" / "train.log").read_text()
    for job in ("0", "1"):
        folder = tmp_path / "sweep" / job
        assert [p.name for p in folder.glob("*.log")] == ["train.log"]
        writers = {p.name.split(".")[-2] for p in folder.rglob("events.out.tfevents.*")}
        assert len(writers) == 1, writers
    assert sorted(p.parent.name for p in tmp_path.rglob(".hydra")) == ["0", "1"]
    results = json.loads((tmp_path / "sweep" / "0" / "results.json").read_text())
    assert results["metrics"]["test/images"] == N_TEST

    again = run_cli(*command, cwd=tmp_path)  # the sweep continues: job 1 resumes and finishes
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Job 0 completed in an earlier run of this sweep: skipped" in again.stderr
    rows = list(csv.DictReader((tmp_path / "sweep" / "summary.csv").open()))
    assert {r["status"] for r in rows} == {"completed"}


@pytest.mark.slow
def test_a_sweep_under_torchrun_is_refused_by_rank_0_and_every_rank_stops(
    synthetic_mnist, tmp_path
):
    args = [a for a in cli_args(synthetic_mnist, tmp_path / "x") if not a.startswith("hydra.run")]
    proc = torchrun("-m", *args, "model.optimizer.lr=1e-3,2e-3", cwd=tmp_path)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("mnistlab-train")]
    assert ours == [
        "mnistlab-train: error: -m with 2 processes: each would run the whole sweep. Start the"
        " sweep once (python -m mnistlab.train -m ...) with hydra/launcher=slurm, which launches"
        " each job's processes"
    ]
    assert not (tmp_path / "train").exists()


def test_shards_cover_every_image_once_and_keep_the_single_process_order():
    n = 301
    for world in (1, 2, 3, 4):
        shards = [list(ShardSampler(n, world, rank)) for rank in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))  # once each, no padding
        assert [len(s) for s in shards] == [len(ShardSampler(n, world, r)) for r in range(world)]
        train = [EpochSampler(n, seed=7, num_replicas=world, rank=r) for r in range(world)]
        for sampler in train:
            sampler.set_epoch(3)
        orders = [list(s) for s in train]
        assert len({len(o) for o in orders}) == 1 == len({len(s) for s in train})  # same steps
        assert set().union(*orders) == set(range(n))  # every image in the epoch
        assert sum(map(len, orders)) - n < world  # padded by fewer than one per process
    single = EpochSampler(n, seed=7)
    single.set_epoch(3)
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(7 + 3)).tolist()
    assert list(single) == expected  # one process: the order of every earlier release


def test_a_part_done_epoch_resumes_only_with_the_same_process_count(synthetic_mnist):
    dm = MNISTDataModule(data_dir=str(synthetic_mnist.root), val_size=100,
                         checksums=synthetic_mnist.checksums, sources=["local"])  # fmt: skip
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    dm.load_state_dict({"epoch": 1, "batches_done": 0, "processes": 4})  # an epoch boundary
    with pytest.raises(UserError, match=r"by 4 process\(es\); this run has 2"):
        dm.load_state_dict({"epoch": 1, "batches_done": 3, "processes": 4})
    dm.load_state_dict({"epoch": 1, "batches_done": 3, "processes": 2})
    dm.prepare_data()
    dm.setup()
    assert (dm.sampler.num_replicas, dm.sampler.rank, dm.sampler.skip) == (2, 1, 3 * 64)


def test_slurm_parameters_for_2_nodes_of_4_gpus(tmp_path, monkeypatch):
    need_modules("submitit", "hydra_plugins.hydra_submitit_launcher", install="make install-sweep")
    import submitit
    from hydra.core.hydra_config import HydraConfig
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from omegaconf import OmegaConf

    from mnistlab.lab.cli import prepare

    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                 "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}/sweep",
                 "model.optimizer.lr=1e-3,2e-3"]  # fmt: skip
    prepare(["-m", *overrides], "train")  # the command line is accepted: SLURM starts the tasks
    cfg = compose_train_with_hydra(overrides[:-1])  # one job's config
    HydraConfig.instance().set_config(cfg)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    launcher = SlurmLauncher(**params)
    launcher.config = cfg
    captured = {}

    def submit(executor, fn, *args):
        captured["sbatch"] = executor._executor._make_submission_file_text("python job.py", "u1")
        raise StopIteration

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    fake_srun = tmp_path / "bin" / "srun"  # submitit checks that it is on a SLURM machine
    fake_srun.parent.mkdir()
    fake_srun.write_text("#!/bin/sh\nexit 1\n")
    fake_srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_srun.parent}:{os.environ['PATH']}")
    with pytest.raises(StopIteration):
        launcher.launch([["model.optimizer.lr=1e-3"], ["model.optimizer.lr=2e-3"]], 0)
    sbatch = captured["sbatch"]
    flags = dict(re.findall(r"#SBATCH --([\w-]+)(?:=(\S+))?", sbatch))
    assert flags["nodes"] == "2"
    assert flags["ntasks-per-node"] == "4"  # one task per GPU, as Lightning's DDP expects
    assert flags["gpus-per-node"] == "4"
    assert flags["signal"] == "USR2@90"  # submitit's requeue signal, 90 s before the limit
    assert flags["partition"] == "gpu"
    assert "srun" in sbatch  # which starts the tasks


def fake_sinfo(tmp_path, monkeypatch, gres: str) -> None:
    sinfo = tmp_path / "bin" / "sinfo"
    sinfo.parent.mkdir(exist_ok=True)
    sinfo.write_text(f"#!/bin/sh\necho '{gres}'\n")
    sinfo.chmod(0o755)
    monkeypatch.setenv("PATH", f"{sinfo.parent}:{os.environ['PATH']}")


def test_slurm_gpus_follow_the_trainer_and_for_auto_the_cluster(tmp_path, monkeypatch):
    from mnistlab.lab.config import slurm_gpus

    fake_sinfo(tmp_path, monkeypatch, "(null)")  # a cluster without GPUs
    assert (slurm_gpus("cpu", 1), slurm_gpus("auto", 1), slurm_gpus("gpu", 4)) == (None, None, 4)
    fake_sinfo(tmp_path, monkeypatch, "gpu:a100:4")
    assert (slurm_gpus("cpu", 1), slurm_gpus("auto", 2), slurm_gpus("gpu", 4)) == (None, 2, 4)


def test_a_job_array_sbatch_refuses_is_one_line_naming_the_setting(capsys):
    from hydra_plugins.mnistlab_sweepers import common

    class FailedJobError(RuntimeError):  # submitit's, by name
        pass

    class Refused:
        def launch(self, overrides, initial_job_idx):
            raise FailedJobError("sbatch: error: Invalid generic resource (gres) specification")

    with pytest.raises(SystemExit) as stop:
        common.launch(Refused(), [(0, ["a=1"]), (1, ["a=2"])])
    assert stop.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mnistlab-train: error: SLURM refused the jobs (sbatch: error: Invalid")
    assert "set hydra.launcher.gpus_per_node" in line


def compose_train_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from mnistlab.lab.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(cfg.hydra.sweep.dir)
    return cfg


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_a_few_steps_on_the_cpu(tiny_cfg, precision):
    metrics = train(tiny_cfg(f"trainer.precision={precision}", "logger=none"))
    assert 0 <= metrics["test/acc"] <= 1 and metrics["train/loss_epoch"] > 0


def test_the_on_device_data_path_gives_the_same_run(tiny_cfg):
    plain = train(tiny_cfg("logger=none", "trainer.deterministic=true"))
    on_device = train(tiny_cfg("logger=none", "trainer.deterministic=true", "data.on_device=true",
                               "paths.output_dir=${paths.log_dir}/on_device"))  # fmt: skip
    for key in ("train/loss_epoch", "val/acc", "test/acc", "test/loss"):
        assert on_device[key] == plain[key], key
    with pytest.raises(UserError, match=r"data\.num_workers=0"):
        MNISTDataModule(on_device=True, num_workers=2)


def test_float32_matmul_precision_is_applied(tiny_cfg):
    before = torch.get_float32_matmul_precision()
    try:
        train(tiny_cfg("float32_matmul_precision=medium", "logger=none"))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.slow
def test_a_compiled_run_s_checkpoint_evaluates_without_compiling(synthetic_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    proc = run_cli(*cli_args(synthetic_mnist, run), "model.compile=true", "trainer.max_epochs=1",
                   cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = json.loads((run / "results.json").read_text())["metrics"]["test/acc"]
    (best,) = (run / "checkpoints").glob("epoch*.ckpt")
    assert not any("_orig_mod" in k for k in weights(best))
    assert evaluation.main([f"run={run}", "model.compile=false"]) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "eval").rglob("metrics.json")]
    assert record["metrics"]["test/acc"] == trained


@pytest.mark.slow
def test_two_srun_tasks_make_one_run(odd_mnist, tmp_path):
    """What `srun` starts for `#SBATCH --ntasks-per-node=2`: two processes with SLURM's
    variables, each running the same command; Lightning's SLURM environment makes them ranks."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2",
             "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "localhost", "SLURM_JOB_NAME": "mnist", "MASTER_PORT": str(port),
             "MNISTLAB_LAUNCH_DIR": str(tmp_path / "launch")}  # fmt: skip
    args = [a for a in cli_args(odd_mnist, tmp_path / "x") if not a.startswith("hydra.run")]
    command = [sys.executable, "-m", "mnistlab.train", *args, *DDP_ARGS]
    tasks = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env({**slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}),
        )
        for i in (1, 0)
    ]  # fmt: skip  (rank 1 first: it waits for rank 0's command)
    outputs = [t.communicate(timeout=300) for t in tasks]
    for task, (_, err) in zip(tasks, outputs, strict=True):
        assert task.returncode == 0, err[-3000:]
    run = the_only_run(tmp_path)
    assert json.loads((run / "results.json").read_text())["metrics"]["test/images"] == N_TEST
    assert "Done:" in outputs[1][1] and "Done:" not in outputs[0][1]  # rank 0 sums up, alone
    assert list((tmp_path / "launch").iterdir()) == []  # its launch file, read by all, removed


@pytest.mark.slow
def test_a_signal_to_rank_0_stops_every_process_at_one_step_and_resume_is_exact(
    synthetic_mnist, tmp_path
):
    from runner import start_cli, wait_for
    from test_signals import EXACT, only_run, pause_at

    ddp = [*EXACT, "trainer=ddp_cpu", "trainer.devices=2"]  # 250 images a process: 8 steps an epoch
    whole = run_cli(*base_args(synthetic_mnist, tmp_path / "a", *ddp), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    command = base_args(synthetic_mnist, tmp_path / "b", *ddp, *pause_at(12, tmp_path / "m"))
    proc = start_cli(*command, cwd=tmp_path)
    wait_for(tmp_path / "m", proc)  # rank 0 held at step 12 of 24, in epoch 2; rank 1 waits
    proc.send_signal(signal.SIGTERM)  # rank 0 only: rank 1 learns it at the step's end
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert weights_and_step(only_run(tmp_path / "b"))[1] == 12

    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(epoch 2, step 12)" in again.stderr
    (a, a_step), (b, b_step) = (weights_and_step(only_run(tmp_path / d)) for d in "ab")
    assert a_step == b_step == 24
    for key, value in a.items():  # dropout masks and data order continued in both processes
        assert torch.equal(value, b[key]), key


def weights_and_step(run: Path) -> tuple[dict, int]:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["state_dict"], checkpoint["global_step"]


def test_an_srun_launch_file_is_read_only_by_its_own_step_and_then_removed(tmp_path, monkeypatch):
    from mnistlab.lab import distributed

    step = {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
            "SLURM_SRUN_COMM_PORT": "40001", "MNISTLAB_LAUNCH_DIR": ""}  # fmt: skip
    for key, value in step.items():
        monkeypatch.setenv(key, value)
    argv = [f"paths.log_dir={tmp_path / 'logs'}", "trainer.max_epochs=1"]
    reader = distributed._exchange(argv)
    assert reader.path.parent == tmp_path / "logs" / ".launch"  # under paths.log_dir

    monkeypatch.setenv("SLURM_SRUN_COMM_PORT", "40002")  # an earlier srun with the same job id
    distributed._exchange(argv).put({"argv": ["stale"]})
    assert reader.path.is_file() and reader._read() is None  # not this step's: ignored
    old = json.loads(reader.path.read_text())
    reader.path.write_text(json.dumps({**old, "nonce": reader.nonce, "written": 0}))
    assert reader._read() is None  # this step's nonce, but written long before it started

    monkeypatch.setenv("SLURM_SRUN_COMM_PORT", "40001")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed.agree(argv, lambda a: [*a, "settled"]) == [*argv, "settled"]  # rank 0
    assert reader.get()["argv"] == [*argv, "settled"]
    distributed.launch_read_by_all()
    assert list((tmp_path / "logs" / ".launch").iterdir()) == []


@pytest.mark.slow
def test_a_nan_loss_in_one_process_stops_every_process_at_that_step(synthetic_mnist, tmp_path):
    """Rank 1 alone computes a NaN loss at global step 3: both processes stop there, exit non-zero,
    no hang (a rank stopping alone would leave the other waiting in its next all-reduce)."""
    args = [*cli_args(synthetic_mnist, tmp_path / "run"), *DDP_ARGS,
            "+callbacks.nan._target_=runner.NaNOnRank", "+callbacks.nan.rank=1",
            "+callbacks.nan.step=3"]  # fmt: skip
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # Steps count from 1 in messages: global_step 3 is step 4. Rank 0 stops at the same step.
    assert "loss is nan at epoch 1, step 4:" in proc.stderr, proc.stderr[-3000:]
    assert "loss is not finite in another process at epoch 1, step 4:" in proc.stderr
    assert not list((tmp_path / "run").rglob("*.ckpt"))

"""A real two-node SLURM cluster on this machine (scripts/slurm_cluster.sh): `make test-slurm`.

Skipped with the reason when the cluster cannot start here (slurm-wlm and munge missing and no
root to install them); under CI=true that is a failure instead."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import SyntheticMNIST
from runner import cli_args, cli_env, run_cli

pytestmark = pytest.mark.slurm
SCRIPT = Path(__file__).parents[1] / "scripts" / "slurm_cluster.sh"


def cluster_env(folder: Path, port: int) -> dict:
    return {**os.environ, "MNISTLAB_SLURM_DIR": str(folder), "MNISTLAB_SLURM_PORT": str(port),
            "SLURM_CONF": str(folder / "slurm.conf")}  # fmt: skip


def script(action: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), action], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The local cluster, up for this module's tests; `down` must leave none of its processes."""
    folder = tmp_path_factory.mktemp("slurm")
    env = cluster_env(folder, 16917)
    up = script("up", env)
    if up.returncode != 0:
        reason = f"the local SLURM cluster did not start: {(up.stderr or up.stdout).strip()[-400:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    assert f"export SLURM_CONF={folder / 'slurm.conf'}" in up.stdout
    pid_files = [
        *folder.glob("slurmd.*.pid"),
        folder / "slurmctld.pid",
        folder / "munge" / "munged.pid",
    ]
    pids = [int(p.read_text()) for p in pid_files]
    yield env
    down = script("down", env)
    assert down.returncode == 0, down.stderr
    assert len(pids) == 4 and not [pid for pid in pids if alive(pid)]
    assert "mnistlab local slurm cluster" not in Path("/etc/hosts").read_text()


def test_two_idle_nodes_and_srun_places_one_task_on_each(cluster, tmp_path):
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=cluster, capture_output=True,
                           text=True, check=True).stdout.split("\n")  # fmt: skip
    assert sorted(n for n in nodes if n) == ["n1 idle", "n2 idle"]
    job, out = tmp_path / "job.sh", tmp_path / "job.out"
    job.write_text("#!/bin/bash\nsrun bash -c 'echo $SLURM_PROCID $SLURMD_NODENAME'\n")
    subprocess.run(["sbatch", "--wait", "--nodes=2", "--ntasks-per-node=1", f"--output={out}",
                    str(job)], env=cluster, check=True, capture_output=True, timeout=120)  # fmt: skip
    assert sorted(out.read_text().split("\n")[:2]) == ["0 n1", "1 n2"]
    # DDP's rendezvous resolves the first node's name
    assert subprocess.run(["getent", "hosts", "n1"], capture_output=True).returncode == 0


def test_a_sweep_submitted_to_slurm_needs_no_cluster_settings(cluster, synthetic_mnist, tmp_path):
    """The default trainer (accelerator auto) on a cluster without GPUs: no GPU, CPUs or memory
    asked for, no partition named; both jobs run as SLURM jobs, each in its own folder."""
    args = [a for a in cli_args(synthetic_mnist, tmp_path / "run") if a != "trainer=cpu"]
    sweep, env = tmp_path / "sweep", {"SLURM_CONF": cluster["SLURM_CONF"]}
    proc = run_cli("-m", *args, "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
                   "model.optimizer.lr=1e-3,2e-3", cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (sweep / "summary.md").read_text()
    assert summary.count("| completed |") == 2, summary
    assert all((sweep / str(n) / "results.json").is_file() for n in (0, 1))
    assert list((sweep / ".submitit").iterdir())  # submitted through sbatch, not run here


def test_what_sbatch_refuses_is_one_line_naming_the_setting(cluster, synthetic_mnist, tmp_path):
    args = cli_args(synthetic_mnist, tmp_path / "run")
    proc = run_cli("-m", *args, "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   "hydra.launcher.gpus_per_node=1", "model.optimizer.lr=1e-3,2e-3", cwd=tmp_path,
                   env={"SLURM_CONF": cluster["SLURM_CONF"]})  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mnistlab-train: error: SLURM refused the jobs"), proc.stderr[-2000:]
    assert "hydra.launcher.gpus_per_node" in last
    assert "Traceback" not in proc.stderr


def test_a_failed_slurm_job_is_in_the_summary_with_its_first_error(cluster, synthetic_mnist,
                                                                    tmp_path):  # fmt: skip
    """One job of two fails inside SLURM (a validation split larger than the data): the summary
    says which, with its first error line, and the sweep exits 1."""
    args, sweep = cli_args(synthetic_mnist, tmp_path / "run"), tmp_path / "sweep"
    proc = run_cli("-m", *[a for a in args if not a.startswith("data.val_size")],
                   "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}", "data.val_size=100,1000000",
                   cwd=tmp_path, env={"SLURM_CONF": cluster["SLURM_CONF"]})  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = {r.split("|")[1].strip(): r for r in (sweep / "summary.md").read_text().splitlines()
            if r.startswith("| ")}  # fmt: skip
    assert rows["0"].startswith("| 0 | completed |")
    failed = rows["1"]
    assert failed.startswith("| 1 | failed |")
    assert "UserError: data.val_size=1000000 leaves no train or no val images" in failed
    assert "Traceback" not in proc.stderr


# DDP over the two nodes, one process each. One torch thread per process, as torchrun sets it:
# a CPU kernel's result depends on how many threads split its sums.
TWO_NODES = ["trainer=ddp_cpu", "trainer.num_nodes=2", "trainer.devices=1"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# 301 test images (not a multiple of 2: padding would show); 250 training images a process.
EXACT = ["trainer.max_epochs=3", "trainer.deterministic=true", "trainer.limit_train_batches=null",
         "trainer.limit_val_batches=null", "trainer.limit_test_batches=null",
         "data.batch_size=32", "data.eval_batch_size=50", "model.net.dropout=0.25"]  # fmt: skip
N_TEST = 301


@pytest.fixture(scope="module")
def odd_mnist(tmp_path_factory) -> SyntheticMNIST:
    return SyntheticMNIST(tmp_path_factory.mktemp("odd"), n_train=600, n_test=N_TEST)


def args_for(data, log_dir: Path, *more: str) -> list[str]:
    args = [a for a in cli_args(data, log_dir / "x") if not a.startswith("hydra.run")]
    return [*args, *EXACT, *more]


def sbatch(cluster: dict, folder: Path, flags: list[str], command: list[str]) -> str:
    """Submit `srun <command>` as a batch script (what a user writes); returns the job id."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "job.sh"
    quoted = " ".join(f"'{a}'" for a in command)
    script.write_text(f"#!/bin/bash\ncd {folder}\nsrun {quoted}\n")
    env = cli_env({**cluster, **ONE_THREAD})
    proc = subprocess.run(["sbatch", "--parsable", f"--output={folder / 'job.out'}",
                           "--open-mode=append", *flags, str(script)], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return proc.stdout.strip().split(";")[0]


def squeue(cluster: dict, job: str) -> str | None:
    """The job's state and reason; "" once it has left the queue (or been purged from it); None
    when squeue gave no answer (slurmctld busy on a loaded machine: ask again)."""
    proc = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], env=cluster,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode == 0:
        return proc.stdout.strip()
    return "" if "Invalid job id" in proc.stderr else None


def wait_for_job(cluster: dict, job: str, timeout: float = 300) -> None:
    """Until the job has left the queue, said twice a second apart (a requeued job is between
    two runs for a moment). SLURM holds a requeued job for about two minutes (pending, reason
    BeginTime) before it may start again: released here after 5 s, once its old run is cleaned
    up (released within a second, it was started while its old credential was being revoked,
    and killed: "Killing non-startable batch JobId=9: Job credential revoked")."""
    deadline, gone, held = time.monotonic() + timeout, 0, None
    while gone < 2:
        state = squeue(cluster, job)
        gone = gone + 1 if state == "" else 0
        held = (held or time.monotonic()) if state == "PENDING BeginTime" else None
        if held is not None and time.monotonic() - held > 5:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster,
                           capture_output=True)  # fmt: skip
        assert time.monotonic() < deadline, f"job {job} still {state} after {timeout} s"
        time.sleep(1.0 if state == "" else 0.3)


def the_run(log_dir: Path, starts: int = 1) -> Path:
    """The one run folder under log_dir, with one `.hydra`, one log, and one TensorBoard writer
    (a process id) for each time the run started."""
    (run,) = (log_dir / "train" / "runs").iterdir()
    assert sorted(p.name for p in log_dir.rglob(".hydra")) == [".hydra"]
    assert [p.name for p in run.glob("*.log")] == ["train.log"]
    assert len({p.name.split(".")[-2] for p in run.glob("events.out.tfevents.*")}) == starts
    return run


def final_weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst == 0.0, f"max |weight difference| {worst}"


@pytest.fixture(scope="module")
def unbroken(odd_mnist, tmp_path_factory) -> dict:
    """The reference: the same run as two processes on this machine, launched by torchrun."""
    tmp = tmp_path_factory.mktemp("torchrun")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m",
               "mnistlab.train", *args_for(odd_mnist, tmp, "trainer=ddp_cpu")]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp, env=cli_env(ONE_THREAD), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = the_run(tmp)
    return {
        "weights": final_weights(run),
        "results": json.loads((run / "results.json").read_text()),
    }


def test_two_node_ddp_through_srun_is_one_run_equal_to_torchrun(cluster, odd_mnist, unbroken,
                                                                 tmp_path):  # fmt: skip
    """A plain sbatch script with `srun`, one task on each node: one run folder, every test image
    once, and the weights torchrun's two processes on one node end with, to the bit."""
    job = sbatch(cluster, tmp_path, ["--nodes=2", "--ntasks-per-node=1"],
                 [sys.executable, "-m", "mnistlab.train", *args_for(odd_mnist, tmp_path, *TWO_NODES)])  # fmt: skip
    wait_for_job(cluster, job)
    run = the_run(tmp_path)
    results = json.loads((run / "results.json").read_text())
    assert results["metrics"]["test/images"] == N_TEST, (tmp_path / "job.out").read_text()[-3000:]
    assert results["global_step"] == unbroken["results"]["global_step"] == 3 * 8
    assert_same_weights(final_weights(run), unbroken["weights"])
    assert list((tmp_path / ".launch").iterdir()) == []  # srun's launch file: read by both, gone


def test_two_node_ddp_jobs_of_a_slurm_sweep_write_one_folder_each(cluster, odd_mnist, unbroken,
                                                                  tmp_path):  # fmt: skip
    """`hydra/launcher=slurm` with a two-node trainer: submitit starts one task a node, each
    runs the job; the job's folder has one `.hydra`, one log, one job record, and the weights
    of the torchrun launch."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *args_for(odd_mnist, tmp_path, *TWO_NODES), "hydra/launcher=slurm",
                   f"hydra.sweep.dir={sweep}", "model.optimizer.lr=1e-3", cwd=tmp_path,
                   env={**cluster, **ONE_THREAD})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("sacct") <= 1  # a cluster without accounting: said once, not per poll
    tasks = sorted(p.name for p in (sweep / ".submitit").rglob("*_log.out"))
    assert [t.rsplit("_", 3)[-2] for t in tasks] == ["0", "1"]  # two SLURM tasks ran the job
    job = sweep / "0"
    assert sorted(p.name for p in sweep.rglob(".hydra")) == [".hydra"]
    assert [p.name for p in job.glob("*.log")] == ["train.log"]
    assert "rank: 1" not in (job / "train.log").read_text()
    assert json.loads((job / "job.json").read_text())["status"] == "completed"
    assert json.loads((job / "results.json").read_text())["metrics"]["test/images"] == N_TEST
    assert_same_weights(final_weights(job), unbroken["weights"])


def test_scontrol_requeue_mid_epoch_continues_in_the_same_run_to_the_same_weights(
    cluster, odd_mnist, unbroken, tmp_path
):
    """SLURM requeues a running two-node job (as a preemption does): SIGTERM reaches both
    tasks, they stop at one step with a checkpoint, SLURM starts the script again, and the same
    command continues that run to the weights of an unbroken one."""
    marker = tmp_path / "paused"
    pause = ["+callbacks.pause._target_=runner.PauseAt", "+callbacks.pause.step=12",
             f"+callbacks.pause.marker={marker}"]  # fmt: skip
    command = [sys.executable, "-m", "mnistlab.train",
               *args_for(odd_mnist, tmp_path, *TWO_NODES, *pause)]  # fmt: skip
    job = sbatch(cluster, tmp_path, ["--nodes=2", "--ntasks-per-node=1", "--requeue"], command)
    deadline = time.monotonic() + 180
    while not marker.exists():  # rank 0 holds at step 12 of 24 (epoch 2) until a signal
        assert time.monotonic() < deadline and squeue(cluster, job) != "", (tmp_path / "job.out").read_text()[-3000:]  # fmt: skip
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", job], env=cluster, check=True)
    wait_for_job(cluster, job)
    out = (tmp_path / "job.out").read_text()
    assert out.count("Stopped by SIGTERM") == 2, out[-3000:]  # both tasks, with a checkpoint
    assert "requeued by SLURM (SLURM_RESTART_COUNT=1): resume=auto" in out
    assert "(epoch 2, step 12)" in out
    run = the_run(tmp_path, starts=2)
    assert json.loads((run / "results.json").read_text())["metrics"]["test/images"] == N_TEST
    assert_same_weights(final_weights(run), unbroken["weights"])


def test_the_time_limit_warning_checkpoints_requeues_and_the_job_finishes(
    cluster, odd_mnist, unbroken, tmp_path
):
    """`--signal=USR1@120` with `--time=3`: SLURM warns a minute into the job (SLURM sends it
    up to a minute early, never late); the tasks checkpoint, rank 0 requeues the job, and the
    requeued job continues to the weights of an unbroken run."""
    marker = tmp_path / "paused"
    pause = ["+callbacks.pause._target_=runner.PauseAt", "+callbacks.pause.step=12",
             f"+callbacks.pause.marker={marker}", "+callbacks.pause.wait_s=150"]  # fmt: skip
    command = [sys.executable, "-m", "mnistlab.train",
               *args_for(odd_mnist, tmp_path, *TWO_NODES, *pause)]  # fmt: skip
    job = sbatch(cluster, tmp_path, ["--nodes=2", "--ntasks-per-node=1", "--time=3",
                                     "--signal=USR1@120", "--requeue"], command)  # fmt: skip
    wait_for_job(cluster, job, timeout=400)
    out = (tmp_path / "job.out").read_text()
    assert "SIGUSR1 received: stopping after this batch with a checkpoint" in out, out[-3000:]
    assert f"Requeued SLURM job {job}" in out
    assert "requeued by SLURM (SLURM_RESTART_COUNT=1): resume=auto" in out
    run = the_run(tmp_path, starts=out.count("requeued by SLURM") + 1)
    assert json.loads((run / "results.json").read_text())["metrics"]["test/images"] == N_TEST
    assert_same_weights(final_weights(run), unbroken["weights"])


def test_optuna_trials_as_slurm_jobs_share_one_study_and_the_bad_ones_are_pruned(
    cluster, synthetic_mnist, tmp_path
):
    """Six trials, two SLURM jobs at a time (one on each node), each reporting every epoch to the
    study's journal file on the shared file system: six distinct trials, the bad region pruned."""
    from runner import base_args
    from test_sweeps import PRUNING, TINY, check_pruned_study

    sweep = tmp_path / "sweep"
    args = base_args(synthetic_mnist, tmp_path, *TINY, f"hydra.sweep.dir={sweep}")
    proc = run_cli("-m", *args, *PRUNING, "hydra/launcher=slurm", cwd=tmp_path, env=cluster)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_pruned_study(sweep)
    arrays = {p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if p.name[0].isdigit()}
    assert len(arrays) == 3  # three job arrays of two: the trials of each batch ran as SLURM jobs

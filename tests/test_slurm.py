"""A real two-node SLURM cluster on this machine (scripts/slurm_cluster.sh): `make test-slurm`.

Skipped with the reason when the cluster cannot start here (slurm-wlm and munge missing and no
root to install them); under CI=true that is a failure instead."""

import os
import subprocess
from pathlib import Path

import pytest
from runner import cli_args, run_cli

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

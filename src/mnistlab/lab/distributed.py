"""One run folder for all the processes of a distributed run, however they were started.

Hydra names a run folder after the time each process starts, and every process writes its own
`.hydra/` and log there. Under DDP that makes one folder per process, checkpoints in one and
events in another. So the command line is settled once, by rank 0, and every other process runs
exactly that command in that folder, writing nothing but what Lightning gives rank 0 to write:

- processes Lightning starts itself (`trainer=ddp_cpu trainer.devices=2`) inherit the job of the
  process that started them (`MNISTLAB_DDP_JOB`), instead of the command Lightning passes, which
  under `-m` would run the whole sweep again in every process;
- processes started by `torchrun` learn rank 0's command through torchrun's own key-value store;
- tasks started by `srun` learn it through a file named after the SLURM job step, in
  `<paths.log_dir>/.launch/` (or `$MNISTLAB_LAUNCH_DIR`), on the file system the tasks share,
  marked with a nonce of the step and removed once every task has joined the run.

Light on purpose (no torch until a store is needed): it runs before the command line is checked.
"""

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

JOB_ENV = "MNISTLAB_DDP_JOB"
JOB_PROCESS_ENV = "MNISTLAB_SWEEP_JOB_PROCESS"  # a sweep job run as its own command
WORKER_OVERRIDES = ["hydra.output_subdir=null"]  # `.hydra/` is rank 0's to write
WAIT_S = 600.0  # how long a process waits for rank 0's command


def launched_rank() -> int:
    """This process's global rank as its launcher set it (0 when not launched for DDP)."""
    env = os.environ
    if "RANK" in env:  # torchrun, or any launcher following torch.distributed's env:// contract
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    return int(env.get("NODE_RANK", "0") or 0) + int(env.get("LOCAL_RANK", "0") or 0)


def launched_world_size() -> int:
    """How many processes an external launcher (torchrun, srun) started for this run."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["WORLD_SIZE"])
    return int(env.get("SLURM_NTASKS", "1")) if "SLURM_PROCID" in env else 1


def several_processes(trainer) -> bool:
    """Whether this trainer config runs DDP over several processes (devices or nodes)."""
    devices, strategy = trainer.get("devices"), str(trainer.get("strategy", "auto"))
    if (trainer.get("num_nodes") or 1) > 1:
        return True
    if isinstance(devices, int):
        return devices > 1 or devices == -1
    if isinstance(devices, str):  # "auto" takes every GPU, "-1" too, "0,1" names two
        return "," in devices or devices == "-1" or (devices == "auto" and "ddp" in strategy)
    return devices is not None and len(devices) > 1  # a list of device indices


def pass_job_to_workers(task_overrides: list[str], output_dir: str) -> None:
    """In the process running a job: the processes Lightning's DDP starts from here will run
    exactly this job (not the whole sweep) in this job's folder."""
    argv = [*task_overrides, f'hydra.run.dir="{output_dir}"']
    os.environ[JOB_ENV] = json.dumps({"pid": os.getpid(), "argv": argv})


def worker_argv() -> list[str] | None:
    """The command line of a process Lightning started for a job of ours, else None."""
    job = os.environ.get(JOB_ENV)
    if not job or os.environ.get("LOCAL_RANK", "0") == "0":
        return None
    job = json.loads(job)
    if job["pid"] == os.getpid():
        return None
    return [*job["argv"], *WORKER_OVERRIDES]


def quiet_file_logs() -> None:
    """In processes other than rank 0: log to the console only; the run's log is rank 0's."""
    if launched_rank() == 0:
        return
    for name in (None, "mnistlab.traceback"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            handler.close()
        if not logger.handlers and not logger.propagate:  # file-only (tracebacks): dropped
            logger.addHandler(logging.NullHandler())


def stop_watching_children() -> None:
    """Lightning watches the DDP processes it started and SIGKILLs this one as soon as one of
    them exits with an error. When this process is failing or stopping too, that would cut its
    checkpoint, its error report or its exit status short: let it finish (the other processes
    end with it)."""
    from mnistlab.lab.compat import stop_watching_ddp_processes

    stop_watching_ddp_processes()


class Outcome(Exception):
    """Rank 0 ended the command before running it (a bad command line, nothing to do)."""

    def __init__(self, code: int):
        self.code = code
        super().__init__(f"rank 0 ended with exit status {code}")


def agree(argv: list[str], decide: Callable[[list[str]], list[str]]) -> list[str]:
    """Under torchrun or srun: rank 0 runs `decide` on the command line and every process gets
    its answer (a command, or the exit status rank 0 ended with: `Outcome`). Otherwise: `decide`."""
    exchange = _exchange(argv)
    if exchange is None:
        return decide(argv)
    if launched_rank() == 0:
        try:
            settled = decide(argv)
        except SystemExit as e:
            exchange.put({"exit": e.code if isinstance(e.code, int) else 1})
            raise
        except BaseException:
            exchange.put({"exit": 1})
            raise
        exchange.put({"argv": settled})
        return settled
    answer = exchange.get()
    if "exit" in answer:
        raise Outcome(answer["exit"])
    return [*answer["argv"], *WORKER_OVERRIDES]


def _exchange(argv: list[str]):
    env = os.environ
    if launched_world_size() <= 1:
        return None
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_PORT" in env:
        return StoreExchange(env["MASTER_ADDR"], int(env["MASTER_PORT"]),
                             f"mnistlab/command/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}")  # fmt: skip
    if "SLURM_JOB_ID" in env:
        step = f"{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
        name = f"slurm-{step}-{env.get('SLURM_RESTART_COUNT', '0')}.json"
        return FileExchange(launch_dir(argv) / name, _step_nonce())
    return None


# What every task of one srun step sees alike, and a later step (a reused job id, a requeue, a
# new srun in the same job) does not: the srun process's own ports and address among them.
STEP_KEYS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT", "SLURM_SRUN_COMM_PORT",
             "SLURM_STEP_LAUNCHER_PORT", "SLURM_LAUNCH_NODE_IPADDR", "SLURM_SRUN_COMM_HOST",
             "SLURM_JOB_START_TIME", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST")  # fmt: skip


def _step_nonce() -> str:
    import hashlib

    step = "\0".join(f"{k}={os.environ.get(k, '')}" for k in STEP_KEYS)
    return hashlib.sha256(step.encode()).hexdigest()[:32]


def launch_dir(argv: list[str]) -> Path:
    """`$MNISTLAB_LAUNCH_DIR`, else `<paths.log_dir>/.launch` (paths.log_dir as given on the
    command line, else the project's logs/): a folder on the file system the tasks share."""
    from mnistlab.lab.config import project_path

    if os.environ.get("MNISTLAB_LAUNCH_DIR"):
        return Path(os.environ["MNISTLAB_LAUNCH_DIR"])
    given = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("paths.log_dir=")]
    return project_path(given[-1].strip("'\"") if given else "logs") / ".launch"


_written: list[Path] = []  # launch files this process wrote, removed once every task has read


def launch_read_by_all() -> None:
    """Called on rank 0 once every process has joined the run (training ran): its launch file
    has been read, and goes."""
    while _written:
        _written.pop().unlink(missing_ok=True)


class StoreExchange:
    """torchrun's agent store (MASTER_ADDR:MASTER_PORT), shared by all workers of one launch."""

    def __init__(self, host: str, port: int, key: str):
        from datetime import timedelta

        from torch.distributed import TCPStore

        self.key = key
        self.store = TCPStore(host, port, is_master=False, timeout=timedelta(seconds=WAIT_S))

    def put(self, answer: dict) -> None:
        self.store.set(self.key, json.dumps(answer))

    def get(self) -> dict:
        return json.loads(self.store.get(self.key))  # waits until rank 0 has set it


class FileExchange:
    """A file on the shared file system, named after the SLURM job step (one per srun, per
    requeue). It carries the step's nonce and the time it was written: a file left by another
    step under the same name (a reused job id) is not read as this step's command."""

    KEEP_S = 7 * 24 * 3600  # files left by runs that crashed before every task read them

    def __init__(self, path: Path, nonce: str):
        self.path, self.nonce = Path(path), nonce
        self.started = time.time()

    def put(self, answer: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for old in self.path.parent.glob("slurm-*.json"):
            try:
                if old != self.path and time.time() - old.stat().st_mtime > self.KEEP_S:
                    old.unlink()
            except OSError:  # removed meanwhile by another job's rank 0
                pass
        from mnistlab.lab.files import write_whole

        write_whole(
            self.path, json.dumps({**answer, "nonce": self.nonce, "written": time.time()}).encode()
        )
        _written.append(self.path)

    def get(self) -> dict:
        deadline = time.monotonic() + WAIT_S
        while True:
            answer = self._read()
            if answer is not None:
                return answer
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank 0 did not write {self.path} within {WAIT_S:.0f} s")
            time.sleep(0.2)

    def _read(self) -> dict | None:
        """This step's answer, or None: no file yet, half a file, another step's file."""
        try:
            answer = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        fresh = answer.get("written", 0) > self.started - WAIT_S
        return answer if answer.get("nonce") == self.nonce and fresh else None

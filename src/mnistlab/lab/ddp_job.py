"""A DDP job of a sweep, run as its own command.

Lightning starts a DDP run's other processes by re-running this process's command line, which in
a sweep's job is the whole sweep. So the job runs as its own command (`python -m <module>`), in
its folder, and starts its processes as any run does; the sweep's process forwards signals to it
and reads its results.json (`mnistlab.lab.launch` decides when).
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from mnistlab.lab import UserError
from mnistlab.lab.cli import quoted
from mnistlab.lab.distributed import JOB_PROCESS_ENV
from mnistlab.lab.preemption import Interrupted
from mnistlab.lab.run_folder import RESULTS, without_resume

log = logging.getLogger("mnistlab.train")


class JobFailed(Exception):
    """A job run as its own command ended with an error (its message is the job's error line)."""


def run(cfg: DictConfig, overrides: list[str], train: Callable) -> dict[str, float]:
    """Run the job `cfg` (started with `overrides`) as `python -m <train's module>` in its
    folder; its metrics, Interrupted if a forwarded signal stopped it, else JobFailed with its
    first error."""
    module, folder = _module_of(train), Path(cfg.paths.output_dir)
    overrides = [*without_resume(overrides), f"resume={cfg.resume}"]  # as this job resolved it
    command = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={quoted(folder)}",
               "hydra.output_subdir=null"]  # fmt: skip
    log.info("DDP job: running it as its own command, which starts its processes")
    # A session of its own, so that a Ctrl-C reaches it once: from here, not also from the tty.
    proc = subprocess.Popen(command, env={**os.environ, JOB_PROCESS_ENV: "1"},
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    forwarded = [signal.SIGINT, signal.SIGTERM]
    forwarded += [signal.SIGUSR1] if "SLURM_JOB_ID" in os.environ else []
    previous = {}
    if threading.current_thread() is threading.main_thread():  # where handlers may be set
        previous = {sig: signal.signal(sig, lambda signum, _: proc.send_signal(signum))
                    for sig in forwarded}  # fmt: skip
    errors = []  # its error lines; the first is the cause (rank 0's: the others lost their peer)
    try:
        for line in proc.stderr:
            sys.stderr.write(line)
            if "][ERROR] - " in line:
                errors.append(line.split("][ERROR] - ", 1)[1].strip())
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 0:
        return json.loads((folder / RESULTS).read_text())["metrics"]
    if code > 128 and code - 128 in {int(s) for s in forwarded}:
        last = folder / "checkpoints" / "last.ckpt"
        raise Interrupted(code - 128, str(last) if last.is_file() else None)
    error = errors[0].removeprefix("Job failed: ") if errors else f"exit status {code}"
    raise JobFailed(error)


def _module_of(run: Callable) -> str:
    """The module to run with `python -m` for `run`: its own, also when that module is running
    as `__main__` (`python -m mnistlab.train`)."""
    if run.__module__ != "__main__":
        return run.__module__
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None:
        raise UserError("a DDP job of a sweep needs the command started as python -m <module>")
    return spec.name

"""`hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher, made right for jobs of
several tasks and for clusters without accounting.

- A job of several tasks (DDP over nodes or GPUs: one task per process, started by `srun`) runs
  Hydra's job in every task, and each would write `.hydra/` into the job's folder at the same
  time. Here only rank 0 writes it; the run itself keeps to one writer (`mnistlab.lab.distributed`).
- Submitit polls `sacct` for job states. On a cluster without an accounting database every poll
  fails and submitit warns each time (and falls back to its own files): said once here instead.
"""

import logging

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Submitit
except ImportError:  # the sweep extra is missing: `hydra/launcher=slurm` then fails to compose
    _Submitit = None


class _SacctOnce(logging.Filter):
    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if not _SacctOnce.said:
            _SacctOnce.said = True
            logging.getLogger(__name__).warning(
                "sacct does not answer on this cluster (no accounting database): job states are"
                " read from submitit's files instead"
            )
        return False


if _Submitit is not None:

    class SlurmLauncher(_Submitit):
        def launch(self, job_overrides, initial_job_idx):
            submitit_log = logging.getLogger("submitit")
            if not any(isinstance(f, _SacctOnce) for f in submitit_log.filters):
                submitit_log.addFilter(_SacctOnce())
            return super().launch(job_overrides, initial_job_idx)

        def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state):
            """In each task of the job: Hydra's job, with `.hydra/` written by rank 0 only."""
            from mnistlab.lab.distributed import launched_rank

            if launched_rank() != 0:
                sweep_overrides = [*sweep_overrides, "hydra.output_subdir=null"]
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

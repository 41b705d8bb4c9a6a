"""`hydra/sweeper=grid`, this template's default: Hydra's basic sweeper (every combination of the
swept values), made to survive. A failed job does not stop the others; re-running the same
command in the same sweep folder skips the completed jobs and continues the others from their
checkpoints (`resume=auto`)."""

import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.mnistlab_sweepers.common import finish, holding, job_dir, launch
from mnistlab.lab import sweeps
from mnistlab.lab.compat import basic_sweeper
from mnistlab.lab.files import write_whole

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.mnistlab_sweepers.grid.GridSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="mnistlab"
)


class GridSweeper(basic_sweeper()):  # Hydra's, for its grid expansion
    def sweep(self, arguments: list[str]) -> None:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(
            [*(f"{k}={v}" for k, v in (self.params or {}).items()), *arguments]
        )
        jobs = list(enumerate(o for batch in self.split_arguments(overrides, None) for o in batch))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        with holding(sweep_dir):
            write_whole(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
            pending = []
            for number, job in jobs:
                folder = job_dir(self.config, number)
                if sweeps.completed(folder):
                    log.info("Job %d completed in an earlier run of this sweep: skipped", number)
                else:
                    pending.append((number, _resumed(job) if folder.exists() else job))
            launch(self.launcher, pending, self.max_batch_size)
            finish(self.config, jobs, self.config.get("optimized_metric") or "val/acc_best")


def _resumed(overrides: list[str]) -> list[str]:
    """A job that started before continues from its checkpoint, unless told otherwise."""
    if any(o.startswith("resume=") for o in overrides):
        return overrides
    return [*overrides, "resume=auto"]

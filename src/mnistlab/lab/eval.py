"""Test a trained run as it was trained: `python -m mnistlab.lab.eval run=<folder>` or `make eval RUN=...`."""

import json
import logging
import sys
import warnings
from pathlib import Path

from mnistlab.lab import UserError, quiet_lightning
from mnistlab.lab.command import RUN, command
from mnistlab.lab.config import build
from mnistlab.lab.files import new_folder, write_whole
from mnistlab.lab.rebuild import restore

log = logging.getLogger("mnistlab.lab.eval")

USAGE = """usage: python -m mnistlab.lab.eval [run=FOLDER | ckpt=FILE] [which=best|last] [trust=MODULES]
                             [overrides...]

Tests a run's best checkpoint (which=last: its latest) on its data's test set, with the config
the run was trained with; overrides apply on top, e.g. data.eval_batch_size=512 trainer=cpu. Without run=
or ckpt=, the newest finished run under logs/train/runs. Metrics go to stdout and, with the run
and checkpoint they belong to, to logs/eval/runs/<timestamp>/metrics.json. A run this checkout
made is trusted; any other's config builds only objects of the kind each place takes, from this
project, torch, torchvision or Lightning (docs/runs.md): trust=mypkg,other trusts
your packages, trust=all the source."""


def evaluate(cfg, checkpoint_path: Path) -> dict[str, float]:
    """Test the checkpoint with the run's data and model; return the test metrics."""
    import lightning as L

    from mnistlab.lab.checkpoint import AtomicCheckpointIO
    from mnistlab.lab.progress import progress_bar

    quiet_lightning()
    # Testing needs none of the callbacks that saved the checkpoint (they hold training state).
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`")
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = build(cfg, "data")
    model = build(cfg, "model")
    trainer = build(
        cfg,
        "trainer",
        callbacks=[progress_bar()],
        logger=False,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=False,
    )
    (metrics,) = trainer.test(
        model, datamodule=datamodule, ckpt_path=str(checkpoint_path), verbose=False
    )
    return {k: float(v) for k, v in metrics.items()}


@command("mnistlab-eval", USAGE, **RUN)
def main(args: dict, overrides: list[str]) -> int:
    from mnistlab.lab.stats import number

    run_dir, path, _, cfg = restore(args, overrides, "eval")
    out = new_folder(Path(cfg.paths.output_dir))  # `_1` when another eval took it this second
    _log_to(out)
    log.info("Evaluating %s (run %s)", path, run_dir or "unknown")
    limit = cfg.trainer.get("limit_test_batches")
    if limit is not None and (isinstance(limit, int) or limit < 1.0):  # the run's debug setting
        log.warning("trainer.limit_test_batches=%s: part of the test set is scored; add"
                    " trainer.limit_test_batches=1.0 to score all of it", limit)  # fmt: skip
    try:
        metrics = evaluate(cfg, path)
    except UserError as e:
        log.error("%s", e)
        return 1
    record = {"run": str(run_dir) if run_dir else None, "checkpoint": str(path),
              "overrides": overrides, "metrics": metrics}  # fmt: skip
    write_whole(out / "metrics.json", json.dumps(record, indent=2) + "\n")
    print("  ".join(f"{k} {v:.0f}" if k.endswith("/images") else f"{k} {number(v)}"
                    for k, v in sorted(metrics.items())))  # fmt: skip
    log.info("Metrics: %s", out / "metrics.json")
    return 0


def _log_to(folder: Path) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
        handlers=[logging.StreamHandler(sys.stderr), logging.FileHandler(folder / "eval.log")],
        force=True,
    )


if __name__ == "__main__":
    sys.exit(main())

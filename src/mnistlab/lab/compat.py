"""Every reach into a library's private or undocumented parts, in one place.

Each is a small function naming the version it was checked against (`CHECKED`), and
tests/test_compat.py exercises each on the installed library, so an upgrade that changes one
fails there, by name, rather than somewhere in a run. Nothing else in the project touches a
private name of Lightning, Hydra or torch (tests/test_code.py counts).
"""

from importlib.metadata import version

CHECKED = {"lightning": "2.6.6", "hydra-core": "1.3.8", "torch": "2.14.1"}


def hydra_args_parser():
    """Hydra's own command-line parser (`-m`, `--cfg`, `--info`, overrides), so that a command
    line is checked exactly as Hydra will read it. hydra._internal.utils.get_args_parser."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def basic_sweeper():
    """Hydra's basic sweeper class, for its grid expansion (`split_arguments`), which the grid
    sweeper inherits. hydra._internal.core_plugins.basic_sweeper.BasicSweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return BasicSweeper


def event_file_writer(summary_writer):
    """The open event file of a SummaryWriter (None after close()), as Lightning's own
    log_hyperparams reaches it: torch SummaryWriter._get_file_writer."""
    return summary_writer._get_file_writer()


def log_train_step_metrics(trainer) -> None:
    """What Lightning does right after on_train_batch_end, so that a step's metrics are logged
    before a stop: trainer._logger_connector.update_train_step_metrics."""
    trainer._logger_connector.update_train_step_metrics()


def batches_done(trainer) -> int:
    """Training batches done in the current epoch: Lightning's undocumented loop counter
    trainer.fit_loop.epoch_loop.batch_progress.current.processed."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def stop_watching_ddp_processes() -> None:
    """Lightning's watcher thread of the DDP processes it started (it SIGKILLs this one when one
    of them fails) given nothing left to watch, so it ends: _ChildProcessObserver's
    _child_processes."""
    import threading

    for thread in threading.enumerate():
        if type(thread).__name__ == "_ChildProcessObserver":
            thread._child_processes = []


def save_last(checkpoint_callback, trainer, hook: str | None = None) -> None:
    """A ModelCheckpoint's last.ckpt written now unless it holds this step already; from
    `hook` only when it is the one where Lightning saves (`on_train_epoch_end` or
    `on_validation_end`, as `_should_save_on_train_epoch_end` decides), from anywhere when None.
    ModelCheckpoint's _should_save_on_train_epoch_end, _should_skip_saving_checkpoint,
    _save_last_checkpoint and _monitor_candidates."""
    c = checkpoint_callback
    if hook is not None and c._should_save_on_train_epoch_end(trainer) != (
        hook == "on_train_epoch_end"
    ):
        return
    if c.save_last and not c._should_skip_saving_checkpoint(trainer):
        c._save_last_checkpoint(trainer, c._monitor_candidates(trainer))


def skip_hook(callback, hook: str) -> None:
    """Lightning calls a callback's hook only when it is callable (`_call_callback_hooks`): an
    instance attribute set to None makes it skip an inherited hook that does nothing."""
    setattr(callback, hook, None)


def versions() -> dict[str, tuple[str, str]]:
    """(installed, checked) per library, for the test that names what changed."""
    return {name: (version(name), checked) for name, checked in CHECKED.items()}

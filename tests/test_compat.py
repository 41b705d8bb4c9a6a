"""Each reach of mnistlab.lab.compat, exercised on the installed libraries: an upgrade that
changes one fails here, by name. The versions they were checked against are compat.CHECKED."""

import threading
from types import SimpleNamespace

import pytest
from lightning.pytorch.callbacks import Callback

from mnistlab.lab import compat


def test_the_installed_versions_are_those_checked_or_say_which_differ():
    changed = {k: v for k, v in compat.versions().items() if v[0] != v[1]}
    if changed:  # not a failure by itself: the tests below say whether anything broke
        pytest.skip(f"installed (checked): {changed}; the reach tests below decide")


def test_hydra_s_parser_reads_a_sweep_and_overrides():
    args = compat.hydra_args_parser().parse_args(["-m", "a=1,2", "--cfg", "job"])
    assert args.multirun and args.overrides == ["a=1,2"] and args.cfg == "job"


def test_the_basic_sweeper_expands_a_grid():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(["a=1,2", "b=x,y"])
    (batch,) = compat.basic_sweeper().split_arguments(overrides, None)
    assert sorted(map(tuple, batch)) == [("a=1", "b=x"), ("a=1", "b=y"), ("a=2", "b=x"),
                                         ("a=2", "b=y")]  # fmt: skip


def test_a_summary_writer_s_event_file_takes_a_summary(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import scalar

    writer = SummaryWriter(str(tmp_path))
    compat.event_file_writer(writer).add_summary(scalar("x", 1.0), 0)
    writer.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_the_trainer_s_loop_counter_and_step_metric_logging_exist(tiny_cfg):
    from hydra.utils import instantiate

    seen = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.append(compat.batches_done(trainer))
            compat.log_train_step_metrics(trainer)

    cfg = tiny_cfg()
    trainer = instantiate(cfg.trainer, callbacks=[Probe()], logger=False, max_epochs=1,
                          enable_checkpointing=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    assert seen == [1, 2, 3, 4]  # the batch that just ended counted


def test_lightning_skips_a_hook_that_is_not_callable_and_the_ddp_watcher_is_found():
    from lightning.pytorch.trainer import call

    callback = Callback()
    compat.skip_hook(callback, "on_train_batch_start")
    trainer = SimpleNamespace(callbacks=[callback], lightning_module=None, profiler=None)
    call._call_callback_hooks(trainer, "on_train_batch_start")  # would raise on None if called
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    observer = _ChildProcessObserver(main_pid=0, child_processes=[])
    assert isinstance(observer, threading.Thread) and observer._child_processes == []

"""experiment=robust's augmentation of whole batches on the device (mnistlab.data.augment): what it
draws depends on the seed, the step and the rank only, so a stopped run resumes exactly."""

import signal

import pytest
import torch
from omegaconf import open_dict

from mnistlab.data.augment import DigitAugment, batch_generator
from mnistlab.lab.preemption import Interrupted
from mnistlab.train import train

ROBUST = "data.batch_augment={_target_:mnistlab.data.augment.DigitAugment}"


def digits(n=8) -> torch.Tensor:
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 1.0  # a stroke, light on dark as in MNIST
    return x


def test_the_draw_depends_on_seed_step_and_rank_only():
    augment, x = DigitAugment(), digits()
    a = augment(x.clone(), batch_generator(x.device, 12345, 7, 0))
    assert torch.equal(a, augment(x.clone(), batch_generator(x.device, 12345, 7, 0)))
    for other in ((12345, 8, 0), (12345, 7, 1), (1, 7, 0)):
        assert not torch.equal(a, augment(x.clone(), batch_generator(x.device, *other)))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a[0], a[1])  # each image its own draw


def test_every_change_can_be_turned_off():
    x = digits()
    off = DigitAugment(rotate=0, scale=(1, 1), shear=0, shift=0, stroke=0, blur=0, noise=0)
    assert torch.equal(off(x.clone(), batch_generator(x.device, 0, 0, 0)), x)
    thick = DigitAugment(rotate=0, scale=(1, 1), shear=0, shift=0, stroke=1, blur=0, noise=0)
    y = thick(x.clone(), batch_generator(x.device, 0, 0, 0))
    assert (y.sum((1, 2, 3)) != x.sum((1, 2, 3))).all()  # every stroke thicker or thinner


@pytest.mark.slow
def test_a_run_with_batch_augmentation_resumes_exactly(tiny_cfg, tmp_path):
    """SIGTERM at step 7 of 2 x 8, then resume=auto: the weights equal an unbroken run's."""
    exact = ("trainer.max_epochs=2", "trainer.deterministic=true", "trainer.limit_train_batches=8",
             ROBUST)  # fmt: skip
    train(tiny_cfg(*exact, f"paths.output_dir={tmp_path / 'whole'}"))
    cfg = tiny_cfg(*exact, f"paths.output_dir={tmp_path / 'cut'}", "resume=auto")
    with open_dict(cfg):
        cfg.callbacks.signal = {"_target_": "test_resume.SignalAt", "step": 7,
                                "signum": int(signal.SIGTERM)}  # fmt: skip
    with pytest.raises(Interrupted):
        train(cfg)
    with open_dict(cfg):
        del cfg.callbacks.signal
    train(cfg)
    a, b = (torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
            for run in ("whole", "cut"))  # fmt: skip
    assert a["global_step"] == b["global_step"] == 16
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    plain = tiny_cfg("trainer.max_epochs=2", "trainer.deterministic=true",
                     "trainer.limit_train_batches=8", f"paths.output_dir={tmp_path / 'plain'}")  # fmt: skip
    train(plain)
    c = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not torch.equal(
        c["state_dict"]["net.layers.0.weight"], a["state_dict"]["net.layers.0.weight"]
    )


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"rotate": -5}, "data.batch_augment.rotate=-5: must be within [0, 180]"),
        ({"scale": [2]}, "data.batch_augment.scale=[2.0]: give [low, high]"),
        ({"stroke": 1.5}, "data.batch_augment.stroke=1.5: must be within [0, 1]"),
        ({"noise": "abc"}, "data.batch_augment: every value is a number"),
    ],
)
def test_a_bad_augmentation_is_one_line_naming_the_key(given, message):
    """As DigitAugment(...) from Python; the command line refuses them earlier (test_cli)."""
    from mnistlab.lab import UserError

    with pytest.raises(UserError) as error:
        DigitAugment(**given)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)

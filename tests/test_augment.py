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


def test_thicken_reaches_the_heavy_end_and_1_is_the_old_single_filter():
    """`thicken=2` grows a 4 px stroke by up to 2 px a side (8 px: the holes of a 0, 6, 8, 9
    nearly close); `thicken=1` is one 3x3 max filter blended, as before the option."""
    x = digits(64)
    plain = dict(rotate=0, scale=(1, 1), shear=0, shift=0, stroke=1, blur=0, noise=0)
    widths = {}
    for thicken in (1.0, 2.0):
        y = DigitAugment(**plain, thicken=thicken)(x.clone(), batch_generator(x.device, 0, 0, 0))
        widths[thicken] = (y[:, 0, 14] > 0.5).sum(1).float()  # stroke width along row 14
    assert widths[1.0].max() <= 6 and widths[2.0].max() == 8
    g = batch_generator(x.device, 0, 0, 0)  # the draws, in the augmentation's order
    pick, amount = torch.rand(64, generator=g), torch.rand(64, generator=g)
    y = DigitAugment(**plain, thicken=1.0)(x.clone(), batch_generator(x.device, 0, 0, 0))
    k = (pick < 0.5).nonzero().flatten()  # the thickened ones
    one_filter = torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)
    expected = torch.lerp(x[k], one_filter[k], (0.3 + 0.7 * amount[k]).view(-1, 1, 1, 1))
    assert len(k) > 10 and torch.allclose(y[k], expected)


def test_serif_gives_some_1s_a_foot_or_a_flag_and_leaves_other_digits_alone():
    x, labels = digits(64), torch.tensor([1, 7] * 32)
    plain = dict(rotate=0, scale=(1, 1), shear=0, shift=0, stroke=0, blur=0, noise=0)
    y = DigitAugment(**plain, serif=1.0)(x.clone(), batch_generator(x.device, 0, 0, 0), labels)
    assert torch.equal(y[labels == 7], x[labels == 7])
    changed = (y != x).flatten(1).any(1)
    assert changed[labels == 1].float().mean() >= 0.75  # a foot, a flag or both (1 in 16: neither)
    footed = (y[:, 0, 18:22] > 0.5).sum((1, 2)) > (x[:, 0, 18:22] > 0.5).sum((1, 2))
    assert footed[labels == 1].any() and not footed[labels == 7].any()
    # the same draw without labels, or with serif=0: no serifs (and the old stream of draws)
    assert torch.equal(
        DigitAugment(**plain, serif=1.0)(x.clone(), batch_generator(x.device, 0, 0, 0)), x
    )

"""Every speed option keeps the results: channels-last layout, fused Adam, epoch-level metrics."""

import copy
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from mnistlab.classifier import Classifier
from mnistlab.nets import ConvNet
from mnistlab.train import train


def test_channels_last_gives_the_same_logits_and_gradients():
    torch.manual_seed(0)
    net = ConvNet()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    results = []
    for channels_last in (False, True):
        system = Classifier(copy.deepcopy(net), torch.optim.Adam, channels_last=channels_last)
        logits = system(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        results.append((logits, system.net.layers[0].weight.grad))
    (logits_a, grad_a), (logits_b, grad_b) = results
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-5)


def test_fused_adam_takes_the_same_steps():
    torch.manual_seed(0)
    nets = [ConvNet(), None]
    nets[1] = copy.deepcopy(nets[0])
    optimizers = [
        torch.optim.Adam(nets[0].parameters()),
        torch.optim.Adam(nets[1].parameters(), fused=True),
    ]
    for _ in range(5):
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        for net, optimizer in zip(nets, optimizers, strict=True):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_logged_test_accuracy_equals_a_plain_evaluation_of_the_best_checkpoint(tiny_cfg):
    """The per-epoch metric accumulation reports exactly what a plain loop counts."""
    cfg = tiny_cfg("trainer.limit_test_batches=null", "data.eval_batch_size=48")
    metrics = train(cfg)
    best = next((Path(cfg.paths.output_dir) / "checkpoints").glob("epoch*.ckpt"))
    ckpt = torch.load(best, weights_only=True)
    system = instantiate(cfg.model)
    system.load_state_dict(ckpt["state_dict"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    correct = loss = 0.0
    with torch.no_grad():
        for images, labels in datamodule.test_dataloader():  # 200 images: 4 batches of 48, then 8
            logits = system(datamodule.to_input(images))
            correct += (logits.argmax(1) == labels).sum().item()
            loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
    assert metrics["test/acc"] == pytest.approx(correct / 200, abs=1e-7)  # float32
    assert abs(metrics["test/loss"] - loss / 200) < 1e-6


def test_step_loss_is_logged_on_every_logging_step(tiny_cfg, tmp_path):
    """train/loss skips self.log on the steps the logger would not write; none may go missing."""
    cfg = tiny_cfg("logger=csv", "trainer.max_epochs=2", "trainer.log_every_n_steps=2")
    train(cfg)  # 4 steps per epoch: written after steps 2, 4, 6, 8
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col, step = header.index("train/loss"), header.index("step")
    logged = [int(r.split(",")[step]) for r in rows[1:] if r.split(",")[col]]
    assert logged == [1, 3, 5, 7]

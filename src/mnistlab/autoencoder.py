"""The second worked example, not a classifier: a convolutional autoencoder.

It reconstructs its input images (labels unused) and is judged by the mean squared error per
pixel, minimized (`experiment=autoencoder`: `monitor: val/loss`, `mode: min`). Every generic
feature (run folder, resume, DDP, sweeps, report, eval, export) serves it as it serves the
classifier; the classification tools refuse it in one line. The dashboard shows its
reconstructions beside the originals every validation epoch.
"""

from collections.abc import Callable, Sequence

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric

STAGES = ("train", "val", "test")


class ConvAutoEncoder(nn.Module):
    """Strided 3x3 convolutions down to a `latent`-sized code, transposed ones back up.
    `image_size`: divisible by 2 ** len(channels) (28 with two blocks: 28 -> 14 -> 7)."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32),
        latent: int = 32,
        image_size: int = 28,
    ):
        super().__init__()
        side, down, up = image_size, [], []
        for c_in, c_out in zip((in_channels, *channels), channels, strict=False):
            down += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
            up = [nn.ConvTranspose2d(c_out, c_in, 3, 2, 1, output_padding=1), nn.ReLU(), *up]
            side = (side + 1) // 2
        up = up[:-1]  # the output is in the input's normalized units: no ReLU at the end
        flat = channels[-1] * side * side
        self.encoder = nn.Sequential(*down, nn.Flatten(), nn.Linear(flat, latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, flat), nn.ReLU(), nn.Unflatten(1, (channels[-1], side, side)), *up
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class AutoEncoder(LightningModule):
    def __init__(self, net: nn.Module, optimizer: Callable[..., Optimizer], shown: int = 8):
        """`optimizer`: a factory (a Hydra `_partial_` node) called with the parameters.
        `shown`: validation images drawn with their reconstructions every epoch."""
        super().__init__()
        self.net, self.optimizer_factory, self.shown = net, optimizer, shown
        for stage in STAGES:  # the exact mean over the epoch's images, summed over processes
            setattr(self, f"{stage}_loss", MeanMetric())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> Tensor:
        x = batch[0]  # the labels are not used
        losses = (self(x) - x).pow(2).flatten(1).mean(1)  # per image
        getattr(self, f"{stage}_loss").update(losses.detach())
        return losses.mean()

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")
        if batch_idx == 0:
            self._first = batch[0][: self.shown]

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str, name: str) -> None:
        metric = getattr(self, f"{stage}_loss")
        self.log(name, metric.compute(), prog_bar=stage != "train", sync_dist=True, reduce_fx="max")
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train", "train/loss_epoch")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", "val/loss")
        if not self.trainer.sanity_checking and isinstance(self.logger, TensorBoardLogger):
            self._draw(self._first)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", "test/loss")

    @torch.no_grad()
    def _draw(self, x: Tensor) -> None:
        """Originals (top row) over their reconstructions, each picture scaled to [0, 1]."""
        pairs = torch.cat([x, self(x)])
        low = pairs.amin(dim=(1, 2, 3), keepdim=True)
        high = pairs.amax(dim=(1, 2, 3), keepdim=True)
        pictures = (pairs - low) / (high - low).clamp(min=1e-8)
        from torchvision.utils import make_grid

        grid = make_grid(pictures, nrow=len(x), padding=2, pad_value=1.0)
        self.logger.experiment.add_image("val/reconstructions", grid, self.global_step)

    def configure_optimizers(self):
        return self.optimizer_factory(params=self.parameters())

"""Training-time augmentation of whole batches on the device, for digits as MNIST draws them
(light strokes on a dark ground): what a scan, a photo or another hand does to a digit.

`data.batch_augment` takes it (`experiment=robust`). The data module calls it on each training
batch after the batch reached the device, on float images in [0, 1], with a generator seeded from
the run's seed, the global step and the process's rank: the draw of a step depends on nothing
else, so a resumed run augments exactly as an unbroken one, and so does each DDP process.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mnistlab.lab import UserError


class DigitAugment:
    """Per image of a batch: an affine map (rotation up to `rotate` degrees, scale within
    `scale`, shear up to `shear`, shift up to `shift` of the side), thicker or thinner strokes
    (probability `stroke`, half each), blur (probability `blur`) and Gaussian noise (standard
    deviation up to `noise`). Arguments mirror what they change; 0 turns one off."""

    def __init__(self, rotate: float = 15.0, scale: tuple[float, float] = (0.8, 1.15),
                 shear: float = 0.2, shift: float = 0.1, stroke: float = 0.3, blur: float = 0.3,
                 noise: float = 0.08):  # fmt: skip
        # Checked on the command line too (mnistlab.lab.schema); here for DigitAugment(...) in Python.
        given = {"rotate": rotate, "shear": shear, "shift": shift, "stroke": stroke, "blur": blur,
                 "noise": noise}  # fmt: skip
        try:
            scale = tuple(float(v) for v in scale)
            rotate, shear, shift, stroke, blur, noise = (float(v) for v in given.values())
        except (TypeError, ValueError):
            raise UserError("data.batch_augment: every value is a number, scale two") from None
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise UserError(
                f"data.batch_augment.scale={list(scale)}: give [low, high], 0 < low <= high"
            )
        for name, high in (("rotate", 180), ("shear", 1), ("shift", 1), ("stroke", 1), ("blur", 1),
                           ("noise", 1)):  # fmt: skip
            if not 0 <= float(given[name]) <= high:
                raise UserError(
                    f"data.batch_augment.{name}={given[name]}: must be within [0, {high}]"
                )
        self.rotate, self.scale, self.shear, self.shift = rotate, scale, shear, shift
        self.stroke, self.blur, self.noise = stroke, blur, noise

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n = x.shape[0]

        def uniform(low: float, high: float) -> Tensor:
            u = torch.rand(n, device=x.device, generator=generator)
            return (low + (high - low) * u).view(n, 1, 1, 1)

        x = self._affine(x, uniform)
        if self.stroke:
            thick = F.max_pool2d(x, 3, stride=1, padding=1)
            thin = -F.max_pool2d(-x, 3, stride=1, padding=1)
            pick = uniform(0, 1)
            amount = uniform(0.3, 1.0)
            x = torch.where(pick < self.stroke / 2, torch.lerp(x, thick, amount), x)
            x = torch.where((pick >= self.stroke / 2) & (pick < self.stroke),
                            torch.lerp(x, thin, amount), x)  # fmt: skip
        if self.blur:
            kernel = torch.tensor([1.0, 2.0, 1.0], device=x.device) / 4
            kernel = (kernel[:, None] * kernel[None, :]).expand(x.shape[1], 1, 3, 3)
            blurred = F.conv2d(x, kernel, padding=1, groups=x.shape[1])
            x = torch.where(uniform(0, 1) < self.blur, torch.lerp(x, blurred, uniform(0.5, 1)), x)
        if self.noise:
            sigma = uniform(0, self.noise)
            x = x + sigma * torch.randn(x.shape, device=x.device, generator=generator)
        return x.clamp_(0, 1)

    def _affine(self, x: Tensor, uniform) -> Tensor:
        if not (self.rotate or self.shear or self.shift or self.scale != (1.0, 1.0)):
            return x
        angle = uniform(-self.rotate, self.rotate).flatten() * (math.pi / 180)
        size = uniform(*self.scale).flatten()
        shear = uniform(-self.shear, self.shear).flatten()
        dx, dy = (uniform(-self.shift, self.shift).flatten() * 2 for _ in range(2))
        cos, sin = angle.cos(), angle.sin()
        # affine_grid maps each output point to where it is read from: the inverse of
        # "scale, shear, rotate, shift".
        theta = torch.stack([torch.stack([cos, -sin + shear * cos, dx], 1),
                             torch.stack([sin, cos + shear * sin, dy], 1)], 1)  # fmt: skip
        theta[:, :, :2] /= size.view(-1, 1, 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def batch_generator(device: torch.device, seed: int, step: int, rank: int) -> torch.Generator:
    """A generator on `device` for the batch of `step` on process `rank`: its own draw, the same
    whenever that step is trained."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((seed * 1_000_003 + step) * 1_009 + rank) % 2**63)
    return generator

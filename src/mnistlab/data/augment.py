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
    (probability `stroke`, half each; thicker by up to `thicken` pixels a side, which at 2 nearly
    closes the holes of a 0, 6, 8 or 9 as heavy type does), blur (probability `blur`) and Gaussian
    noise (standard deviation up to `noise`), and on the 1s (label 1) with probability `serif`
    a printed 1's foot, flag or both, which MNIST's writers rarely draw and type nearly always
    has. Arguments mirror what they change; 0 turns one off."""

    def __init__(self, rotate: float = 15.0, scale: tuple[float, float] = (0.8, 1.15),
                 shear: float = 0.2, shift: float = 0.1, stroke: float = 0.3, blur: float = 0.3,
                 noise: float = 0.08, thicken: float = 1.0, serif: float = 0.0):  # fmt: skip
        # Checked on the command line too (mnistlab.lab.schema); here for DigitAugment(...) in Python.
        given = {"rotate": rotate, "shear": shear, "shift": shift, "stroke": stroke, "blur": blur,
                 "noise": noise, "thicken": thicken, "serif": serif}  # fmt: skip
        try:
            scale = tuple(float(v) for v in scale)
            rotate, shear, shift, stroke, blur, noise, thicken, serif = (
                float(v) for v in given.values()
            )
        except (TypeError, ValueError):
            raise UserError("data.batch_augment: every value is a number, scale two") from None
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise UserError(
                f"data.batch_augment.scale={list(scale)}: give [low, high], 0 < low <= high"
            )
        for name, high in (("rotate", 180), ("shear", 1), ("shift", 1), ("stroke", 1), ("blur", 1),
                           ("noise", 1), ("thicken", 4), ("serif", 1)):  # fmt: skip
            if not 0 <= float(given[name]) <= high:
                raise UserError(
                    f"data.batch_augment.{name}={given[name]}: must be within [0, {high}]"
                )
        self.rotate, self.scale, self.shear, self.shift = rotate, scale, shear, shift
        self.stroke, self.blur, self.noise, self.thicken = stroke, blur, noise, thicken
        self.serif = serif

    def __call__(
        self, x: Tensor, generator: torch.Generator, labels: Tensor | None = None
    ) -> Tensor:
        n = x.shape[0]

        def uniform(low: float, high: float) -> Tensor:
            u = torch.rand(n, device=x.device, generator=generator)
            return (low + (high - low) * u).view(n, 1, 1, 1)

        if self.serif and labels is not None:
            x = _serifs(x, (labels == 1) & (uniform(0, 1).flatten() < self.serif), uniform)
        x = self._affine(x, uniform)
        if self.stroke:
            pick = uniform(0, 1)
            amount = uniform(0.3, 1.0)
            thin = -F.max_pool2d(-x, 3, stride=1, padding=1)
            x = torch.where((pick >= self.stroke / 2) & (pick < self.stroke),
                            torch.lerp(x, thin, amount), x)  # fmt: skip
            # Thicker by up to `thicken` pixels a side: one 3x3 max filter a pixel, blended.
            grow, thick = amount * self.thicken, x
            for step in range(math.ceil(self.thicken)):
                more = F.max_pool2d(thick, 3, stride=1, padding=1)
                thick = torch.lerp(thick, more, (grow - step).clamp(0, 1))
            x = torch.where(pick < self.stroke / 2, thick, x)
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


def _serifs(x: Tensor, ones: Tensor, uniform) -> Tensor:
    """A foot (a bar under the stroke) and a flag (a short stroke down-left from its top) on the
    images `ones`, each with probability 0.75, in the digit's own stroke width."""
    n, _, h, w = x.shape
    ink = x[:, 0] > 0.5
    rows = ink.any(2)
    top = rows.float().argmax(1)
    bottom = h - 1 - rows.flip(1).float().argmax(1)
    columns = torch.arange(w, device=x.device, dtype=x.dtype)
    everyone = torch.arange(n, device=x.device)

    def centre(row: Tensor) -> Tensor:  # the stroke's column in a row
        line = ink[everyone, row].to(x.dtype)
        return (line * columns).sum(1) / line.sum(1).clamp(min=1)

    height = (bottom - top + 1).to(x.dtype)
    width = (ink.sum((1, 2)) / height).clamp(1.5, 4.0)
    foot_x, foot_y = centre(bottom), bottom.to(x.dtype) - width / 2 + 0.5
    half_foot = uniform(0.18, 0.32).flatten() * height
    flag_x, flag_y = centre(top), top.to(x.dtype) + width / 2 - 0.5
    flag = uniform(0.2, 0.35).flatten() * height
    feet = ones & (uniform(0, 1).flatten() < 0.75)
    flags = ones & (uniform(0, 1).flatten() < 0.75)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype), columns, indexing="ij")
    drawn = x[:, 0]
    for chosen, a, b in (
        (feet, (foot_x - half_foot, foot_y), (foot_x + half_foot, foot_y)),
        (flags, (flag_x, flag_y), (flag_x - 0.8 * flag, flag_y + 0.6 * flag)),
    ):
        (ax, ay), (bx, by) = ((p.view(n, 1, 1) for p in end) for end in (a, b))
        dx, dy = bx - ax, by - ay
        t = (((xs - ax) * dx + (ys - ay) * dy) / (dx * dx + dy * dy).clamp(min=1e-6)).clamp(0, 1)
        distance = torch.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
        line = (width.view(n, 1, 1) / 2 + 0.5 - distance).clamp(0, 1)
        drawn = torch.where(chosen.view(n, 1, 1), torch.maximum(drawn, line), drawn)
    return drawn.unsqueeze(1) if x.shape[1] == 1 else x


def batch_generator(device: torch.device, seed: int, step: int, rank: int) -> torch.Generator:
    """A generator on `device` for the batch of `step` on process `rank`: its own draw, the same
    whenever that step is trained."""
    generator = torch.Generator(device=device)
    generator.manual_seed(((seed * 1_000_003 + step) * 1_009 + rank) % 2**63)
    return generator

"""Networks: plain `nn.Module`s mapping images (B, C, H, W) to logits (B, num_classes)."""

from collections.abc import Sequence

from torch import Tensor, nn


class ConvNet(nn.Module):
    """Blocks of 3x3 conv, ReLU and 2x2 max-pool, then one hidden linear layer and the classifier.

    `channels=(16,), hidden=128` is the reference network:
    Conv2d(1, 16, 3, padding=1) -> ReLU -> MaxPool2d(2) -> Linear(3136, 128) -> ReLU -> Linear(128, 10).
    """

    def __init__(
        self,
        channels: Sequence[int] = (16,),
        hidden: int = 128,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for width in channels:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels, image_size = width, image_size // 2
        layers += [nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, num_classes))  # logits: no activation here
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (B, 1, 28, 28) -> (B, num_classes)

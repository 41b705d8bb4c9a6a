"""Networks: plain `nn.Module`s mapping images (B, C, H, W) to logits (B, num_classes)."""

from collections.abc import Sequence

from torch import Tensor, nn


class ConvNet(nn.Module):
    """Blocks of 3x3 conv, ReLU and 2x2 max-pool, then one hidden linear layer and the classifier.

    `channels=(16,), hidden=128` on 1x28x28 images with 10 classes is the reference network:
    Conv2d(1, 16, 3, padding=1) -> ReLU -> MaxPool2d(2) -> Linear(3136, 128) -> ReLU -> Linear(128, 10).
    """

    def __init__(
        self,
        channels: Sequence[int] = (16,),
        hidden: int = 128,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int | Sequence[int] = 28,
        dropout: float = 0.0,
    ):
        """`image_size`: one number for square images, or [height, width]."""
        super().__init__()
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(in_channels, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            in_channels, height, width = out, height // 2, width // 2
        layers += [nn.Flatten(), nn.Linear(in_channels * height * width, hidden), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, num_classes))  # logits: no activation here
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (B, C, H, W) -> (B, num_classes)


def resnet(
    name: str = "resnet18", in_channels: int = 3, num_classes: int = 10, small_images: bool = True
) -> nn.Module:
    """A torchvision ResNet (untrained) for `in_channels`-channel images. `small_images`: a 3x3
    stride-1 stem without max-pool, as for CIFAR-sized inputs, where the ImageNet stem would
    shrink a 32x32 image to 8x8 before the first block."""
    import torchvision.models

    net = getattr(torchvision.models, name)(num_classes=num_classes)
    if small_images:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return net

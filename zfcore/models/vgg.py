"""VGG-11/13/16/19 (Simonyan & Zisserman, 2015), with and without BatchNorm,
with the module layout and ``state_dict`` key names of the common PyTorch
checkpoints, so that such a checkpoint loads with ``model.load_state_dict``.

Layout: ``features`` = ``nn.Sequential`` of 3x3 convolutions (padding 1, with
bias), each followed by ``BatchNorm2d`` in the ``_bn`` variants and an
in-place ``ReLU``, and 2x2 max pooling (stride 2) after each of the five
groups; ``avgpool`` = adaptive average pooling to 7x7; flatten;
``classifier`` = ``Linear(25088, 4096)``, ReLU, Dropout, ``Linear(4096,
4096)``, ReLU, Dropout, ``Linear(4096, num_classes)``. The layers are the
``features.N`` / ``classifier.N`` indices.

Initialization: convolutions Kaiming-normal (fan out, ReLU gain) with zero
bias, BatchNorm weight 1 and bias 0, linear layers normal with std 0.01 and
zero bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["VGG", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

# convolutions per group of the five (each group: its width, then a 2x2 max pooling)
_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
_WIDTHS = (64, 128, 256, 512, 512)


def _features(depth: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for width, convs in zip(_WIDTHS, _DEPTHS[depth]):
        for _ in range(convs):
            layers.append(nn.Conv2d(cin, width, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            cin = width
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """A VGG network: ``features``, ``avgpool``, ``classifier``.

    Args:
        features: the convolutional part (``nn.Sequential``, 512 maps out).
        num_classes: outputs of the last linear layer.
        dropout: the classifier's dropout probability.
    """

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"VGG: num_classes must be a positive int (got {num_classes!r})")
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _vgg(depth: int, batch_norm: bool, num_classes: int) -> VGG:
    return VGG(_features(depth, batch_norm), num_classes)


def vgg11(num_classes: int = 1000) -> VGG:
    """VGG-11 (configuration A), 132.9 M parameters at 1000 classes."""
    return _vgg(11, False, num_classes)


def vgg11_bn(num_classes: int = 1000) -> VGG:
    """VGG-11 with BatchNorm after every convolution."""
    return _vgg(11, True, num_classes)


def vgg13(num_classes: int = 1000) -> VGG:
    """VGG-13 (configuration B)."""
    return _vgg(13, False, num_classes)


def vgg13_bn(num_classes: int = 1000) -> VGG:
    """VGG-13 with BatchNorm after every convolution."""
    return _vgg(13, True, num_classes)


def vgg16(num_classes: int = 1000) -> VGG:
    """VGG-16 (configuration D)."""
    return _vgg(16, False, num_classes)


def vgg16_bn(num_classes: int = 1000) -> VGG:
    """VGG-16 with BatchNorm after every convolution."""
    return _vgg(16, True, num_classes)


def vgg19(num_classes: int = 1000) -> VGG:
    """VGG-19 (configuration E)."""
    return _vgg(19, False, num_classes)


def vgg19_bn(num_classes: int = 1000) -> VGG:
    """VGG-19 with BatchNorm after every convolution."""
    return _vgg(19, True, num_classes)

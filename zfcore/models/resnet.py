"""ResNet-18/34/50/101/152 (He et al., 2016) with the module layout and
``state_dict`` key names of the common PyTorch checkpoints, so that such a
checkpoint loads with ``model.load_state_dict`` and the deconvnet addresses
the layers by their usual names (``layer3``, ``layer2.0.conv1``,
``layer4.1.downsample.0``, ...).

Layout: ``conv1`` (7x7, stride 2) -> ``bn1`` -> ``relu`` -> ``maxpool`` (3x3,
stride 2) -> ``layer1`` .. ``layer4`` -> ``avgpool`` (adaptive, 1x1) ->
flatten -> ``fc``. Each ``layerN`` is an ``nn.Sequential`` of residual blocks
named ``0``, ``1``, ...; a block holds its convolutions and BatchNorms
(``conv1``/``bn1``, ``conv2``/``bn2`` and, in a bottleneck, ``conv3``/``bn3``),
one in-place ``relu`` module called after every stage and after the addition,
and, where the shortcut changes shape, ``downsample`` = ``Sequential(1x1
convolution, BatchNorm2d)``. Bottleneck blocks stride their 3x3 convolution
(the "v1.5" placement). Convolutions have no bias.

Initialization: convolutions Kaiming-normal (fan out, ReLU gain), BatchNorm
weight 1 and bias 0, the classifier PyTorch's default for ``nn.Linear``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and the shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, and the shortcut (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    """A ResNet of ``block`` with ``depths[i]`` blocks in ``layer{i+1}``.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        depths: blocks per stage, four ints.
        num_classes: outputs of ``fc``.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths, num_classes: int = 1000):
        super().__init__()
        if len(depths) != 4 or not all(isinstance(d, int) and d >= 1 for d in depths):
            raise ValueError(f"ResNet: depths must be four positive ints (got {depths!r})")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"ResNet: num_classes must be a positive int (got {num_classes!r})")
        self._channels_in = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, depths[0], 1)
        self.layer2 = self._stage(block, 128, depths[1], 2)
        self.layer3 = self._stage(block, 256, depths[2], 2)
        self.layer4 = self._stage(block, 512, depths[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, block, width: int, depth: int, stride: int) -> nn.Sequential:
        out = width * block.expansion
        downsample = None
        if stride != 1 or self._channels_in != out:
            downsample = nn.Sequential(_conv1x1(self._channels_in, out, stride), nn.BatchNorm2d(out))
        blocks = [block(self._channels_in, width, stride, downsample)]
        self._channels_in = out
        blocks += [block(out, width) for _ in range(1, depth)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18: basic blocks, 2-2-2-2 (11.7 M parameters at 1000 classes)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34: basic blocks, 3-4-6-3."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50: bottleneck blocks, 3-4-6-3 (25.6 M parameters at 1000 classes)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


def resnet101(num_classes: int = 1000) -> ResNet:
    """ResNet-101: bottleneck blocks, 3-4-23-3."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes)


def resnet152(num_classes: int = 1000) -> ResNet:
    """ResNet-152: bottleneck blocks, 3-8-36-3."""
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes)

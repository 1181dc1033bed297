"""AlexNet (Krizhevsky et al., 2012) in the single-tower form with the module
layout and ``state_dict`` key names of the common PyTorch checkpoints, so that
such a checkpoint loads with ``model.load_state_dict`` (the paper's own
AlexNet, with local response normalization, is ``zfcore.models.alexnet``).

Layout: ``features`` = conv 64@11x11/4 (padding 2), ReLU, max pool 3x3/2;
conv 192@5x5 (padding 2), ReLU, max pool; conv 384, ReLU, conv 256, ReLU,
conv 256 @3x3 (padding 1), ReLU, max pool (indices 0, 3, 6, 8, 10 are the
convolutions); ``avgpool`` = adaptive average pooling to 6x6; flatten;
``classifier`` = Dropout, ``Linear(9216, 4096)``, ReLU, Dropout,
``Linear(4096, 4096)``, ReLU, ``Linear(4096, num_classes)``.

Initialization: PyTorch's defaults (the weights are expected from a file).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["AlexNet", "alexnet_torchvision"]


class AlexNet(nn.Module):
    """AlexNet with the common checkpoints' layout: ``features``, ``avgpool``, ``classifier``.

    Args:
        num_classes: outputs of the last linear layer.
        dropout: the classifier's dropout probability.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"AlexNet: num_classes must be a positive int (got {num_classes!r})")
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def alexnet_torchvision(num_classes: int = 1000) -> AlexNet:
    """AlexNet in the common checkpoints' layout (61.1 M parameters at 1000 classes)."""
    return AlexNet(num_classes)

"""The built-in architectures ``zfcore.load`` builds by name.

``alexnet``, ``vgg11`` .. ``vgg19_bn`` and ``resnet18`` .. ``resnet152`` have
the module layout and ``state_dict`` key names of the common PyTorch
(torchvision) checkpoints; ``zfnet``, ``zfnet_small`` and ``alexnet_paper``
are zfcore's own presets (the paper's networks). Each entry knows the key of
its final layer's weight, whose first dimension is the number of classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from . import convnets, resnet, vgg
from .alexnet import alexnet_torchvision

__all__ = ["ARCHITECTURES", "Architecture", "architecture"]


@dataclass(frozen=True)
class Architecture:
    """A built-in architecture.

    Attributes:
        name: its name for ``zfcore.load`` and ``--model``.
        build: ``build(num_classes) -> nn.Module`` (untrained).
        classifier: the ``state_dict`` key of the final layer's weight
            (``[num_classes, features]``).
        input_size: the side of the input it was designed for.
        layout: ``"torchvision"`` (the common checkpoints' key names) or ``"zfcore"``.
    """

    name: str
    build: Callable[[int], nn.Module]
    classifier: str
    input_size: int = 224
    layout: str = "torchvision"


def _table() -> dict[str, Architecture]:
    table = {"alexnet": Architecture("alexnet", alexnet_torchvision, "classifier.6.weight")}
    for name in ("vgg11", "vgg13", "vgg16", "vgg19"):
        for suffix in ("", "_bn"):
            table[name + suffix] = Architecture(name + suffix, getattr(vgg, name + suffix), "classifier.6.weight")
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        table[name] = Architecture(name, getattr(resnet, name), "fc.weight")
    table["zfnet"] = Architecture("zfnet", lambda n: convnets.zfnet(n), "fc8.weight", 224, "zfcore")
    table["alexnet_paper"] = Architecture("alexnet_paper", lambda n: convnets.alexnet(n), "fc8.weight", 224, "zfcore")
    table["zfnet_small"] = Architecture("zfnet_small", lambda n: convnets.zfnet_small(n), "fc8.weight", 64,
                                        "zfcore")
    return table


ARCHITECTURES: dict[str, Architecture] = _table()
"""Every built-in architecture by name."""


def architecture(name: str) -> Architecture:
    """The built-in architecture ``name``; an unknown name is a ``ValueError``
    listing the available ones."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ValueError(f"zfcore.load: unknown architecture {name!r}; built in: {', '.join(ARCHITECTURES)} "
                         f"(or torchvision:NAME with torchvision installed, a .pt2 file, a zfcore run)")
    return ARCHITECTURES[name]

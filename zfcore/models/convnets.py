"""ZFNet (Zeiler & Fergus, Fig. 3), AlexNet (single tower, dense) and small
presets with the same structure for CPU work.

Every model is a flat ``nn.Sequential`` whose children are named as in the
paper (conv1, relu1, pool1, norm1, ..., fc6, relu6, drop6, ..., fc8), so
``named_modules()`` gives the layer names the deconvnet and analyses use. Max
pooling is zfcore's ``MaxPool2dSwitches``; contrast normalization across maps is
``nn.LocalResponseNorm``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..nn import MaxPool2dSwitches
from .layer_spec import LayerSpec


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)


def init_paper(model: nn.Module, std: float = 1e-2) -> nn.Module:
    """The paper's initialization: weights normal with std ``std`` (1e-2), biases 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _build(convs, order: str, fc_width: int, num_classes: int, input_size: int, dropout: float,
           init_std: float | None) -> nn.Sequential:
    """convs: per layer (out_channels, kernel, stride, padding, pool?, norm?)."""
    layers: list[tuple[str, nn.Module]] = []
    in_channels = 3
    for i, (out, k, s, p, pool, norm) in enumerate(convs, start=1):
        layers += [(f"conv{i}", nn.Conv2d(in_channels, out, k, s, p)), (f"relu{i}", nn.ReLU())]
        stages = {"pool": (f"pool{i}", MaxPool2dSwitches(3, 2, ceil_mode=True)), "norm": (f"norm{i}", _lrn())}
        wanted = {"pool": pool, "norm": norm}
        layers += [stages[stage] for stage in order if wanted[stage]]
        in_channels = out
    probe = nn.Sequential(OrderedDict(layers))
    spec = LayerSpec.of(probe, (3, input_size, input_size))
    flat = int(torch.tensor(spec.layers[-1].shape).prod())
    layers += [("flatten", nn.Flatten()),
               ("fc6", nn.Linear(flat, fc_width)), ("relu6", nn.ReLU()), ("drop6", nn.Dropout(dropout)),
               ("fc7", nn.Linear(fc_width, fc_width)), ("relu7", nn.ReLU()), ("drop7", nn.Dropout(dropout)),
               ("fc8", nn.Linear(fc_width, num_classes))]
    model = nn.Sequential(OrderedDict(layers))
    model.input_size = input_size
    return init_paper(model, init_std) if init_std is not None else model


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def zfnet(num_classes: int = 1000, *, width: float = 1.0, fc_width: int = 4096, input_size: int = 224,
          dropout: float = 0.5, init_std: float | None = 1e-2, conv2_stride: int = 2) -> nn.Sequential:
    """ZFNet as in Fig. 3 of the paper: conv1 96@7x7/2, pool 3x3/2, norm; conv2
    256@5x5/2, pool, norm; conv3 384, conv4 384, conv5 256 @3x3/1; pool5; fc6,
    fc7 4096 with dropout; fc8. ``width`` scales the conv channels,
    ``init_std=None`` keeps PyTorch's default initialization, ``conv2_stride=1``
    (with padding 2) keeps small inputs from collapsing before pool5.

    Example:
        >>> model = zfnet(num_classes=10)
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 10])
    """
    c = [_scaled(n, width) for n in (96, 256, 384, 384, 256)]
    conv2_padding = 0 if conv2_stride == 2 else 2
    convs = [(c[0], 7, 2, 1, True, True), (c[1], 5, conv2_stride, conv2_padding, True, True),
             (c[2], 3, 1, 1, False, False), (c[3], 3, 1, 1, False, False), (c[4], 3, 1, 1, True, False)]
    return _build(convs, "pool norm".split(), fc_width, num_classes, input_size, dropout, init_std)


def alexnet(num_classes: int = 1000, *, width: float = 1.0, fc_width: int = 4096, input_size: int = 224,
            dropout: float = 0.5, init_std: float | None = 1e-2) -> nn.Sequential:
    """AlexNet (Krizhevsky et al. 2012) as the paper compares it: one tower,
    dense connections; conv1 96@11x11/4, norm, pool; conv2 256@5x5, norm, pool;
    conv3-5 384/384/256 @3x3; pool5; fc6, fc7 4096; fc8."""
    c = [_scaled(n, width) for n in (96, 256, 384, 384, 256)]
    convs = [(c[0], 11, 4, 2, True, True), (c[1], 5, 1, 2, True, True), (c[2], 3, 1, 1, False, False),
             (c[3], 3, 1, 1, False, False), (c[4], 3, 1, 1, True, False)]
    return _build(convs, "norm pool".split(), fc_width, num_classes, input_size, dropout, init_std)


def zfnet_small(num_classes: int = 10, *, input_size: int = 64, **kwargs) -> nn.Sequential:
    """A narrower ZFNet (1/4 of the channels, fc 256) with the same layers, for
    the CPU on 64-112 px inputs: conv2 has stride 1 (padding 2), so a 64 px input
    still reaches pool5 as a 3x3 map (64 -> 30 -> 15 -> 15 -> 7 -> 7 -> 3)."""
    kwargs.setdefault("width", 0.25)
    kwargs.setdefault("fc_width", 256)
    kwargs.setdefault("conv2_stride", 1)
    return zfnet(num_classes, input_size=input_size, **kwargs)


PRESETS = {"zfnet": zfnet, "alexnet": alexnet, "zfnet_small": zfnet_small}

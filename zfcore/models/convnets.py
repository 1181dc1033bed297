"""ZFNet (Zeiler & Fergus, Fig. 3), AlexNet (single tower, dense) and small
presets with the same structure for CPU work.

Every model is a flat ``nn.Sequential`` whose children are named as in the
paper (conv1, relu1, pool1, norm1, ..., fc6, relu6, drop6, ..., fc8), so
``named_modules()`` gives the layer names the deconvnet and analyses use. Max
pooling is zfcore's ``MaxPool2dSwitches``; contrast normalization across maps is
``nn.LocalResponseNorm``.

Variants for the paper's architecture studies (Fig. 6, Table 3): ``conv1``
replaces the first layer's (kernel, stride), e.g. AlexNet's 11x11/4 inside
ZFNet; ``remove`` leaves out any of conv3, conv4, fc6, fc7 (with their ReLU and
dropout), the next layer taking the input size it now gets. The remaining
layers keep their names (a ZFNet without conv3 goes conv2 -> conv4), so layer
specs, the deconvnet and the analyses address them as before.
"""

from __future__ import annotations

from collections import OrderedDict

import math

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


REMOVABLE = ("conv3", "conv4", "fc6", "fc7")
"""The layers ``remove`` may leave out (the paper's Table 3 ablations)."""


def conv1_padding(kernel: int, stride: int) -> int:
    """The first layer's padding for a (kernel, stride) variant: ``max(0, (kernel -
    stride) // 2 - 1)``, a choice (the paper gives only its two settings) that
    reproduces both: 1 for ZFNet's 7x7/2 (224 -> 110) and 2 for AlexNet's 11x11/4
    (224 -> 55)."""
    return max(0, (kernel - stride) // 2 - 1)


def _check_variant(conv1, remove) -> tuple[tuple[int, int] | None, tuple[str, ...]]:
    if conv1 is not None:
        ok = (isinstance(conv1, tuple | list) and len(conv1) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in conv1))
        if not ok or conv1[1] > conv1[0]:
            raise ValueError(f"conv1 must be (kernel, stride) of positive ints with stride <= kernel (got {conv1!r})")
        conv1 = (int(conv1[0]), int(conv1[1]))
    if isinstance(remove, str):
        remove = (remove,)
    remove = tuple(remove)
    unknown = [name for name in remove if name not in REMOVABLE]
    if unknown or len(set(remove)) != len(remove):
        raise ValueError(f"remove must name distinct layers among {', '.join(REMOVABLE)} (got {remove!r})")
    return conv1, remove


def _build(convs, order: str, fc_width: int, num_classes: int, input_size: int, dropout: float,
           init_std: float | None, conv1=None, remove=()) -> nn.Sequential:
    """convs: per layer (out_channels, kernel, stride, padding, pool?, norm?)."""
    conv1, remove = _check_variant(conv1, remove)
    if conv1 is not None:
        convs = [(convs[0][0], *conv1, conv1_padding(*conv1), *convs[0][4:]), *convs[1:]]
    layers: list[tuple[str, nn.Module]] = []
    in_channels = 3
    for i, (out, k, s, p, pool, norm) in enumerate(convs, start=1):
        if f"conv{i}" in remove:
            continue  # conv3/conv4 have no pooling or normalization to leave out with them
        layers += [(f"conv{i}", nn.Conv2d(in_channels, out, k, s, p)), (f"relu{i}", nn.ReLU())]
        stages = {"pool": (f"pool{i}", MaxPool2dSwitches(3, 2, ceil_mode=True)), "norm": (f"norm{i}", _lrn())}
        wanted = {"pool": pool, "norm": norm}
        layers += [stages[stage] for stage in order if wanted[stage]]
        in_channels = out
    probe = nn.Sequential(OrderedDict(layers))
    try:
        spec = LayerSpec.of(probe, (3, input_size, input_size))
    except ValueError as error:
        first = convs[0]
        raise ValueError(f"input_size {input_size} is too small for this model (conv1 {first[1]}x{first[1]} "
                         f"stride {first[2]}): {error}") from None
    features = math.prod(spec.layers[-1].shape)
    layers.append(("flatten", nn.Flatten()))
    for i in (6, 7):
        if f"fc{i}" not in remove:
            layers += [(f"fc{i}", nn.Linear(features, fc_width)), (f"relu{i}", nn.ReLU()),
                       (f"drop{i}", nn.Dropout(dropout))]
            features = fc_width
    layers.append(("fc8", nn.Linear(features, num_classes)))
    model = nn.Sequential(OrderedDict(layers))
    model.input_size = input_size
    return init_paper(model, init_std) if init_std is not None else model


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def zfnet(num_classes: int = 1000, *, width: float = 1.0, fc_width: int = 4096, input_size: int = 224,
          dropout: float = 0.5, init_std: float | None = 1e-2, conv2_stride: int = 2,
          conv1: tuple[int, int] | None = None, remove: tuple[str, ...] = ()) -> nn.Sequential:
    """ZFNet as in Fig. 3 of the paper: conv1 96@7x7/2, pool 3x3/2, norm; conv2
    256@5x5/2, pool, norm; conv3 384, conv4 384, conv5 256 @3x3/1; pool5; fc6,
    fc7 4096 with dropout; fc8. ``width`` scales the conv channels,
    ``init_std=None`` keeps PyTorch's default initialization, ``conv2_stride=1``
    (with padding 2) keeps small inputs from collapsing before pool5.
    ``conv1=(kernel, stride)`` replaces the first layer's (padding
    ``conv1_padding``); ``remove`` leaves out any of conv3, conv4, fc6, fc7 (see
    the module docstring).

    Example:
        >>> model = zfnet(num_classes=10)
        >>> model(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 10])
        >>> zfnet(10, conv1=(11, 4), remove=("conv3", "conv4"))  # AlexNet's conv1, no middle convs
    """
    c = [_scaled(n, width) for n in (96, 256, 384, 384, 256)]
    conv2_padding = 0 if conv2_stride == 2 else 2
    convs = [(c[0], 7, 2, 1, True, True), (c[1], 5, conv2_stride, conv2_padding, True, True),
             (c[2], 3, 1, 1, False, False), (c[3], 3, 1, 1, False, False), (c[4], 3, 1, 1, True, False)]
    return _build(convs, "pool norm".split(), fc_width, num_classes, input_size, dropout, init_std, conv1, remove)


def alexnet(num_classes: int = 1000, *, width: float = 1.0, fc_width: int = 4096, input_size: int = 224,
            dropout: float = 0.5, init_std: float | None = 1e-2, conv1: tuple[int, int] | None = None,
            remove: tuple[str, ...] = ()) -> nn.Sequential:
    """AlexNet (Krizhevsky et al. 2012) as the paper compares it: one tower,
    dense connections; conv1 96@11x11/4, norm, pool; conv2 256@5x5, norm, pool;
    conv3-5 384/384/256 @3x3; pool5; fc6, fc7 4096; fc8. ``conv1`` and ``remove``
    as in ``zfnet``."""
    c = [_scaled(n, width) for n in (96, 256, 384, 384, 256)]
    convs = [(c[0], 11, 4, 2, True, True), (c[1], 5, 1, 2, True, True), (c[2], 3, 1, 1, False, False),
             (c[3], 3, 1, 1, False, False), (c[4], 3, 1, 1, True, False)]
    return _build(convs, "norm pool".split(), fc_width, num_classes, input_size, dropout, init_std, conv1, remove)


def zfnet_small(num_classes: int = 10, *, input_size: int = 64, **kwargs) -> nn.Sequential:
    """A narrower ZFNet (1/4 of the channels, fc 256) with the same layers, for
    the CPU on 64-112 px inputs: conv2 has stride 1 (padding 2), so a 64 px input
    still reaches pool5 as a 3x3 map (64 -> 30 -> 15 -> 15 -> 7 -> 7 -> 3).
    Takes ``zfnet``'s keyword arguments (``conv1``, ``remove``, ...)."""
    kwargs.setdefault("width", 0.25)
    kwargs.setdefault("fc_width", 256)
    kwargs.setdefault("conv2_stride", 1)
    return zfnet(num_classes, input_size=input_size, **kwargs)


PRESETS = {"zfnet": zfnet, "alexnet": alexnet, "zfnet_small": zfnet_small}

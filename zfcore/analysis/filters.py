"""Filter images with a smoothness score: the lecture's check "smooth filters
= converged, noisy = not converged (bad learning rate, weak regularization)".

The score of one filter is its *high-frequency energy fraction*: after its mean
is removed, the share of its spectral energy (``|FFT|^2`` of each input
channel's kh x kw kernel, summed over channels) at spatial frequencies above
half the Nyquist frequency, ``sqrt(fy^2 + fx^2) > 0.25`` cycles per pixel.
White noise scores about 0.7 on a 7x7 kernel, a smooth blob or an edge near 0.
(The threshold is a choice; the paper only shows pictures.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .result import Result

__all__ = ["Filters", "filters", "high_frequency_fraction"]


@dataclass
class Filters(Result):
    """``weights[O, I, kh, kw]`` of ``layer`` (float32, CPU), ``smoothness[O]``
    (high-frequency energy fraction: lower = smoother), ``rgb``: whether the
    filters see the image's three channels (rendered as colour tiles)."""

    layer: str
    weights: Tensor
    high_frequency: Tensor
    rgb: bool


def high_frequency_fraction(weights: Tensor, cutoff: float = 0.25) -> Tensor:
    """Per filter of ``weights[O, I, kh, kw]``, the share of its (mean-removed)
    spectral energy above ``cutoff`` cycles per pixel; 0 for a constant filter."""
    w = weights.detach().double()
    w = w - w.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(w).abs().pow(2).sum(1)                       # [O, kh, kw]
    fy = torch.fft.fftfreq(w.shape[-2], dtype=torch.float64)
    fx = torch.fft.fftfreq(w.shape[-1], dtype=torch.float64)
    high = (fy[:, None].pow(2) + fx[None, :].pow(2)).sqrt() > cutoff
    total = power.sum(dim=(-2, -1))
    return torch.where(total > 0, (power * high).sum(dim=(-2, -1)) / total.clamp_min(1e-300), 0.0).float()


def filters(model: nn.Module, layer: str = "conv1") -> Filters:
    """``layer``'s filters (a Conv2d named as in ``model.named_modules()``)."""
    modules = dict(model.named_modules())
    if layer not in modules:
        convs = ", ".join(n for n, m in modules.items() if isinstance(m, nn.Conv2d))
        raise ValueError(f"filters: no layer named {layer!r}; conv layers are {convs}")
    conv = modules[layer]
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"filters: {layer!r} is a {type(conv).__name__}, not a Conv2d")
    w = conv.weight.detach().float().cpu()
    return Filters(layer, w, high_frequency_fraction(w), rgb=w.shape[1] == 3)

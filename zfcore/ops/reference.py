"""Pure-PyTorch reference of every zfcore op: the oracle of the tests, the
fallback backend, and the plain statement of each op's semantics.

Arguments are already normalized (pairs of ints, see zfcore/ops/checks.py).
Section numbers refer to Zeiler & Fergus, *Visualizing and Understanding
Convolutional Networks* (ECCV 2014).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels.common import memory_format_of, pool_output_size  # noqa: F401  (pool_output_size: re-exported)

Pair = tuple[int, int]


def _window_origins(out_h: int, out_w: int, stride: Pair, padding: Pair, device) -> tuple[Tensor, Tensor]:
    """Input coordinates of the top-left corner of every (padded) pooling window."""
    oh = torch.arange(out_h, device=device).view(-1, 1) * stride[0] - padding[0]
    ow = torch.arange(out_w, device=device).view(1, -1) * stride[1] - padding[1]
    return oh, ow


def switches_to_indices(switches: Tensor, input_size: Pair, kernel_size: Pair, stride: Pair, padding: Pair) -> Tensor:
    """PyTorch's int64 flat indices (``F.max_pool2d(..., return_indices=True)[1]``)
    from uint8 switches."""
    h0, w0 = _window_origins(switches.shape[-2], switches.shape[-1], stride, padding, switches.device)
    offset = switches.long()
    ih = h0 + offset // kernel_size[1]
    iw = w0 + offset % kernel_size[1]
    return ih * input_size[1] + iw


def indices_to_switches(indices: Tensor, input_size: Pair, kernel_size: Pair, stride: Pair, padding: Pair) -> Tensor:
    """uint8 switches (row-major offsets inside each window) from int64 flat indices."""
    h0, w0 = _window_origins(indices.shape[-2], indices.shape[-1], stride, padding, indices.device)
    ih = torch.div(indices, input_size[1], rounding_mode="floor")
    iw = indices - ih * input_size[1]
    return ((ih - h0) * kernel_size[1] + (iw - w0)).to(torch.uint8)


def max_pool2d_switches(x: Tensor, kernel_size: Pair, stride: Pair, padding: Pair, ceil_mode: bool) -> tuple[Tensor, Tensor]:
    """Max pooling that also returns the switches (paper section 2.1)."""
    out, indices = F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode, return_indices=True)
    return out, indices_to_switches(indices, x.shape[-2:], kernel_size, stride, padding)


def unpool2d(y: Tensor, switches: Tensor, kernel_size: Pair, stride: Pair, padding: Pair, output_size: Pair) -> Tensor:
    """The transpose of max pooling: every input position receives the *sum* of the
    values of the windows whose switch points at it (overlapping windows add)."""
    n, c = y.shape[:2]
    indices = switches_to_indices(switches, output_size, kernel_size, stride, padding)
    flat = y.new_zeros(n, c, output_size[0] * output_size[1])
    return flat.scatter_add(2, indices.flatten(2), y.flatten(2)).view(n, c, *output_size)


def gather_switches(x: Tensor, switches: Tensor, kernel_size: Pair, stride: Pair, padding: Pair) -> Tensor:
    """The transpose of unpool2d: the value of ``x`` at each window's switch."""
    n, c = x.shape[:2]
    indices = switches_to_indices(switches, x.shape[-2:], kernel_size, stride, padding)
    return torch.gather(x.flatten(2), 2, indices.flatten(2)).view(switches.shape)


def relu_conv_transpose2d(y: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair,
                          output_padding: Pair, groups: int, dilation: Pair) -> Tensor:
    """``conv_transpose2d(relu(y), weight, bias)``: rectify, then filter with the
    forward layer's (flipped) filters (paper section 2.1)."""
    out = F.conv_transpose2d(F.relu(y), weight, bias, stride, padding, output_padding, groups, dilation)
    return out.contiguous(memory_format=memory_format_of(y))  # y's layout, as every backend


def deconv_step(y: Tensor, switches: Tensor, weight: Tensor, bias: Tensor | None, pool_kernel_size: Pair,
                pool_stride: Pair, pool_padding: Pair, unpooled_size: Pair, stride: Pair, padding: Pair,
                output_padding: Pair, groups: int, dilation: Pair) -> Tensor:
    """One downward stage of the deconvnet: unpool, rectify, filter."""
    unpooled = unpool2d(y, switches, pool_kernel_size, pool_stride, pool_padding, unpooled_size)
    return relu_conv_transpose2d(unpooled, weight, bias, stride, padding, output_padding, groups, dilation)

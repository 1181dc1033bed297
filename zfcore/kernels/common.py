"""Shape rules and launch helpers shared by the Triton kernels, the fake
kernels and the reference (plain Python: importing this needs no Triton)."""

from __future__ import annotations

import torch


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output extent of one pooled dimension, with PyTorch's floor/ceil rules."""
    out = (size + 2 * padding - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def conv_transpose_output_size(size: int, kernel: int, stride: int, padding: int, output_padding: int,
                               dilation: int) -> int:
    """Output extent of one dimension of ``F.conv_transpose2d``."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The layout every backend computes and returns in: channels-last when the
    input is channels-last (and not also plain contiguous), else NCHW. The C++
    backends use the same rule (csrc/pool_geometry.h)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format

"""Shape rules and launch helpers shared by the Triton kernels, the fake
kernels and the reference (plain Python: importing this needs no Triton)."""

from __future__ import annotations

import torch

from ..geometry import conv_transpose_output_size, pool_output_size  # noqa: F401  (the kernels' shape rules)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The layout every backend computes and returns in: channels-last when the
    input is channels-last (and not also plain contiguous), else NCHW. The C++
    backends use the same rule (csrc/pool_geometry.h)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format

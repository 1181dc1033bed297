"""Sizes of pooled, convolved and transposed-convolved maps, and receptive
fields: the one place the Python side computes them (kernels, ops, models,
the deconvnet engine and the analyses import these). Plain Python, no torch.
Its C++ twin, for the native kernels, is ``csrc/geometry.h``; a test checks
that the two agree on thousands of random geometries.

PyTorch's rules: a window of ``kernel`` taps ``dilation`` apart covers
``dilation * (kernel - 1) + 1`` pixels; with ``ceil_mode`` a last partial
window counts only when it starts inside the input or its left padding.

Example:
    >>> pool_output_size(55, 3, 2, 0, ceil_mode=True)
    27
    >>> conv_transpose_output_size(27, 3, 2, 0, output_padding=0)
    55
"""

from __future__ import annotations


def pair(value, name: str = "value") -> tuple[int, int]:
    """``v`` -> ``(v, v)``; a pair of two ints stays as it is (as ints)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    try:
        first, second = value
        return int(first), int(second)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints (got {value!r})") from None


def extent(kernel: int, dilation: int = 1) -> int:
    """The pixels one window spans."""
    return dilation * (kernel - 1) + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool = False,
                     dilation: int = 1) -> int:
    """Output extent of one dimension of max pooling (``ceil_mode`` as PyTorch)
    or, with ``ceil_mode=False``, of a convolution."""
    span = extent(kernel, dilation)
    out = (size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output extent of one dimension of ``F.conv2d``."""
    return pool_output_size(size, kernel, stride, padding, False, dilation)


def conv_transpose_output_size(size: int, kernel: int, stride: int, padding: int, output_padding: int = 0,
                               dilation: int = 1) -> int:
    """Output extent of one dimension of ``F.conv_transpose2d``."""
    return (size - 1) * stride - 2 * padding + extent(kernel, dilation) + output_padding


def output_padding(input_size: int, output_size: int, kernel: int, stride: int, padding: int,
                   dilation: int = 1) -> int:
    """The ``output_padding`` that makes ``conv_transpose2d`` of a map of
    ``output_size`` (a convolution's output) return ``input_size`` (its input)."""
    return input_size - conv_transpose_output_size(output_size, kernel, stride, padding, 0, dilation)


def receptive_field_step(size: int, jump: int, offset: float, kernel: int, stride: int, padding: int,
                         dilation: int = 1) -> tuple[int, int, float]:
    """One windowed layer composed onto a receptive field: a unit ``h`` of the
    layer's input sees input rows ``offset + h * jump +- (size - 1) / 2``;
    returns the same ``(size, jump, offset)`` for the layer's output."""
    span = extent(kernel, dilation)
    return size + (span - 1) * jump, jump * stride, offset + ((span - 1) / 2 - padding) * jump

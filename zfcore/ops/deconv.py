"""The deconvnet's filtering stage, fused with rectification and unpooling."""

from __future__ import annotations

from torch import Tensor

from . import checks
from .backend_choice import run


def relu_conv_transpose2d(y: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                          output_padding=0, groups: int = 1, dilation=1, *, backend: str | None = None) -> Tensor:
    """``F.conv_transpose2d(F.relu(y), weight, bias, ...)``: rectify, then filter
    with the transposed filters of the forward layer (Zeiler & Fergus, 2.1).

    Args:
        y: ``Tensor[N, C_in, H, W]`` where ``C_in`` is the forward conv's output channels.
        weight: the *forward* convolution's weight ``Tensor[C_in, C_out/groups, kH, kW]``.
        bias, stride, padding, output_padding, groups, dilation: as ``F.conv_transpose2d``
            (the deconvnet uses no bias).

    Returns:
        ``Tensor[N, C_out, H_out, W_out]``.

    Example:
        >>> x_rec = zfcore.ops.relu_conv_transpose2d(y, conv1.weight, stride=2, padding=1, output_padding=1)
    """
    op = "relu_conv_transpose2d"
    args = checks.relu_conv_transpose2d(y, weight, bias, stride, padding, output_padding, groups, dilation)
    return run(op, y, backend, y, weight, bias, *args)


def deconv_step(y: Tensor, switches: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                pool_kernel_size, pool_stride=None, pool_padding=0, unpooled_size=None,
                stride=1, padding=0, output_padding=0, groups: int = 1, dilation=1,
                backend: str | None = None) -> Tensor:
    """One downward stage of the deconvnet: unpool through the switches, rectify,
    filter with the forward weights. Equal to
    ``relu_conv_transpose2d(unpool2d(y, switches, ...), weight, bias, ...)``.

    Args:
        y: ``Tensor[N, C, OH, OW]``, the signal at the pooled layer.
        switches: uint8 ``Tensor[N, C, OH, OW]`` of that pooling.
        weight, bias: the forward convolution's (below the pooling) weight and bias.
        pool_kernel_size, pool_stride, pool_padding: the pooling's parameters.
        unpooled_size: ``(H, W)`` of the pooling's input (the conv's output).
        stride, padding, output_padding, groups, dilation: the forward
            convolution's, as ``F.conv_transpose2d`` takes them.

    Returns:
        ``Tensor[N, C_out, H_out, W_out]``: the signal at the convolution's input.

    Example:
        >>> x_rec = zfcore.ops.deconv_step(y, switches, conv1.weight, pool_kernel_size=3, pool_stride=2,
        ...                                unpooled_size=(110, 110), stride=2, padding=1, output_padding=1)
    """
    k, s, p, size, *conv = checks.deconv_step(y, switches, weight, bias, pool_kernel_size, pool_stride,
                                              pool_padding, unpooled_size, stride, padding, output_padding,
                                              groups, dilation)
    return run("deconv_step", y, backend, y, switches, weight, bias, list(k), list(s), list(p), list(size), *conv)

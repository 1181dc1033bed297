"""Triton deconv_step: unpool -> ReLU -> transposed convolution in one kernel.

The implicit GEMM of zfcore/kernels/relu_conv_transpose.py with its input tile
computed through the switches: each element of the unpooled map is the sum of
the (at most ceil(k/s)^2) pooled values whose switch points at it, built in
registers as the tile is loaded. The unpooled map is never written.
"""

from __future__ import annotations

from .relu_conv_transpose import launch_conv_transpose


def deconv_step(y, switches, weight, bias, pool_kernel_size, pool_stride, pool_padding, unpooled_size, stride,
                padding, output_padding, groups, dilation, *, launch=None):
    """Launcher; arguments already checked and normalized."""
    size = tuple(int(v) for v in unpooled_size)
    return launch_conv_transpose(y, switches, weight, bias, size, stride, padding, output_padding, groups, dilation,
                                 pool=(tuple(pool_kernel_size), tuple(pool_stride), tuple(pool_padding)),
                                 launch=launch)

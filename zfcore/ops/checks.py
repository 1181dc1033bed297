"""Argument checking and normalization, one checker per op.

Every message names the op and the argument and says what was expected, e.g.
``unpool2d: switches must be uint8 with the shape of y [2, 3, 4, 4] (got int64 [2, 3, 4, 4])``.
Checks raise ``ValueError``/``TypeError``; they run before any backend is chosen,
so every backend sees the same valid arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .reference import pool_output_size

Pair = tuple[int, int]
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MAX_WINDOW = 256  # a switch is one byte


def pair(op: str, name: str, value, *, minimum: int) -> Pair:
    """An int or a sequence of two ints, each at least ``minimum``."""
    kind = type(value)
    if kind is int:  # the common cases first: this runs on every op call
        result = (value, value)
    elif kind in (tuple, list, torch.Size) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        result = (value[0], value[1])
    else:
        if isinstance(value, torch.Size | Sequence) and not isinstance(value, str) and len(value) == 1:
            value = (value[0], value[0])
        if isinstance(value, bool) or not (
                isinstance(value, int) or isinstance(value, torch.Size | Sequence) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise TypeError(f"{op}: {name} must be an int or a pair of ints (got {value!r})")
        result = (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if result[0] < minimum or result[1] < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum} (got {result})")
    return result


def _describe(t: Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def tensor_4d(op: str, name: str, t, *, floating: bool = True) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a Tensor (got {type(t).__name__})")
    if t.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D [N, C, H, W] (got {t.dim()}-D {list(t.shape)})")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float64, float16 or bfloat16 (got {_describe(t)})")


def same_device(op: str, **tensors) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device (got {listed})")


def pool_geometry(op: str, kernel_size, stride, padding) -> tuple[Pair, Pair, Pair]:
    """Normalize and check pooling parameters; ``stride=None`` means the kernel size."""
    k = pair(op, "kernel_size", kernel_size, minimum=1)
    s = k if stride is None or (isinstance(stride, Sequence) and len(stride) == 0) else pair(op, "stride", stride, minimum=1)
    p = pair(op, "padding", padding, minimum=0)
    if k[0] * k[1] > MAX_WINDOW:
        raise ValueError(f"{op}: kernel_size {k} has {k[0] * k[1]} elements; switches are one byte, "
                         f"so a window may hold at most {MAX_WINDOW}")
    if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        raise ValueError(f"{op}: padding {p} must be at most half of kernel_size {k}")
    return k, s, p


def pooled_size(op: str, input_size: Pair, k: Pair, s: Pair, p: Pair, ceil_mode: bool) -> Pair:
    out = tuple(pool_output_size(input_size[i], k[i], s[i], p[i], ceil_mode) for i in range(2))
    if min(out) <= 0:
        raise ValueError(f"{op}: input of spatial size {tuple(input_size)} is too small for "
                         f"kernel_size {k} with padding {p}")
    return out


def max_pool2d_switches(x, kernel_size, stride, padding, ceil_mode):
    op = "max_pool2d_switches"
    tensor_4d(op, "x", x)
    k, s, p = pool_geometry(op, kernel_size, stride, padding)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: ceil_mode must be a bool (got {ceil_mode!r})")
    pooled_size(op, tuple(x.shape[-2:]), k, s, p, ceil_mode)
    return k, s, p


def switches_for(op: str, switches, pooled: Tensor, pooled_name: str) -> None:
    if not isinstance(switches, Tensor):
        raise TypeError(f"{op}: switches must be a uint8 Tensor (got {type(switches).__name__})")
    if switches.dtype != torch.uint8 or switches.shape != pooled.shape:
        raise ValueError(f"{op}: switches must be uint8 with the shape of {pooled_name} {list(pooled.shape)} "
                         f"(got {_describe(switches)})")


def unpooled_size(op: str, output_size, y: Tensor, k: Pair, s: Pair, p: Pair, name: str = "output_size") -> Pair:
    """The input size a pooling maps to ``y``: given (H, W) or (N, C, H, W), or None
    for the smallest one (floor mode)."""
    pooled = tuple(y.shape[-2:])
    if output_size is None:
        return tuple((pooled[i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(2))
    if isinstance(output_size, torch.Size | Sequence) and len(output_size) == 4:
        output_size = tuple(output_size[-2:])
    size = pair(op, name, output_size, minimum=1)
    for ceil_mode in (False, True):
        if tuple(pool_output_size(size[i], k[i], s[i], p[i], ceil_mode) for i in range(2)) == pooled:
            return size
    raise ValueError(f"{op}: {name} {size} cannot be pooled to y's spatial size {pooled} with "
                     f"kernel_size {k}, stride {s}, padding {p}")


def unpool2d(y, switches, kernel_size, stride, padding, output_size):
    op = "unpool2d"
    tensor_4d(op, "y", y)
    switches_for(op, switches, y, "y")
    same_device(op, y=y, switches=switches)
    k, s, p = pool_geometry(op, kernel_size, stride, padding)
    return k, s, p, unpooled_size(op, output_size, y, k, s, p)


def conv_transpose(op: str, y: Tensor, weight, bias, stride, padding, output_padding, groups, dilation):
    tensor_4d(op, "weight", weight)
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.dim() != 1:
            raise ValueError(f"{op}: bias must be a 1-D Tensor or None (got {bias!r:.80})")
    same_device(op, y=y, weight=weight, bias=bias)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != y.dtype:
            raise TypeError(f"{op}: {name} must have y's dtype {y.dtype} (got {t.dtype})")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int (got {groups!r})")
    if y.shape[1] != weight.shape[0]:
        raise ValueError(f"{op}: y has {y.shape[1]} channels but weight [C_in, C_out/groups, kH, kW] is "
                         f"{list(weight.shape)}; weight is the forward convolution's weight")
    if weight.shape[0] % groups:
        raise ValueError(f"{op}: groups {groups} must divide weight's first dimension {weight.shape[0]}")
    if bias is not None and bias.shape[0] != weight.shape[1] * groups:
        raise ValueError(f"{op}: bias must have {weight.shape[1] * groups} elements (got {bias.shape[0]})")
    st = pair(op, "stride", stride, minimum=1)
    pd = pair(op, "padding", padding, minimum=0)
    op_ = pair(op, "output_padding", output_padding, minimum=0)
    dl = pair(op, "dilation", dilation, minimum=1)
    if op_[0] >= max(st[0], dl[0]) or op_[1] >= max(st[1], dl[1]):
        raise ValueError(f"{op}: output_padding {op_} must be smaller than stride {st} or dilation {dl}")
    return st, pd, op_, groups, dl


def relu_conv_transpose2d(y, weight, bias, stride, padding, output_padding, groups, dilation):
    op = "relu_conv_transpose2d"
    tensor_4d(op, "y", y)
    return conv_transpose(op, y, weight, bias, stride, padding, output_padding, groups, dilation)


def deconv_step(y, switches, weight, bias, pool_kernel_size, pool_stride, pool_padding, unpooled_size_,
                stride, padding, output_padding, groups, dilation):
    op = "deconv_step"
    tensor_4d(op, "y", y)
    switches_for(op, switches, y, "y")
    same_device(op, y=y, switches=switches)
    k, s, p = pool_geometry(op, pool_kernel_size, pool_stride, pool_padding)
    size = unpooled_size(op, unpooled_size_, y, k, s, p, name="unpooled_size")
    conv = conv_transpose(op, y, weight, bias, stride, padding, output_padding, groups, dilation)
    return (k, s, p, size, *conv)

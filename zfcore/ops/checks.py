"""Argument checking and normalization, one checker per op.

Every message names the op and the argument and says what was expected, e.g.
``unpool2d: switches must be uint8 with the shape of y [2, 3, 4, 4] (got int64 [2, 3, 4, 4])``.
Checks raise ``ValueError``/``TypeError``; they run before any backend is chosen,
so every backend sees the same valid arguments.

Each call validates its arguments once in Python. The registered ops
(``torch.ops.zfcore.*``, ``torch.ops.zfcore_triton.*``) guard themselves, as
they must when a library calls them directly: the C++ kernels with
csrc/checks.h, and the Python code behind an op (a fake kernel, a Triton
launcher, the reference fallback) with ``registered``, these same checkers on
the op's raw arguments. The Python API, having just checked a call, hands its
arguments to the op it calls with ``passing_on``, and ``registered`` skips the
check for exactly those arguments (the same tensor objects, equal other
values), once; any other call of any op is checked in full.

Switch values are data: the CPU backends raise on a switch outside its window
or into the padding (``switch_values`` for the reference); GPU kernels cannot
raise, and there such a switch contributes nothing.
"""

from __future__ import annotations

import threading
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
                isinstance(value, int | torch.SymInt) or isinstance(value, torch.Size | Sequence) and len(value) == 2
                and all(isinstance(v, int | torch.SymInt) and not isinstance(v, bool) for v in value)):
            raise TypeError(f"{op}: {name} must be an int or a pair of ints (got {value!r})")
        result = (value, value) if isinstance(value, int | torch.SymInt) else (value[0], value[1])
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


def pool_geometry(op: str, kernel_size, stride, padding,
                  names: tuple[str, str, str] = ("kernel_size", "stride", "padding")) -> tuple[Pair, Pair, Pair]:
    """Normalize and check pooling parameters; ``stride=None`` means the kernel size.
    ``names``: the arguments' names in the op's signature."""
    kn, sn, pn = names
    k = pair(op, kn, kernel_size, minimum=1)
    s = k if stride is None or (isinstance(stride, Sequence) and len(stride) == 0) else pair(op, sn, stride, minimum=1)
    p = pair(op, pn, padding, minimum=0)
    if k[0] * k[1] > MAX_WINDOW:
        raise ValueError(f"{op}: {kn} {k} has {k[0] * k[1]} elements; switches are one byte, "
                         f"so a window may hold at most {MAX_WINDOW}")
    if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        raise ValueError(f"{op}: {pn} {p} must be at most half of {kn} {k}")
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
    if min(x.shape[1:]) < 1:
        raise ValueError(f"{op}: x must have at least one channel and a positive spatial size (got "
                         f"{list(x.shape)}); only the batch may be empty")
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


def conv_transpose(op: str, y: Tensor, weight, bias, stride, padding, output_padding, groups, dilation,
                   in_size=None):
    """The transposed convolution of ``y`` read at spatial size ``in_size``
    (y's own by default; deconv_step's unpooled map)."""
    in_size = tuple(y.shape[-2:]) if in_size is None else tuple(in_size)
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
    if weight.numel() == 0:
        raise ValueError(f"{op}: weight [C_in, C_out/groups, kH, kW] must have every dimension >= 1 "
                         f"(got {list(weight.shape)})")
    if min(in_size) < 1:
        raise ValueError(f"{op}: the transposed convolution's input must have a positive spatial size "
                         f"(got {list(in_size)})")
    out = [(in_size[i] - 1) * st[i] - 2 * pd[i] + dl[i] * (weight.shape[2 + i] - 1) + op_[i] + 1 for i in range(2)]
    if min(out) < 1:
        raise ValueError(f"{op}: padding {pd} is too large: the output would be {out}")
    return st, pd, op_, groups, dl


def gather_switches(x, switches, kernel_size, stride, padding):
    op = "gather_switches"
    tensor_4d(op, "x", x)
    tensor_4d(op, "switches", switches, floating=False)
    if switches.dtype != torch.uint8:
        raise TypeError(f"{op}: switches must be uint8 (got {_describe(switches)})")
    same_device(op, x=x, switches=switches)
    k, s, p = pool_geometry(op, kernel_size, stride, padding)
    if switches.shape[:2] != x.shape[:2]:
        raise ValueError(f"{op}: switches {list(switches.shape)} must have x's batch and channels "
                         f"{list(x.shape[:2])}")
    pooled = tuple(switches.shape[-2:])
    if not any(tuple(pool_output_size(x.shape[2 + i], k[i], s[i], p[i], ceil) for i in range(2)) == pooled
               for ceil in (False, True)):
        raise ValueError(f"{op}: x of spatial size {list(x.shape[-2:])} cannot be pooled to switches' spatial "
                         f"size {list(pooled)} with kernel_size {k}, stride {s}, padding {p}")
    return k, s, p


def switch_values(op: str, switches: Tensor, input_size, k: Pair, s: Pair, p: Pair) -> None:
    """The CPU backends' rule for switch values: each must point inside its
    window and inside the (unpadded) input, as max pooling records them."""
    if switches.numel() == 0:
        return
    oh = torch.arange(switches.shape[2], device=switches.device).view(-1, 1) * s[0] - p[0]
    ow = torch.arange(switches.shape[3], device=switches.device).view(1, -1) * s[1] - p[1]
    offset = switches.long()
    ih, iw = oh + offset // k[1], ow + offset % k[1]
    bad = (offset >= k[0] * k[1]) | (ih < 0) | (ih >= input_size[0]) | (iw < 0) | (iw >= input_size[1])
    if bool(bad.any()):
        raise ValueError(f"{op}: switches point outside their {k[0]}x{k[1]} window or into the padding of the "
                         f"{input_size[0]}x{input_size[1]} map; they must come from max_pool2d_switches with the "
                         f"same parameters")


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
    k, s, p = pool_geometry(op, pool_kernel_size, pool_stride, pool_padding,
                            names=("pool_kernel_size", "pool_stride", "pool_padding"))
    size = unpooled_size(op, unpooled_size_, y, k, s, p, name="unpooled_size")
    conv = conv_transpose(op, y, weight, bias, stride, padding, output_padding, groups, dilation, in_size=size)
    return (k, s, p, size, *conv)


CHECKERS = {
    "max_pool2d_switches": max_pool2d_switches,
    "unpool2d": unpool2d,
    "gather_switches": gather_switches,
    "relu_conv_transpose2d": relu_conv_transpose2d,
    "deconv_step": deconv_step,
}


# The call whose arguments the Python API has checked: (op, arguments), per thread.
_passed = threading.local()


def passing_on(name: str | None, args: tuple = ()) -> None:
    """Record that the registered op ``name`` is about to be called with
    ``args``, which the Python API has checked (``None``: clear the record).
    ``backend_choice.run`` sets it around the op's call and clears it after."""
    _passed.call = None if name is None else (name, args)


def _same_arguments(checked: tuple, args: tuple) -> bool:
    """The arguments the op was handed: the same tensors (objects), the same
    other values (a list where the API passed a tuple)."""
    if len(checked) != len(args):
        return False
    for a, b in zip(checked, args):
        if a is b:
            continue
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            return False
        if isinstance(a, tuple | list) and isinstance(b, tuple | list):
            a, b = list(a), list(b)
        elif type(a) is not type(b):
            return False
        if a != b:
            return False
    return True


def registered(name: str, *args) -> None:
    """Checks the raw arguments of the registered op ``name`` (its schema's
    order), for the backends that run Python code; skipped, once, for the
    arguments the Python API checked and handed to this op (``passing_on``)."""
    passed = getattr(_passed, "call", None)
    if passed is not None:
        _passed.call = None  # one call only: whatever the op calls next is checked
        if passed[0] == name and _same_arguments(passed[1], args):
            return
    CHECKERS[name](*args)

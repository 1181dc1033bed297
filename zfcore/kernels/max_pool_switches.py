"""Triton max pooling with one-byte switches.

One program computes BLOCK outputs, flattened in the output's memory order
(NCHW or channels-last), so stores are contiguous; the input is read through its
strides, which covers any layout. Each output walks its window in row-major
order with ATen's rule: the first in-bounds element seeds the slot, a larger
value or a NaN takes it (so ties keep the first maximum and the last NaN wins).
Values are compared in float32 (float64 for float64 input), which is exact.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreted
from .common import acc_dtype, grid_1d, memory_format_of, pool_output_size


@triton.jit
def max_pool_switches_kernel(
    x_ptr, out_ptr, switches_ptr, total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw,
    SH, SW, PH, PW,
    KH: tl.constexpr, KW: tl.constexpr, CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = idx < total
    if CHANNELS_LAST:
        c = idx % C
        rest = idx // C
        ow = rest % OW
        rest = rest // OW
        oh = rest % OH
        n = rest // OH
    else:
        ow = idx % OW
        rest = idx // OW
        oh = rest % OH
        rest = rest // OH
        c = rest % C
        n = rest // C
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    base = x_ptr + n * sxn + c * sxc
    best = tl.full([BLOCK], float("-inf"), ACC)
    offset = tl.zeros([BLOCK], tl.int32)
    seen = tl.zeros([BLOCK], tl.int32)
    for kh in tl.static_range(KH):
        ih = h0 + kh
        row_ok = live & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = w0 + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            v = tl.load(base + ih * sxh + iw * sxw, mask=ok, other=float("-inf")).to(ACC)
            take = ok & ((v > best) | (v != v) | (seen == 0))
            best = tl.where(take, v, best)
            offset = tl.where(take, kh * KW + kw, offset)
            seen = tl.where(ok, 1, seen)
    tl.store(out_ptr + idx, best.to(out_ptr.dtype.element_ty), mask=live)
    tl.store(switches_ptr + idx, offset.to(tl.uint8), mask=live)


def max_pool2d_switches(x: torch.Tensor, kernel_size, stride, padding, ceil_mode: bool, *, launch=None):
    """Launcher; arguments already checked and normalized (pairs of ints)."""
    n, c, h, w = x.shape
    oh, ow = (pool_output_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], ceil_mode) for i in range(2))
    fmt = memory_format_of(x)
    out = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)
    switches = torch.empty((n, c, oh, ow), dtype=torch.uint8, device=x.device, memory_format=fmt)
    total = out.numel()
    if total == 0:
        return out, switches
    block = 256 if not interpreted() else 4096
    kernel = launch(max_pool_switches_kernel) if launch else max_pool_switches_kernel
    kernel[grid_1d(total, block)](
        x, out, switches, total, c, h, w, oh, ow, *x.stride(),
        stride[0], stride[1], padding[0], padding[1],
        KH=kernel_size[0], KW=kernel_size[1], CHANNELS_LAST=fmt == torch.channels_last,
        ACC=acc_dtype(x.dtype), BLOCK=block, num_warps=4,
    )
    return out, switches

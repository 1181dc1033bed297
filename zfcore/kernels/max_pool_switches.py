"""Triton max pooling with one-byte switches.

One program computes a tile of outputs (zfcore/kernels/tiles.py: a 2-D tile of
one plane for NCHW, pixels x channels for channels-last), stored contiguously
in the output's layout; the input is read through its strides, which covers any
layout. Each output walks its window in row-major order with ATen's rule: the
first in-bounds element seeds the slot, a larger value or a NaN takes it (so
ties keep the first maximum and the last NaN wins). Values are compared in
float32 (float64 for float64 input), which is exact.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import memory_format_of, pool_output_size
from .tiles import needs_64bit, plane_grid, plane_tile, tile_coords, tile_kwargs, tile_warps


@triton.jit
def max_pool_switches_kernel(
    x_ptr, out_ptr, switches_ptr, N, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw,
    SH, SW, PH, PW,
    KH: tl.constexpr, KW: tl.constexpr, CHANNELS_LAST: tl.constexpr, BIG: tl.constexpr, FP64: tl.constexpr,
    BLOCK_PL: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32  # accumulation type
    n, c, oh, ow, live, offset = tile_coords(N, C, OH, OW, CHANNELS_LAST, BIG, BLOCK_PL, BLOCK_H, BLOCK_W, BLOCK_P,
                                             BLOCK_C)
    base = x_ptr + n * sxn + c * sxc
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    best = tl.full(live.shape, float("-inf"), ACC)
    switch = tl.zeros(live.shape, tl.int32)
    seen = tl.zeros(live.shape, tl.int32)
    for kh in tl.static_range(KH):
        ih = h0 + kh
        row_ok = live & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = w0 + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            v = tl.load(base + ih * sxh + iw * sxw, mask=ok, other=float("-inf")).to(ACC)
            take = ok & ((v > best) | (v != v) | (seen == 0))
            best = tl.where(take, v, best)
            switch = tl.where(take, kh * KW + kw, switch)
            seen = tl.where(ok, 1, seen)
    tl.store(out_ptr + offset, best.to(out_ptr.dtype.element_ty), mask=live)
    tl.store(switches_ptr + offset, switch.to(tl.uint8), mask=live)


def max_pool2d_switches(x: torch.Tensor, kernel_size, stride, padding, ceil_mode: bool, *, launch=None):
    """Launcher; arguments already checked and normalized (pairs of ints)."""
    n, c, h, w = x.shape
    oh, ow = (pool_output_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], ceil_mode) for i in range(2))
    fmt = memory_format_of(x)
    out = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)
    switches = torch.empty((n, c, oh, ow), dtype=torch.uint8, device=x.device, memory_format=fmt)
    if out.numel() == 0:
        return out, switches
    channels_last = fmt == torch.channels_last
    tile = plane_tile(n, oh, ow, channels_last, c)
    kernel = launch(max_pool_switches_kernel) if launch else max_pool_switches_kernel
    kernel[plane_grid(n, c, oh, ow, tile)](
        x, out, switches, n, c, h, w, oh, ow, *x.stride(),
        stride[0], stride[1], padding[0], padding[1],
        KH=kernel_size[0], KW=kernel_size[1], CHANNELS_LAST=channels_last, BIG=needs_64bit(x, out),
        FP64=x.dtype == torch.float64, **tile_kwargs(tile), num_warps=tile_warps(tile),
    )
    return out, switches

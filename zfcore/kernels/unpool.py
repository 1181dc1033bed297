"""Triton unpooling (the transpose of max pooling) and its transpose, the gather
through the switches.

Unpooling is a gather, not a scatter: each input position visits the at most
ceil(kh/sh) x ceil(kw/sw) windows that cover it, in row-major window order, and
adds the value of each window whose switch points at it. That is the order
ATen's max-pool backward adds in, so float32 results are bit-identical to it,
and they are the same on every run (no atomics). A switch that points outside
its window or into padding matches no position: its value is dropped, nothing
is written out of bounds (the C++ CPU backend reports such switches as errors).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import memory_format_of
from .rounding import downcast, emulate_rtne
from .tiles import needs_64bit, plane_grid, plane_tile, tile_coords, tile_kwargs, tile_warps


@triton.jit
def unpooled_at(y_base, sw_base, h, w, live, OH, OW, syh, syw, ssh, ssw, SH, SW, PH, PW,
                KH: tl.constexpr, KW: tl.constexpr, ACC: tl.constexpr):
    """The unpooled value at positions (h, w) of one plane per lane: the sum,
    in row-major window order, of the windows whose switch points there."""
    WH: tl.constexpr = (KH + SH - 1) // SH
    WW: tl.constexpr = (KW + SW - 1) // SW
    hp = h + PH
    wp = w + PW
    lo_h = tl.where(hp < KH, 0, (hp - KH) // SH + 1)
    hi_h = tl.minimum(hp // SH + 1, OH)
    lo_w = tl.where(wp < KW, 0, (wp - KW) // SW + 1)
    hi_w = tl.minimum(wp // SW + 1, OW)
    acc = tl.zeros(h.shape, ACC)
    for i in tl.static_range(WH):
        oh = lo_h + i
        ok_h = live & (oh < hi_h)
        for j in tl.static_range(WW):
            ow = lo_w + j
            ok = ok_h & (ow < hi_w)
            s = tl.load(sw_base + oh * ssh + ow * ssw, mask=ok, other=0).to(tl.int32)
            hit = ok & (s == (hp - oh * SH) * KW + (wp - ow * SW))
            acc += tl.load(y_base + oh * syh + ow * syw, mask=hit, other=0.0).to(ACC)
    return acc


@triton.jit
def unpool_kernel(
    y_ptr, sw_ptr, out_ptr, N, C, H, W, OH, OW,
    syn, syc, syh, syw, ssn, ssc, ssh, ssw,
    SH: tl.constexpr, SW: tl.constexpr, PH, PW,
    KH: tl.constexpr, KW: tl.constexpr, CHANNELS_LAST: tl.constexpr, BIG: tl.constexpr, FP64: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
    BLOCK_PL: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32  # accumulation type
    n, c, h, w, live, offset = tile_coords(N, C, H, W, CHANNELS_LAST, BIG, BLOCK_PL, BLOCK_H, BLOCK_W, BLOCK_P,
                                           BLOCK_C)
    y_base = y_ptr + n * syn + c * syc
    sw_base = sw_ptr + n * ssn + c * ssc
    h = tl.broadcast_to(h, live.shape)  # one lane per output element
    w = tl.broadcast_to(w, live.shape)
    acc = unpooled_at(y_base, sw_base, h, w, live, OH, OW, syh, syw, ssh, ssw, SH, SW, PH, PW, KH, KW, ACC)
    tl.store(out_ptr + offset, downcast(acc, out_ptr.dtype.element_ty, EMULATE_RTNE), mask=live)


@triton.jit
def gather_switches_kernel(
    x_ptr, sw_ptr, out_ptr, N, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, ssn, ssc, ssh, ssw,
    SH, SW, PH, PW,
    KH: tl.constexpr, KW: tl.constexpr, CHANNELS_LAST: tl.constexpr, BIG: tl.constexpr,
    BLOCK_PL: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    n, c, oh, ow, live, offset = tile_coords(N, C, OH, OW, CHANNELS_LAST, BIG, BLOCK_PL, BLOCK_H, BLOCK_W, BLOCK_P,
                                             BLOCK_C)
    s = tl.load(sw_ptr + n * ssn + c * ssc + oh * ssh + ow * ssw, mask=live, other=0).to(tl.int32)
    h = oh * SH - PH + s // KW
    w = ow * SW - PW + s % KW
    ok = live & (s < KH * KW) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    v = tl.load(x_ptr + n * sxn + c * sxc + h * sxh + w * sxw, mask=ok, other=0.0)
    tl.store(out_ptr + offset, v, mask=live)


def unpool2d(y: torch.Tensor, switches: torch.Tensor, kernel_size, stride, padding, output_size, *, launch=None):
    """Launcher; arguments already checked and normalized."""
    n, c, oh, ow = y.shape
    h, w = (int(v) for v in output_size)
    fmt = memory_format_of(y)
    out = torch.empty((n, c, h, w), dtype=y.dtype, device=y.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    if oh * ow == 0:
        return out.zero_()
    channels_last = fmt == torch.channels_last
    tile = plane_tile(n, h, w, channels_last, c)
    kernel = launch(unpool_kernel) if launch else unpool_kernel
    kernel[plane_grid(n, c, h, w, tile)](
        y, switches, out, n, c, h, w, oh, ow, *y.stride(), *switches.stride(),
        stride[0], stride[1], padding[0], padding[1],
        KH=kernel_size[0], KW=kernel_size[1], CHANNELS_LAST=channels_last, BIG=needs_64bit(y, switches, out),
        FP64=y.dtype == torch.float64, EMULATE_RTNE=emulate_rtne(y.dtype),
        **tile_kwargs(tile), num_warps=tile_warps(tile),
    )
    return out


def gather_switches(x: torch.Tensor, switches: torch.Tensor, kernel_size, stride, padding, *, launch=None):
    """Launcher; the value of ``x`` at each window's switch."""
    n, c, h, w = x.shape
    oh, ow = switches.shape[-2:]
    fmt = memory_format_of(x)
    out = torch.empty(switches.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    channels_last = fmt == torch.channels_last
    tile = plane_tile(n, oh, ow, channels_last, c)
    kernel = launch(gather_switches_kernel) if launch else gather_switches_kernel
    kernel[plane_grid(n, c, oh, ow, tile)](
        x, switches, out, n, c, h, w, oh, ow, *x.stride(), *switches.stride(),
        stride[0], stride[1], padding[0], padding[1],
        KH=kernel_size[0], KW=kernel_size[1], CHANNELS_LAST=channels_last, BIG=needs_64bit(x, switches, out),
        **tile_kwargs(tile), num_warps=tile_warps(tile),
    )
    return out

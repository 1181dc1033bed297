"""Tiling shared by the elementwise-over-windows Triton kernels (pooling,
unpooling, the gather): which tile shape to launch and the grid.

NCHW maps are tiled in 2-D over one plane, BLOCK_H x BLOCK_W outputs, with the
plane (n, c) on the grid's first axis: lanes find their row and column without
a division, and each row of a tile is contiguous (in Triton's CPU interpreter,
whose cost is per program, a tile spans BLOCK_PL planes). Channels-last maps are tiled
as BLOCK_P pixels x BLOCK_C channels of one image: the channels are contiguous,
and the one division per pixel (row, column) is shared by the tile's channels.
Offsets inside one image are 32-bit; the image's base offset is 64-bit, and an
image of 2^31 elements or more switches the lanes to 64-bit offsets (``BIG``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreted

_INT32_LIMIT = 2**31 - 1


def needs_64bit(*tensors: torch.Tensor) -> bool:
    """Whether an in-image offset of any tensor can exceed 32 bits."""
    for t in tensors:
        if t.dim() == 4 and sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:])) \
                + max(t.shape[1:], default=0) > _INT32_LIMIT:
            return True
    return False


def plane_tile(n: int, h: int, w: int, channels_last: bool, c: int) -> dict:
    """Tile shape (constexpr kwargs) for an [n, c, h, w] output map."""
    if channels_last:
        block_c = min(64, triton.next_power_of_2(max(c, 1)))
        elements = 4096 if interpreted() else 512  # the interpreter pays per program: large tiles there
        return {"BLOCK_P": max(1, elements // block_c), "BLOCK_C": block_c}
    block_w = min(64, triton.next_power_of_2(max(w, 1)))
    block_h = max(1, min(triton.next_power_of_2(max(h, 1)), 512 // block_w))
    planes = 1
    if interpreted():  # several small planes per program in the interpreter
        planes = max(1, min(triton.next_power_of_2(max(n * c, 1)), 4096 // (block_h * block_w)))
    return {"BLOCK_PL": planes, "BLOCK_H": block_h, "BLOCK_W": block_w}


def tile_warps(tile: dict) -> int:
    """Warps for a tile: about four elements per thread, one to four warps."""
    elements = 1
    for size in tile.values():
        elements *= size
    return max(1, min(4, elements // 128))


def plane_grid(n: int, c: int, h: int, w: int, tile: dict) -> tuple[int, int, int]:
    """Grid over the tiles of an [n, c, h, w] output (see plane_tile)."""
    if "BLOCK_C" in tile:
        return (triton.cdiv(h * w, tile["BLOCK_P"]), triton.cdiv(c, tile["BLOCK_C"]), n)
    return (triton.cdiv(n * c, tile["BLOCK_PL"]), triton.cdiv(h, tile["BLOCK_H"]), triton.cdiv(w, tile["BLOCK_W"]))


def tile_kwargs(tile: dict) -> dict:
    """Every tile constexpr of the kernels, 1 where this layout does not use it."""
    return {"BLOCK_PL": 1, "BLOCK_H": 1, "BLOCK_W": 1, "BLOCK_P": 1, "BLOCK_C": 1, **tile}


@triton.jit
def tile_coords(N, C, OH, OW, CHANNELS_LAST: tl.constexpr, BIG: tl.constexpr, BLOCK_PL: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of an [N, C, OH, OW] map: (n, c, rows, cols, live,
    offset into the map stored contiguously in its layout), to be broadcast
    together. NCHW: a [BLOCK_PL, BLOCK_H, BLOCK_W] block of BLOCK_PL planes (one
    on a GPU); channels-last: [BLOCK_P pixels, BLOCK_C channels] of one image."""
    if CHANNELS_LAST:
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)[:, None]
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        if BIG:
            p = p.to(tl.int64)
            c = c.to(tl.int64)
        n = tl.program_id(2).to(tl.int64)
        rows = p // OW
        cols = p % OW
        live = (p < OH * OW) & (c < C)
        offset = n * OH * OW * C + p * C + c
    else:
        plane = tl.program_id(0) * BLOCK_PL + tl.arange(0, BLOCK_PL)[:, None, None]
        n = (plane // C).to(tl.int64)
        c = plane % C
        rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[None, :, None]
        cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, None, :]
        if BIG:
            rows = rows.to(tl.int64)
            cols = cols.to(tl.int64)
            c = c.to(tl.int64)
        live = (plane < N * C) & (rows < OH) & (cols < OW)
        offset = plane.to(tl.int64) * OH * OW + rows * OW + cols
    return n, c, rows, cols, live, offset

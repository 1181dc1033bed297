"""Rounding to the output type, the same on the GPU and in Triton's interpreter.

On the GPU ``x.to(tl.bfloat16)`` rounds to nearest even. Triton 3.6's CPU
interpreter truncates instead, so under TRITON_INTERPRET=1 the launchers ask for
the rounding to be done here, on the bits (``EMULATE_RTNE``), and the interpreted
kernels round exactly as the compiled ones do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreted


@triton.jit
def downcast(x, DTYPE: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    if EMULATE_RTNE:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        y = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x != x, x.to(DTYPE), y)
    else:
        return x.to(DTYPE)


def emulate_rtne(dtype: torch.dtype) -> bool:
    """Whether kernels storing ``dtype`` must round on the bits (interpreter, bfloat16)."""
    return dtype == torch.bfloat16 and interpreted()

"""Triton ReLU + transposed convolution as an implicit GEMM.

``out[n, co, oh, ow] = bias[co] + sum over (ci, kh, kw) of relu(y[n, ci, ih, iw]) *
weight[ci, co, kh, kw]`` where ``oh = ih * stride - padding + kh * dilation``.
Outputs are split by phase (oh mod stride, ow mod stride): inside one phase every
output pixel sees the same filter taps, so each program runs a dense GEMM of
[pixels x input channels] by [input channels x output channels] per tap, with no
multiplications by the zeros a strided transposed convolution would insert. The
ReLU is applied as the input tile is loaded (``where(y < 0, 0, y)``, which keeps
NaN as ``F.relu`` does); the rectified map is never written.

With ``THROUGH_SWITCHES`` the input tile is instead the unpooled map of a
pooled signal, computed on load through the switches (zfcore/kernels/unpool.py):
that is ``deconv_step``, which never writes the unpooled map either.

float32 products are IEEE float32 unless tf32 is allowed
(``torch.backends.cuda.matmul.allow_tf32``); float16/bfloat16 multiply in their
type and accumulate in float32; float64 accumulates in float64 without tensor cores.
(Triton's CPU interpreter gets bfloat16 products wrong, so there bfloat16 tiles
are widened to float32 first: the products are exact either way; and it
truncates on conversion to bfloat16, see zfcore/kernels/rounding.py.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreted
from .common import conv_transpose_output_size, memory_format_of
from .rounding import downcast, emulate_rtne
from .tiles import needs_64bit
from .unpool import unpooled_at


@triton.jit
def conv_transpose_kernel(
    y_ptr, sw_ptr, w_ptr, b_ptr, out_ptr,
    N, H, W, OH, OW, OHP, OWP, CIN_G, COUT_G, N_TILES,
    syn, syc, syh, syw, ssn, ssc, ssh, ssw,
    swi, swo, swh, sww, son, soc, soh, sow,
    SH, SW, PH, PW, DH, DW, KH, KW,
    # the pooling read through the switches (THROUGH_SWITCHES only)
    POH, POW, PPH, PPW,
    PSH: tl.constexpr, PSW: tl.constexpr, PKH: tl.constexpr, PKW: tl.constexpr,
    THROUGH_SWITCHES: tl.constexpr, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, FP64: tl.constexpr, EMULATE_RTNE: tl.constexpr, BIG: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if FP64 else tl.float32  # accumulation type
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    rh = phase // SW
    rw = phase % SW
    group = pid_n // N_TILES
    co = (pid_n % N_TILES) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < COUT_G

    if BIG:
        m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    else:  # 32-bit lane arithmetic; images' base offsets stay 64-bit below
        m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    j = m % OWP
    i = (m // OWP) % OHP
    n = m // (OWP * OHP)
    oh = rh + SH * i
    ow = rw + SW * j
    m_ok = (n < N) & (oh < OH) & (ow < OW)

    ci0 = group * CIN_G
    n64 = n.to(tl.int64)
    y_base = y_ptr + n64 * syn
    sw_base = sw_ptr + n64 * ssn
    acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    for kh in range(KH):
        th = rh + PH - kh * DH
        if th % SH == 0:
            ih = i + th // SH
            h_ok = m_ok & (ih >= 0) & (ih < H)
            for kw in range(KW):
                tw = rw + PW - kw * DW
                if tw % SW == 0:
                    iw = j + tw // SW
                    a_ok = h_ok & (iw >= 0) & (iw < W)
                    for c0 in range(0, CIN_G, BLOCK_K):
                        ck = c0 + tl.arange(0, BLOCK_K)
                        ck_ok = ck < CIN_G
                        ch = ci0 + ck
                        mask = a_ok[:, None] & ck_ok[None, :]
                        if THROUGH_SWITCHES:
                            hh = tl.broadcast_to(ih[:, None], [BLOCK_M, BLOCK_K])
                            ww = tl.broadcast_to(iw[:, None], [BLOCK_M, BLOCK_K])
                            a = unpooled_at(y_base[:, None] + ch[None, :] * syc, sw_base[:, None] + ch[None, :] * ssc,
                                            hh, ww, mask, POH, POW, syh, syw, ssh, ssw, PSH, PSW, PPH, PPW,
                                            PKH, PKW, ACC)
                            a = downcast(tl.where(a < 0, 0.0, a), w_ptr.dtype.element_ty, EMULATE_RTNE)
                        else:
                            a = tl.load(y_base[:, None] + ch[None, :] * syc + (ih * syh + iw * syw)[:, None],
                                        mask=mask, other=0.0)
                            a = tl.where(a < 0, 0.0, a).to(w_ptr.dtype.element_ty)
                        b = tl.load(w_ptr + ch[:, None] * swi + co[None, :] * swo + kh * swh + kw * sww,
                                    mask=ck_ok[:, None] & co_ok[None, :], other=0.0)
                        if UPCAST:
                            acc = tl.dot(a.to(ACC), b.to(ACC), acc, input_precision="ieee", out_dtype=ACC)
                        elif USE_DOT:
                            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
                        else:
                            acc += tl.sum(a.to(ACC)[:, :, None] * b.to(ACC)[None, :, :], axis=1)
    cout = group * COUT_G + co
    if HAS_BIAS:
        acc += tl.load(b_ptr + cout, mask=co_ok, other=0.0).to(ACC)[None, :]
    out = out_ptr + (n64 * son + oh * soh + ow * sow)[:, None] + cout[None, :] * soc
    tl.store(out, downcast(acc, out_ptr.dtype.element_ty, EMULATE_RTNE), mask=m_ok[:, None] & co_ok[None, :])


def _pow2_clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(int(v), 1))))


def launch_conv_transpose(y, switches, weight, bias, in_size, stride, padding, output_padding, groups, dilation,
                          pool=None, *, launch=None):
    """Shared launcher of relu_conv_transpose2d (``switches is None``) and
    deconv_step (``pool = (kernel, stride, padding)`` of the pooling read through
    ``switches``; ``in_size`` is then the unpooled map's (H, W))."""
    n = y.shape[0]
    h, w = in_size
    cin_g, cout_g = weight.shape[0] // groups, weight.shape[1]
    kh, kw = weight.shape[2:]
    oh, ow = (conv_transpose_output_size(in_size[i], weight.shape[2 + i], stride[i], padding[i], output_padding[i],
                                         dilation[i]) for i in range(2))
    out = torch.empty((n, cout_g * groups, oh, ow), dtype=y.dtype, device=y.device,
                      memory_format=memory_format_of(y))
    if out.numel() == 0:
        return out
    if y.numel() == 0 or cin_g == 0:
        out.zero_()
        return out.add_(bias.view(1, -1, 1, 1)) if bias is not None else out

    use_dot = y.dtype != torch.float64
    if y.dtype == torch.float32:
        precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    else:
        precision = "ieee"
    if interpreted():  # the interpreter's cost is per program: few, large tiles
        block_m, block_n, block_k = 256, _pow2_clamp(cout_g, 16, 64), _pow2_clamp(cin_g, 16, 64)
    elif use_dot:
        # Through the switches each input element costs a few loads and compares
        # (the covering windows): a narrower K slice keeps it in registers.
        block_k = _pow2_clamp(cin_g, 16, 16 if switches is not None else 32)
        block_m, block_n = 64, _pow2_clamp(cout_g, 16, 64)
    else:
        block_m, block_n, block_k = 32, _pow2_clamp(cout_g, 1, 16), _pow2_clamp(cin_g, 1, 8)
    ohp, owp = triton.cdiv(oh, stride[0]), triton.cdiv(ow, stride[1])
    n_tiles = triton.cdiv(cout_g, block_n)
    grid = (triton.cdiv(n * ohp * owp, block_m), groups * n_tiles, stride[0] * stride[1])
    if switches is None:
        sw, sw_strides, pooled, pool = y, (0, 0, 0, 0), (0, 0), ((1, 1), (1, 1), (0, 0))
    else:
        sw, sw_strides, pooled = switches, switches.stride(), y.shape[-2:]
    (pkh, pkw), (psh, psw), (pph, ppw) = pool
    kernel = launch(conv_transpose_kernel) if launch else conv_transpose_kernel
    kernel[grid](
        y, sw, weight, bias if bias is not None else weight, out,
        n, h, w, oh, ow, ohp, owp, cin_g, cout_g, n_tiles,
        *y.stride(), *sw_strides, *weight.stride(), *out.stride(),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], kh, kw,
        pooled[0], pooled[1], pph, ppw,
        PSH=psh, PSW=psw, PKH=pkh, PKW=pkw,
        THROUGH_SWITCHES=switches is not None, HAS_BIAS=bias is not None, USE_DOT=use_dot,
        UPCAST=interpreted() and y.dtype == torch.bfloat16,
        PRECISION=precision, FP64=y.dtype == torch.float64, EMULATE_RTNE=emulate_rtne(y.dtype),
        BIG=needs_64bit(y, out) or n * ohp * owp + block_m > 2**31 - 1,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=8 if switches is not None and y.dtype == torch.float32 else 4,
    )
    return out


def relu_conv_transpose2d(y, weight, bias, stride, padding, output_padding, groups, dilation, *, launch=None):
    """Launcher; arguments already checked and normalized."""
    return launch_conv_transpose(y, None, weight, bias, y.shape[-2:], stride, padding, output_padding, groups,
                                 dilation, launch=launch)

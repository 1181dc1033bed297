// The direct CUDA kernel behind relu_conv_transpose2d and deconv_step: one
// thread per output element, out[n, co, oh, ow] = bias[co] + the sum over input
// channels ci of its group and over the filter taps (kh, kw) that reach it,
// of relu(in[n, ci, ih, iw]) * weight[ci, co, kh, kw], where ih = (oh + padding -
// kh * dilation) / stride when that divides exactly. Only the taps of the
// output's phase are visited: no multiplications by inserted zeros.
//
// `in` is y itself (relu_conv_transpose2d) or, with THROUGH_SWITCHES, the
// unpooled map of a pooled y, computed from the switches as it is read
// (deconv_step): the unpooled map is never written. Accumulates in float
// (double for double).
#pragma once

#include "kernel_common.cuh"

namespace zfcore {
namespace cuda {

struct Conv {
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t cin_g, cout_g;
};

template <typename T, bool CHANNELS_LAST, bool THROUGH_SWITCHES>
__global__ void conv_transpose_kernel(const T* __restrict__ y, const uint8_t* __restrict__ switches,
                                      const T* __restrict__ weight, const T* __restrict__ bias, T* __restrict__ out,
                                      int64_t total, int64_t COUT, int64_t OH, int64_t OW, int64_t H, int64_t W,
                                      Strides ys, Strides ss, Strides ws, Conv cv, int64_t POH, int64_t POW, Pool pool) {
  using A = typename Acc<T>::type;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Position p = decode<CHANNELS_LAST>(idx, COUT, OH, OW);
    const int64_t group = p.c / cv.cout_g, co = p.c % cv.cout_g;
    A acc = bias != nullptr ? to_acc(bias[p.c]) : A(0);
    for (int i = 0; i < cv.kh; ++i) {
      const int64_t th = p.h + cv.ph - int64_t(i) * cv.dh;
      if (th < 0 || th % cv.sh != 0) continue;
      const int64_t ih = th / cv.sh;
      if (ih >= H) continue;
      for (int j = 0; j < cv.kw; ++j) {
        const int64_t tw = p.w + cv.pw - int64_t(j) * cv.dw;
        if (tw < 0 || tw % cv.sw != 0) continue;
        const int64_t iw = tw / cv.sw;
        if (iw >= W) continue;
        for (int64_t k = 0; k < cv.cin_g; ++k) {
          const int64_t ci = group * cv.cin_g + k;
          A v;
          if (THROUGH_SWITCHES) {
            v = unpooled_at(y + p.n * ys.n + ci * ys.c, switches + p.n * ss.n + ci * ss.c, ys, ss, ih, iw, POH, POW,
                            pool);
            // The unpooled map is rounded to T as the composition would store it.
            v = to_acc(from_acc<T>(v));
          } else {
            v = to_acc(y[p.n * ys.n + ci * ys.c + ih * ys.h + iw * ys.w]);
          }
          v = v < A(0) ? A(0) : v;  // relu, keeping NaN as F.relu does
          acc += v * to_acc(weight[ci * ws.n + co * ws.c + i * ws.h + j * ws.w]);
        }
      }
    }
    out[idx] = from_acc<T>(acc);
  }
}

}  // namespace cuda
}  // namespace zfcore

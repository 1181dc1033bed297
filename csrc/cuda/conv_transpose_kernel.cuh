// The direct CUDA kernel behind relu_conv_transpose2d and deconv_step: one
// thread per output element, out[n, co, oh, ow] = bias[co] + the sum over input
// channels ci of its group and over the filter taps (kh, kw) that reach it,
// of relu(in[n, ci, ih, iw]) * weight[ci, co, kh, kw], where ih = (oh + padding -
// kh * dilation) / stride when that divides exactly. Only the taps of the
// output's phase are visited: no multiplications by inserted zeros.
//
// `in` is y itself (relu_conv_transpose2d) or, with THROUGH_SWITCHES, the
// unpooled map of a pooled y, computed from the switches as it is read
// (deconv_step): the unpooled map is never written. The unpooled values are
// summed as the composition would (float, double for double) and rounded to T.
// For float and double the convolution's own sum runs in double and adds the
// bias last, then rounds once: a thread's sequential sum (hundreds to thousands
// of products) in float measured up to 2.2x the RMS error of PyTorch's blocked
// sums on an H200 (whose double rate is half its float rate; on GPUs with weak
// double this kernel is slow, and it is not the automatic choice there either).
// Half types accumulate in float, where their products are exact.
#pragma once

#include <type_traits>

#include "kernel_common.cuh"

namespace zfcore {
namespace cuda {

struct Conv {
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t cin_g, cout_g;
};

template <typename T, bool CHANNELS_LAST, bool THROUGH_SWITCHES, typename I>
__global__ void conv_transpose_kernel(const T* __restrict__ y, const uint8_t* __restrict__ switches,
                                      const T* __restrict__ weight, const T* __restrict__ bias, T* __restrict__ out,
                                      I total, I COUT, I OH, I OW, I H, I W, Strides<I> ys, Strides<I> ss,
                                      Strides<I> ws, Conv cv, I POH, I POW, Pool pool) {
  using A = typename Acc<T>::type;
  for (I idx = blockIdx.x * I(blockDim.x) + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x) {
    const Position<I> p = decode<CHANNELS_LAST>(idx, COUT, OH, OW);
    const I group = p.c / I(cv.cout_g), co = p.c % I(cv.cout_g);
    // The convolution's sum: double for float and double, float for half types.
    using S = std::conditional_t<std::is_same_v<T, float> || std::is_same_v<T, double>, double, A>;
    S acc = S(0);
    for (int i = 0; i < cv.kh; ++i) {
      const I th = p.h + cv.ph - I(i) * cv.dh;
      if (th < 0 || th % cv.sh != 0) continue;
      const I ih = th / cv.sh;
      if (ih >= H) continue;
      for (int j = 0; j < cv.kw; ++j) {
        const I tw = p.w + cv.pw - I(j) * cv.dw;
        if (tw < 0 || tw % cv.sw != 0) continue;
        const I iw = tw / cv.sw;
        if (iw >= W) continue;
        for (I k = 0; k < I(cv.cin_g); ++k) {
          const I ci = group * I(cv.cin_g) + k;
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
          const A wv = to_acc(weight[ci * ws.n + co * ws.c + i * ws.h + j * ws.w]);
          acc += static_cast<S>(v) * static_cast<S>(wv);
        }
      }
    }
    if (bias != nullptr) acc += static_cast<S>(to_acc(bias[p.c]));
    out[idx] = from_acc<T>(static_cast<A>(acc));
  }
}

}  // namespace cuda
}  // namespace zfcore

// Kernels-only build: every (T, CL, I) variant with THROUGH_SWITCHES = `through`.
#define ZFCORE_INSTANTIATE_CONV_TRANSPOSE(through)                                                           \
  ZFCORE_INSTANTIATE_ALL(ZFCORE_INSTANTIATE_CONV_TRANSPOSE_##through)
#define ZFCORE_INSTANTIATE_CONV_TRANSPOSE_ONE(T, CL, I, THROUGH)                                             \
  template __global__ void zfcore::cuda::conv_transpose_kernel<T, CL, THROUGH, I>(                            \
      const T*, const uint8_t*, const T*, const T*, T*, I, I, I, I, I, I, zfcore::cuda::Strides<I>,           \
      zfcore::cuda::Strides<I>, zfcore::cuda::Strides<I>, zfcore::cuda::Conv, I, I, zfcore::cuda::Pool);
#define ZFCORE_INSTANTIATE_CONV_TRANSPOSE_true(T, CL, I) ZFCORE_INSTANTIATE_CONV_TRANSPOSE_ONE(T, CL, I, true)
#define ZFCORE_INSTANTIATE_CONV_TRANSPOSE_false(T, CL, I) ZFCORE_INSTANTIATE_CONV_TRANSPOSE_ONE(T, CL, I, false)

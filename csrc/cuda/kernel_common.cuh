// Device helpers shared by the CUDA kernels of csrc/cuda. Nothing here needs
// torch: CMakeLists.txt compiles the kernels alone with nvcc (ZFCORE_KERNELS_ONLY)
// as a build check, for float, double, __half and __nv_bfloat16; the torch build
// instantiates them for float, double, c10::Half and c10::BFloat16.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace zfcore {
namespace cuda {

// Accumulation type: double for double, float for everything else. Comparisons
// of widened half values are exact; sums round once, at the store.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ typename Acc<T>::type to_acc(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <>
__device__ __forceinline__ float to_acc<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// Round to the storage type (to nearest even).
template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Coordinates of a flat index of an [N, C, H, W] tensor stored NCHW or NHWC.
// Index arithmetic runs in I: int32_t when every offset of the launch fits (the
// launchers check; 64-bit division costs several times the 32-bit one), else
// int64_t.
template <typename I>
struct Position {
  I n, c, h, w;
};

template <bool CHANNELS_LAST, typename I>
__device__ __forceinline__ Position<I> decode(I idx, I C, I H, I W) {
  Position<I> p;
  if (CHANNELS_LAST) {
    p.c = idx % C;
    idx /= C;
    p.w = idx % W;
    idx /= W;
    p.h = idx % H;
    p.n = idx / H;
  } else {
    p.w = idx % W;
    idx /= W;
    p.h = idx % H;
    idx /= H;
    p.c = idx % C;
    p.n = idx / C;
  }
  return p;
}

// Strides of a 4-D tensor, in elements.
template <typename I>
struct Strides {
  I n, c, h, w;
};

// The geometry of a max pooling.
struct Pool {
  int kh, kw, sh, sw, ph, pw;
};

// The unpooled value at (h, w) of one plane: the sum, in row-major window
// order (the order of ATen's max-pool backward), of the values of the windows
// whose switch points there. A switch outside its window matches nothing.
template <typename T, typename I>
__device__ __forceinline__ typename Acc<T>::type unpooled_at(const T* __restrict__ y, const uint8_t* __restrict__ sw,
                                                            Strides<I> ys, Strides<I> ss, I h, I w, I OH, I OW,
                                                            Pool g) {
  using A = typename Acc<T>::type;
  const I hp = h + g.ph, wp = w + g.pw;
  const I oh0 = hp < g.kh ? I(0) : (hp - g.kh) / g.sh + 1;
  const I oh1 = min(hp / g.sh + 1, OH);
  const I ow0 = wp < g.kw ? I(0) : (wp - g.kw) / g.sw + 1;
  const I ow1 = min(wp / g.sw + 1, OW);
  A acc = A(0);
  for (I oh = oh0; oh < oh1; ++oh) {
    for (I ow = ow0; ow < ow1; ++ow) {
      const I target = (hp - oh * g.sh) * g.kw + (wp - ow * g.sw);
      if (static_cast<I>(sw[oh * ss.h + ow * ss.w]) == target) {
        acc += to_acc(y[oh * ys.h + ow * ys.w]);
      }
    }
  }
  return acc;
}

// Explicit instantiation of a kernel template for every (T, CHANNELS_LAST, I) in
// the kernels-only build: M(T, CL, I) must expand to one instantiation.
#define ZFCORE_INSTANTIATE_FOR(M, T) M(T, false, int32_t) M(T, true, int32_t) M(T, false, int64_t) M(T, true, int64_t)
#define ZFCORE_INSTANTIATE_ALL(M)                                                                              \
  ZFCORE_INSTANTIATE_FOR(M, float) ZFCORE_INSTANTIATE_FOR(M, double) ZFCORE_INSTANTIATE_FOR(M, __half)         \
  ZFCORE_INSTANTIATE_FOR(M, __nv_bfloat16)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for a grid-stride loop over `total` elements: enough to fill the GPU
// many times over, capped so that the grid's x dimension stays valid.
inline unsigned int blocks_for(int64_t total, int threads) {
  const int64_t blocks = ceil_div(total, threads);
  return static_cast<unsigned int>(blocks < (int64_t(1) << 20) ? (blocks > 0 ? blocks : 1) : (int64_t(1) << 20));
}

}  // namespace cuda
}  // namespace zfcore

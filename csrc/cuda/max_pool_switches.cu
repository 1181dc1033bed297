// max_pool2d_switches on CUDA: one thread per output (grid-stride loop, 64-bit
// indices), outputs in the output's memory order (NCHW or channels-last) so the
// stores coalesce, the input read through its strides (any layout). The window
// is walked in row-major order with ATen's rule: the first in-bounds element
// seeds the slot, a larger value or a NaN takes it, so ties keep the first
// maximum and the last NaN wins; switches are one byte (kh * kw <= 256).
#include "kernel_common.cuh"

namespace zfcore {
namespace cuda {

template <typename T, bool CHANNELS_LAST, typename I>
__global__ void max_pool_switches_kernel(const T* __restrict__ x, T* __restrict__ out, uint8_t* __restrict__ switches,
                                         I total, I C, I H, I W, I OH, I OW, Strides<I> xs, Pool g) {
  using A = typename Acc<T>::type;
  for (I idx = blockIdx.x * I(blockDim.x) + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x) {
    const Position<I> p = decode<CHANNELS_LAST>(idx, C, OH, OW);
    const I h0 = p.h * g.sh - g.ph, w0 = p.w * g.sw - g.pw;
    const T* base = x + p.n * xs.n + p.c * xs.c;
    A best = A(0);
    int offset = 0;
    bool seen = false;
    for (int i = 0; i < g.kh; ++i) {
      const I ih = h0 + i;
      if (ih < 0 || ih >= H) continue;
      for (int j = 0; j < g.kw; ++j) {
        const I iw = w0 + j;
        if (iw < 0 || iw >= W) continue;
        const A v = to_acc(base[ih * xs.h + iw * xs.w]);
        if (!seen || v > best || v != v) {
          best = v;
          offset = i * g.kw + j;
        }
        seen = true;
      }
    }
    out[idx] = from_acc<T>(best);
    switches[idx] = static_cast<uint8_t>(offset);
  }
}

}  // namespace cuda
}  // namespace zfcore

#ifdef ZFCORE_KERNELS_ONLY
#define ZFCORE_INSTANTIATE(T, CL, I)                                                                          \
  template __global__ void zfcore::cuda::max_pool_switches_kernel<T, CL, I>(                                   \
      const T*, T*, uint8_t*, I, I, I, I, I, I, zfcore::cuda::Strides<I>, zfcore::cuda::Pool);
ZFCORE_INSTANTIATE_ALL(ZFCORE_INSTANTIATE)
#undef ZFCORE_INSTANTIATE
#else
#include "launch.h"

namespace zfcore {

std::tuple<at::Tensor, at::Tensor> max_pool2d_switches_cuda(const at::Tensor& x, at::IntArrayRef kernel_size,
                                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                                            bool ceil_mode) {
  const PoolShape shape = check_max_pool2d_switches(x, kernel_size, stride, padding, ceil_mode);
  check_cuda_tensor("max_pool2d_switches", "x", x);
  const PoolGeometry& pg = shape.g;
  const int64_t N = shape.N, C = shape.C, H = shape.H, W = shape.W, OH = shape.OH, OW = shape.OW;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto format = memory_format_of(x);
  auto out = at::empty({N, C, OH, OW}, x.options().memory_format(format));
  auto switches = at::empty({N, C, OH, OW}, x.options().dtype(at::kByte).memory_format(format));
  const int64_t total = out.numel();
  if (total == 0) return {out, switches};
  const cuda::Pool g = cuda::pool_of(pg);
  const int threads = 256;
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_switches_cuda", [&] {
    ZFCORE_DISPATCH_INDEX(cuda::fits_int32({x, out}), [&] {
      auto kernel = cl ? cuda::max_pool_switches_kernel<scalar_t, true, index_t>
                       : cuda::max_pool_switches_kernel<scalar_t, false, index_t>;
      kernel<<<cuda::blocks_for(total, threads), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), switches.mutable_data_ptr<uint8_t>(),
          index_t(total), index_t(C), index_t(H), index_t(W), index_t(OH), index_t(OW),
          cuda::strides_of<index_t>(x), g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, switches};
}

TORCH_LIBRARY_IMPL(zfcore, CUDA, m) { m.impl("max_pool2d_switches", &max_pool2d_switches_cuda); }

}  // namespace zfcore
#endif

// max_pool2d_switches on CUDA: one thread per output (grid-stride loop, 64-bit
// indices), outputs in the output's memory order (NCHW or channels-last) so the
// stores coalesce, the input read through its strides (any layout). The window
// is walked in row-major order with ATen's rule: the first in-bounds element
// seeds the slot, a larger value or a NaN takes it, so ties keep the first
// maximum and the last NaN wins; switches are one byte (kh * kw <= 256).
#include "kernel_common.cuh"

namespace zfcore {
namespace cuda {

template <typename T, bool CHANNELS_LAST>
__global__ void max_pool_switches_kernel(const T* __restrict__ x, T* __restrict__ out, uint8_t* __restrict__ switches,
                                         int64_t total, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
                                         Strides xs, Pool g) {
  using A = typename Acc<T>::type;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Position p = decode<CHANNELS_LAST>(idx, C, OH, OW);
    const int64_t h0 = p.h * g.sh - g.ph, w0 = p.w * g.sw - g.pw;
    const T* base = x + p.n * xs.n + p.c * xs.c;
    A best = A(0);
    int offset = 0;
    bool seen = false;
    for (int i = 0; i < g.kh; ++i) {
      const int64_t ih = h0 + i;
      if (ih < 0 || ih >= H) continue;
      for (int j = 0; j < g.kw; ++j) {
        const int64_t iw = w0 + j;
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
#define ZFCORE_INSTANTIATE(T)                                                                                   \
  template __global__ void zfcore::cuda::max_pool_switches_kernel<T, false>(                                    \
      const T*, T*, uint8_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, zfcore::cuda::Strides,     \
      zfcore::cuda::Pool);                                                                                      \
  template __global__ void zfcore::cuda::max_pool_switches_kernel<T, true>(                                     \
      const T*, T*, uint8_t*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, zfcore::cuda::Strides,     \
      zfcore::cuda::Pool);
ZFCORE_INSTANTIATE(float)
ZFCORE_INSTANTIATE(double)
ZFCORE_INSTANTIATE(__half)
ZFCORE_INSTANTIATE(__nv_bfloat16)
#undef ZFCORE_INSTANTIATE
#else
#include "launch.h"

namespace zfcore {

std::tuple<at::Tensor, at::Tensor> max_pool2d_switches_cuda(const at::Tensor& x, at::IntArrayRef kernel_size,
                                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                                            bool ceil_mode) {
  TORCH_CHECK(x.dim() == 4, "max_pool2d_switches: x must be 4-D [N, C, H, W] (got ", x.dim(), "-D)");
  const PoolGeometry pg = check_pool_geometry("max_pool2d_switches", kernel_size, stride, padding);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = pool_output_size(H, pg.kh, pg.sh, pg.ph, ceil_mode);
  const int64_t OW = pool_output_size(W, pg.kw, pg.sw, pg.pw, ceil_mode);
  TORCH_CHECK(OH > 0 && OW > 0, "max_pool2d_switches: input ", x.sizes(), " is too small for kernel_size ",
              kernel_size);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto format = memory_format_of(x);
  auto out = at::empty({N, C, OH, OW}, x.options().memory_format(format));
  auto switches = at::empty({N, C, OH, OW}, x.options().dtype(at::kByte).memory_format(format));
  const int64_t total = out.numel();
  if (total == 0) return {out, switches};
  const cuda::Pool g = cuda::pool_of(pg);
  const int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_switches_cuda", [&] {
    auto kernel = format == at::MemoryFormat::ChannelsLast ? cuda::max_pool_switches_kernel<scalar_t, true>
                                                           : cuda::max_pool_switches_kernel<scalar_t, false>;
    kernel<<<cuda::blocks_for(total, threads), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), switches.mutable_data_ptr<uint8_t>(), total,
        C, H, W, OH, OW, cuda::strides_of(x), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, switches};
}

TORCH_LIBRARY_IMPL(zfcore, CUDA, m) { m.impl("max_pool2d_switches", &max_pool2d_switches_cuda); }

}  // namespace zfcore
#endif

// unpool2d and gather_switches on CUDA.
//
// unpool2d is a gather: each thread owns one input position and adds, in
// row-major window order, the values of the covering windows whose switch
// points at it (csrc/cuda/kernel_common.cuh: unpooled_at). That is ATen's
// max-pool backward order, so float32 results are equal bit for bit, and no
// two threads write one element: no atomics, the same bits on every run. A
// switch outside its window matches no position and is dropped; nothing is
// written out of bounds (the CPU backend reports such switches as errors).
// gather_switches, unpool's adjoint: out[n, c, oh, ow] = x at the switch (0 where
// a switch points outside x).
#include "kernel_common.cuh"

namespace zfcore {
namespace cuda {

template <typename T, bool CHANNELS_LAST>
__global__ void unpool_kernel(const T* __restrict__ y, const uint8_t* __restrict__ switches, T* __restrict__ out,
                              int64_t total, int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW, Strides ys,
                              Strides ss, Pool g) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Position p = decode<CHANNELS_LAST>(idx, C, H, W);
    out[idx] = from_acc<T>(unpooled_at(y + p.n * ys.n + p.c * ys.c, switches + p.n * ss.n + p.c * ss.c, ys, ss, p.h,
                                       p.w, OH, OW, g));
  }
}

template <typename T, bool CHANNELS_LAST>
__global__ void gather_switches_kernel(const T* __restrict__ x, const uint8_t* __restrict__ switches,
                                       T* __restrict__ out, int64_t total, int64_t C, int64_t H, int64_t W, int64_t OH,
                                       int64_t OW, Strides xs, Strides ss, Pool g) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const Position p = decode<CHANNELS_LAST>(idx, C, OH, OW);
    const int s = switches[p.n * ss.n + p.c * ss.c + p.h * ss.h + p.w * ss.w];
    const int64_t h = p.h * g.sh - g.ph + s / g.kw, w = p.w * g.sw - g.pw + s % g.kw;
    const bool inside = s < g.kh * g.kw && h >= 0 && h < H && w >= 0 && w < W;
    out[idx] = inside ? x[p.n * xs.n + p.c * xs.c + h * xs.h + w * xs.w] : from_acc<T>(0);
  }
}

}  // namespace cuda
}  // namespace zfcore

#ifdef ZFCORE_KERNELS_ONLY
#define ZFCORE_INSTANTIATE(T, CL)                                                                                \
  template __global__ void zfcore::cuda::unpool_kernel<T, CL>(const T*, const uint8_t*, T*, int64_t, int64_t,   \
                                                               int64_t, int64_t, int64_t, int64_t,             \
                                                               zfcore::cuda::Strides, zfcore::cuda::Strides,   \
                                                               zfcore::cuda::Pool);                            \
  template __global__ void zfcore::cuda::gather_switches_kernel<T, CL>(                                          \
      const T*, const uint8_t*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, zfcore::cuda::Strides, \
      zfcore::cuda::Strides, zfcore::cuda::Pool);
#define ZFCORE_INSTANTIATE_BOTH(T) ZFCORE_INSTANTIATE(T, false) ZFCORE_INSTANTIATE(T, true)
ZFCORE_INSTANTIATE_BOTH(float)
ZFCORE_INSTANTIATE_BOTH(double)
ZFCORE_INSTANTIATE_BOTH(__half)
ZFCORE_INSTANTIATE_BOTH(__nv_bfloat16)
#undef ZFCORE_INSTANTIATE_BOTH
#undef ZFCORE_INSTANTIATE
#else
#include "launch.h"

namespace zfcore {

at::Tensor unpool2d_cuda(const at::Tensor& y, const at::Tensor& switches, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_size) {
  TORCH_CHECK(y.dim() == 4, "unpool2d: y must be 4-D [N, C, OH, OW] (got ", y.dim(), "-D)");
  TORCH_CHECK(switches.scalar_type() == at::kByte && switches.sizes() == y.sizes(),
              "unpool2d: switches must be uint8 with the shape of y");
  TORCH_CHECK(output_size.size() == 2, "unpool2d: output_size must have two elements");
  cuda::check_cuda("unpool2d", "switches", switches, y);
  const PoolGeometry pg = check_pool_geometry("unpool2d", kernel_size, stride, padding);
  const int64_t N = y.size(0), C = y.size(1), OH = y.size(2), OW = y.size(3);
  const int64_t H = output_size[0], W = output_size[1];
  TORCH_CHECK(H >= 0 && W >= 0, "unpool2d: output_size must be non-negative");
  const c10::cuda::CUDAGuard guard(y.device());
  const auto format = memory_format_of(y);
  auto out = at::empty({N, C, H, W}, y.options().memory_format(format));
  const int64_t total = out.numel();
  if (total == 0) return out;
  if (OH * OW == 0) return out.zero_();
  const int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "unpool2d_cuda", [&] {
    auto kernel = format == at::MemoryFormat::ChannelsLast ? cuda::unpool_kernel<scalar_t, true>
                                                           : cuda::unpool_kernel<scalar_t, false>;
    kernel<<<cuda::blocks_for(total, threads), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        y.const_data_ptr<scalar_t>(), switches.const_data_ptr<uint8_t>(), out.mutable_data_ptr<scalar_t>(), total, C,
        H, W, OH, OW, cuda::strides_of(y), cuda::strides_of(switches), cuda::pool_of(pg));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor gather_switches_cuda(const at::Tensor& x, const at::Tensor& switches, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(x.dim() == 4 && switches.dim() == 4, "gather_switches: x and switches must be 4-D");
  TORCH_CHECK(switches.scalar_type() == at::kByte, "gather_switches: switches must be uint8");
  TORCH_CHECK(switches.size(0) == x.size(0) && switches.size(1) == x.size(1),
              "gather_switches: switches must have x's batch and channels");
  cuda::check_cuda("gather_switches", "switches", switches, x);
  const PoolGeometry pg = check_pool_geometry("gather_switches", kernel_size, stride, padding);
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3), OH = switches.size(2), OW = switches.size(3);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto format = memory_format_of(x);
  auto out = at::empty(switches.sizes(), x.options().memory_format(format));
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gather_switches_cuda", [&] {
    auto kernel = format == at::MemoryFormat::ChannelsLast ? cuda::gather_switches_kernel<scalar_t, true>
                                                           : cuda::gather_switches_kernel<scalar_t, false>;
    kernel<<<cuda::blocks_for(total, threads), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), switches.const_data_ptr<uint8_t>(), out.mutable_data_ptr<scalar_t>(), total, C,
        H, W, OH, OW, cuda::strides_of(x), cuda::strides_of(switches), cuda::pool_of(pg));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

TORCH_LIBRARY_IMPL(zfcore, CUDA, m) {
  m.impl("unpool2d", &unpool2d_cuda);
  m.impl("gather_switches", &gather_switches_cuda);
}

}  // namespace zfcore
#endif

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

template <typename T, bool CHANNELS_LAST, typename I>
__global__ void unpool_kernel(const T* __restrict__ y, const uint8_t* __restrict__ switches, T* __restrict__ out,
                              I total, I C, I H, I W, I OH, I OW, Strides<I> ys, Strides<I> ss, Pool g) {
  for (I idx = blockIdx.x * I(blockDim.x) + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x) {
    const Position<I> p = decode<CHANNELS_LAST>(idx, C, H, W);
    out[idx] = from_acc<T>(unpooled_at(y + p.n * ys.n + p.c * ys.c, switches + p.n * ss.n + p.c * ss.c, ys, ss, p.h,
                                       p.w, OH, OW, g));
  }
}

template <typename T, bool CHANNELS_LAST, typename I>
__global__ void gather_switches_kernel(const T* __restrict__ x, const uint8_t* __restrict__ switches,
                                       T* __restrict__ out, I total, I C, I H, I W, I OH, I OW, Strides<I> xs,
                                       Strides<I> ss, Pool g) {
  for (I idx = blockIdx.x * I(blockDim.x) + threadIdx.x; idx < total; idx += I(gridDim.x) * blockDim.x) {
    const Position<I> p = decode<CHANNELS_LAST>(idx, C, OH, OW);
    const int s = switches[p.n * ss.n + p.c * ss.c + p.h * ss.h + p.w * ss.w];
    const I h = p.h * g.sh - g.ph + s / g.kw, w = p.w * g.sw - g.pw + s % g.kw;
    const bool inside = s < g.kh * g.kw && h >= 0 && h < H && w >= 0 && w < W;
    out[idx] = inside ? x[p.n * xs.n + p.c * xs.c + h * xs.h + w * xs.w] : from_acc<T>(0);
  }
}

}  // namespace cuda
}  // namespace zfcore

#ifdef ZFCORE_KERNELS_ONLY
#define ZFCORE_INSTANTIATE(T, CL, I)                                                                          \
  template __global__ void zfcore::cuda::unpool_kernel<T, CL, I>(const T*, const uint8_t*, T*, I, I, I, I, I, I,     \
                                                                  zfcore::cuda::Strides<I>, zfcore::cuda::Strides<I>, \
                                                                  zfcore::cuda::Pool);                               \
  template __global__ void zfcore::cuda::gather_switches_kernel<T, CL, I>(                                           \
      const T*, const uint8_t*, T*, I, I, I, I, I, I, zfcore::cuda::Strides<I>, zfcore::cuda::Strides<I>,            \
      zfcore::cuda::Pool);
ZFCORE_INSTANTIATE_ALL(ZFCORE_INSTANTIATE)
#undef ZFCORE_INSTANTIATE
#else
#include "launch.h"

namespace zfcore {

at::Tensor unpool2d_cuda(const at::Tensor& y, const at::Tensor& switches, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_size) {
  const PoolShape shape = check_unpool2d(y, switches, kernel_size, stride, padding, output_size);
  check_cuda_tensor("unpool2d", "y", y);
  const PoolGeometry& pg = shape.g;
  const int64_t N = shape.N, C = shape.C, H = shape.H, W = shape.W, OH = shape.OH, OW = shape.OW;
  const c10::cuda::CUDAGuard guard(y.device());
  const auto format = memory_format_of(y);
  auto out = at::empty({N, C, H, W}, y.options().memory_format(format));
  const int64_t total = out.numel();
  if (total == 0) return out;
  if (OH * OW == 0) return out.zero_();
  const int threads = 256;
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "unpool2d_cuda", [&] {
    ZFCORE_DISPATCH_INDEX(cuda::fits_int32({y, switches, out}), [&] {
      auto kernel = cl ? cuda::unpool_kernel<scalar_t, true, index_t> : cuda::unpool_kernel<scalar_t, false, index_t>;
      kernel<<<cuda::blocks_for(total, threads), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          y.const_data_ptr<scalar_t>(), switches.const_data_ptr<uint8_t>(), out.mutable_data_ptr<scalar_t>(),
          index_t(total), index_t(C), index_t(H), index_t(W), index_t(OH), index_t(OW), cuda::strides_of<index_t>(y),
          cuda::strides_of<index_t>(switches), cuda::pool_of(pg));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor gather_switches_cuda(const at::Tensor& x, const at::Tensor& switches, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding) {
  const PoolShape shape = check_gather_switches(x, switches, kernel_size, stride, padding);
  check_cuda_tensor("gather_switches", "x", x);
  const PoolGeometry& pg = shape.g;
  const int64_t C = shape.C, H = shape.H, W = shape.W, OH = shape.OH, OW = shape.OW;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto format = memory_format_of(x);
  auto out = at::empty(switches.sizes(), x.options().memory_format(format));
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int threads = 256;
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gather_switches_cuda", [&] {
    ZFCORE_DISPATCH_INDEX(cuda::fits_int32({x, switches, out}), [&] {
      auto kernel = cl ? cuda::gather_switches_kernel<scalar_t, true, index_t>
                       : cuda::gather_switches_kernel<scalar_t, false, index_t>;
      kernel<<<cuda::blocks_for(total, threads), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), switches.const_data_ptr<uint8_t>(), out.mutable_data_ptr<scalar_t>(),
          index_t(total), index_t(C), index_t(H), index_t(W), index_t(OH), index_t(OW), cuda::strides_of<index_t>(x),
          cuda::strides_of<index_t>(switches), cuda::pool_of(pg));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(zfcore, CUDA, m) {
  m.impl("unpool2d", &unpool2d_cuda);
  m.impl("gather_switches", &gather_switches_cuda);
}

}  // namespace zfcore
#endif

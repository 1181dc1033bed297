// deconv_step on the CPU: conv_transpose2d(relu(unpool2d(y, switches)), weight, bias).
//
// The measured fastest correct composition on the CPU: one gather pass writes the
// rectified unpooled map (the unpool and the ReLU fused, see unpool.cpp), and
// oneDNN runs the transposed convolution on it. A transposed convolution that
// reads through the switches would skip writing that map, but would give up the
// oneDNN GEMM, which dominates the time at every ZFNet layer (see
// benchmarks/results/cpu.md).
#include <torch/all.h>

#include "unpool.h"

namespace zfcore {
namespace {

at::Tensor deconv_step_cpu(const at::Tensor& y, const at::Tensor& switches, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef pool_kernel_size,
                           at::IntArrayRef pool_stride, at::IntArrayRef pool_padding, at::IntArrayRef unpooled_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                           int64_t groups, at::IntArrayRef dilation) {
  const at::Tensor rectified =
      unpool2d_cpu_impl(y, switches, pool_kernel_size, pool_stride, pool_padding, unpooled_size, true);
  return at::conv_transpose2d(rectified, weight, bias, stride, padding, output_padding, groups, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(zfcore, CPU, m) { m.impl("deconv_step", &deconv_step_cpu); }

}  // namespace zfcore

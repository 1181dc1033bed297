// deconv_step on CUDA: unpool -> ReLU -> transposed convolution in one kernel
// (conv_transpose_kernel.cuh with THROUGH_SWITCHES): each input value of the
// transposed convolution is the unpooled value, computed from the switches as
// it is read; the unpooled map is never written.
#include "conv_transpose_kernel.cuh"

#ifdef ZFCORE_KERNELS_ONLY
ZFCORE_INSTANTIATE_CONV_TRANSPOSE(true)
#else
#include "conv_transpose_launch.h"

namespace zfcore {

at::Tensor deconv_step_cuda(const at::Tensor& y, const at::Tensor& switches, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef pool_kernel_size,
                            at::IntArrayRef pool_stride, at::IntArrayRef pool_padding, at::IntArrayRef unpooled_size,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                            int64_t groups, at::IntArrayRef dilation) {
  const auto checked = check_deconv_step(y, switches, weight, bias, pool_kernel_size, pool_stride, pool_padding,
                                         unpooled_size, stride, padding, output_padding, groups, dilation);
  return cuda::launch_conv_transpose(y, switches, weight, bias, {checked.first.H, checked.first.W}, checked.second,
                                     checked.first.g);
}

TORCH_LIBRARY_IMPL(zfcore, CUDA, m) { m.impl("deconv_step", &deconv_step_cuda); }

}  // namespace zfcore
#endif

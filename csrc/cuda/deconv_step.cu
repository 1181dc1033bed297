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
  const PoolGeometry pg = check_pool_geometry("deconv_step", pool_kernel_size, pool_stride, pool_padding);
  TORCH_CHECK(y.dim() == 4, "deconv_step: y must be 4-D [N, C, OH, OW] (got ", y.dim(), "-D)");
  TORCH_CHECK(switches.scalar_type() == at::kByte && switches.sizes() == y.sizes(),
              "deconv_step: switches must be uint8 with the shape of y ", y.sizes());
  TORCH_CHECK(unpooled_size.size() == 2, "deconv_step: unpooled_size must have two elements");
  cuda::check_cuda("deconv_step", "switches", switches, y);
  return cuda::launch_conv_transpose("deconv_step", y, switches, weight, bias, {unpooled_size[0], unpooled_size[1]},
                                     stride, padding, output_padding, groups, dilation, pg);
}

TORCH_LIBRARY_IMPL(zfcore, CUDA, m) { m.impl("deconv_step", &deconv_step_cuda); }

}  // namespace zfcore
#endif

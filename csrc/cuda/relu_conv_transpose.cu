// relu_conv_transpose2d on CUDA: conv_transpose2d(relu(y), weight, bias) by the
// direct kernel of conv_transpose_kernel.cuh, the ReLU applied as y is read.
#include "conv_transpose_kernel.cuh"

#ifdef ZFCORE_KERNELS_ONLY
ZFCORE_INSTANTIATE_CONV_TRANSPOSE(false)
#else
#include "conv_transpose_launch.h"

namespace zfcore {

at::Tensor relu_conv_transpose2d_cuda(const at::Tensor& y, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                      at::IntArrayRef dilation) {
  const ConvShape conv = check_relu_conv_transpose2d(y, weight, bias, stride, padding, output_padding, groups, dilation);
  return cuda::launch_conv_transpose(y, std::nullopt, weight, bias, {y.size(2), y.size(3)}, conv,
                                     PoolGeometry{1, 1, 1, 1, 0, 0});
}

TORCH_LIBRARY_IMPL(zfcore, CUDA, m) { m.impl("relu_conv_transpose2d", &relu_conv_transpose2d_cuda); }

}  // namespace zfcore
#endif

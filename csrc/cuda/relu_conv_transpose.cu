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
  TORCH_CHECK(y.dim() == 4, "relu_conv_transpose2d: y must be 4-D [N, C, H, W] (got ", y.dim(), "-D)");
  return cuda::launch_conv_transpose("relu_conv_transpose2d", y, std::nullopt, weight, bias, {y.size(2), y.size(3)},
                                     stride, padding, output_padding, groups, dilation, PoolGeometry{1, 1, 1, 1, 0, 0});
}

TORCH_LIBRARY_IMPL(zfcore, CUDA, m) { m.impl("relu_conv_transpose2d", &relu_conv_transpose2d_cuda); }

}  // namespace zfcore
#endif

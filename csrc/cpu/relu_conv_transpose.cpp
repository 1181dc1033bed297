// relu_conv_transpose2d on the CPU: conv_transpose2d(relu(y), weight, bias).
//
// On the CPU the transposed convolution is a GEMM that oneDNN runs faster than
// anything hand-written here, and a GEMM needs its operand packed in memory
// anyway, so the rectified input is formed by one vectorized pass (at::relu) and
// handed to ATen's conv_transpose2d. benchmarks/bench_ops.py measures this
// against the unfused PyTorch composition.
#include <torch/all.h>

#include "../checks.h"

namespace zfcore {
namespace {

at::Tensor relu_conv_transpose2d_cpu(const at::Tensor& y, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                     at::IntArrayRef dilation) {
  check_relu_conv_transpose2d(y, weight, bias, stride, padding, output_padding, groups, dilation);
  // Every backend returns y's layout (ATen's would also follow a channels-last weight).
  return at::conv_transpose2d(at::relu(y), weight, bias, stride, padding, output_padding, groups, dilation)
      .contiguous(memory_format_of(y));
}

}  // namespace

TORCH_LIBRARY_IMPL(zfcore, CPU, m) { m.impl("relu_conv_transpose2d", &relu_conv_transpose2d_cpu); }

}  // namespace zfcore

// Host launcher shared by relu_conv_transpose.cu and deconv_step.cu (torch build).
#pragma once

#include <array>
#include <optional>

#include "conv_transpose_kernel.cuh"
#include "launch.h"

namespace zfcore {
namespace cuda {

// `in_size` is the (H, W) the transposed convolution reads: y's, or the unpooled
// map's when `switches` is given (then `pg` is the pooling read through them).
inline at::Tensor launch_conv_transpose(const char* op, const at::Tensor& y,
                                        const std::optional<at::Tensor>& switches, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, std::array<int64_t, 2> in_size,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef output_padding, int64_t groups, at::IntArrayRef dilation,
                                        const PoolGeometry& pg) {
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (got ", weight.dim(), "-D)");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && output_padding.size() == 2 && dilation.size() == 2, op,
              ": stride, padding, output_padding and dilation must have two elements");
  TORCH_CHECK(groups > 0 && y.size(1) == weight.size(0) && weight.size(0) % groups == 0, op, ": weight ",
              weight.sizes(), " does not fit y ", y.sizes(), " with groups ", groups);
  TORCH_CHECK(weight.scalar_type() == y.scalar_type(), op, ": weight must have y's dtype");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0 && dilation[0] > 0 && dilation[1] > 0, op,
              ": stride and dilation must be positive");
  check_cuda(op, "weight", weight, y);
  const int64_t N = y.size(0), H = in_size[0], W = in_size[1], KH = weight.size(2), KW = weight.size(3);
  const int64_t cin_g = weight.size(0) / groups, cout_g = weight.size(1), COUT = cout_g * groups;
  const int64_t OH = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (KH - 1) + output_padding[0] + 1;
  const int64_t OW = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (KW - 1) + output_padding[1] + 1;
  TORCH_CHECK(OH > 0 && OW > 0, op, ": the transposed convolution's output would be empty");
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor bias_c;
  if (has_bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == COUT, op, ": bias must have ", COUT, " elements");
    check_cuda(op, "bias", *bias, y);
    bias_c = bias->contiguous();
  }
  const c10::cuda::CUDAGuard guard(y.device());
  const auto format = memory_format_of(y);
  auto out = at::empty({N, COUT, OH, OW}, y.options().memory_format(format));
  const int64_t total = out.numel();
  if (total == 0) return out;
  const Conv cv{static_cast<int>(KH),         static_cast<int>(KW),         static_cast<int>(stride[0]),
                static_cast<int>(stride[1]),  static_cast<int>(padding[0]), static_cast<int>(padding[1]),
                static_cast<int>(dilation[0]), static_cast<int>(dilation[1]), cin_g, cout_g};
  const bool through = switches.has_value();
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  const int threads = 256;
  const bool small = through ? fits_int32({y, *switches, weight, out}) : fits_int32({y, weight, out});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "conv_transpose_cuda", [&] {
    ZFCORE_DISPATCH_INDEX(small, [&] {
      auto kernel = through ? (cl ? conv_transpose_kernel<scalar_t, true, true, index_t>
                                  : conv_transpose_kernel<scalar_t, false, true, index_t>)
                            : (cl ? conv_transpose_kernel<scalar_t, true, false, index_t>
                                  : conv_transpose_kernel<scalar_t, false, false, index_t>);
      const Strides<index_t> ss = through ? strides_of<index_t>(*switches) : Strides<index_t>{0, 0, 0, 0};
      kernel<<<blocks_for(total, threads), threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          y.const_data_ptr<scalar_t>(), through ? switches->const_data_ptr<uint8_t>() : nullptr,
          weight.const_data_ptr<scalar_t>(), has_bias ? bias_c.const_data_ptr<scalar_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), index_t(total), index_t(COUT), index_t(OH), index_t(OW), index_t(H),
          index_t(W), strides_of<index_t>(y), ss, strides_of<index_t>(weight), cv, index_t(y.size(2)),
          index_t(y.size(3)), pool_of(pg));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace cuda
}  // namespace zfcore

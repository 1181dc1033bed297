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
// Arguments checked by the caller (check_relu_conv_transpose2d, check_deconv_step).
inline at::Tensor launch_conv_transpose(const at::Tensor& y, const std::optional<at::Tensor>& switches,
                                        const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                        std::array<int64_t, 2> in_size, const ConvShape& conv, const PoolGeometry& pg) {
  check_cuda_tensor(switches.has_value() ? "deconv_step" : "relu_conv_transpose2d", "y", y);
  const int64_t N = y.size(0), H = in_size[0], W = in_size[1], KH = conv.kh, KW = conv.kw;
  const int64_t cin_g = weight.size(0) / conv.groups, cout_g = weight.size(1), COUT = conv.cout;
  const int64_t OH = conv.ho, OW = conv.wo;
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor bias_c;
  if (has_bias) bias_c = bias->contiguous();
  const c10::cuda::CUDAGuard guard(y.device());
  const auto format = memory_format_of(y);
  auto out = at::empty({N, COUT, OH, OW}, y.options().memory_format(format));
  const int64_t total = out.numel();
  if (total == 0) return out;
  const Conv cv{static_cast<int>(KH),      static_cast<int>(KW),      static_cast<int>(conv.sh), static_cast<int>(conv.sw),
                static_cast<int>(conv.ph), static_cast<int>(conv.pw), static_cast<int>(conv.dh), static_cast<int>(conv.dw),
                cin_g,                     cout_g};
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

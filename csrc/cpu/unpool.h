// CPU unpooling entry point shared by unpool.cpp and deconv_step.cpp.
#pragma once

#include <torch/all.h>

namespace zfcore {

// The exact transpose of max pooling (see unpool.cpp); with `relu` the result is
// rectified in the same pass, which is the first half of deconv_step.
at::Tensor unpool2d_cpu_impl(const at::Tensor& y, const at::Tensor& switches, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_size,
                             bool relu);

}  // namespace zfcore

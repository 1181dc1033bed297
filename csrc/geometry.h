// Sizes of pooled, convolved and transposed-convolved maps, and receptive
// fields: the one place the native side computes them (pool_geometry.h,
// checks.h and the CPU and CUDA kernels use these). Plain C++, no torch, so
// tests/test_geometry.py compiles it alone and checks it against
// zfcore/geometry.py, its Python twin, on thousands of random geometries.
//
// PyTorch's rules: a window of k taps d apart spans d * (k - 1) + 1 pixels;
// with ceil_mode a last partial window counts only when it starts inside the
// input or its left padding.
#pragma once

#include <cstdint>

namespace zfcore {
namespace geometry {

// Floor division (rounding towards -inf), as PyTorch's div_rtn and Python's //.
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// The pixels one window spans.
inline int64_t extent(int64_t kernel, int64_t dilation = 1) { return dilation * (kernel - 1) + 1; }

// Output extent of one dimension of max pooling or, with ceil_mode false, of a convolution.
inline int64_t pool_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode,
                                int64_t dilation = 1) {
  const int64_t num = size + 2 * padding - extent(kernel, dilation) + (ceil_mode ? stride - 1 : 0);
  int64_t out = floor_div(num, stride) + 1;
  if (ceil_mode && (out - 1) * stride >= size + padding) --out;
  return out;
}

// Output extent of one dimension of conv2d.
inline int64_t conv_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation = 1) {
  return pool_output_size(size, kernel, stride, padding, false, dilation);
}

// Output extent of one dimension of conv_transpose2d.
inline int64_t conv_transpose_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding,
                                          int64_t output_padding = 0, int64_t dilation = 1) {
  return (size - 1) * stride - 2 * padding + extent(kernel, dilation) + output_padding;
}

// The output_padding that makes conv_transpose2d of a map of output_size (a
// convolution's output) return input_size (its input).
inline int64_t output_padding(int64_t input_size, int64_t output_size, int64_t kernel, int64_t stride,
                              int64_t padding, int64_t dilation = 1) {
  return input_size - conv_transpose_output_size(output_size, kernel, stride, padding, 0, dilation);
}

// One windowed layer composed onto a receptive field: a unit h of the layer's
// input sees input rows offset + h * jump +- (size - 1) / 2; the same for the
// layer's output.
struct ReceptiveField {
  int64_t size, jump;
  double offset;
};

inline ReceptiveField receptive_field_step(const ReceptiveField& rf, int64_t kernel, int64_t stride, int64_t padding,
                                           int64_t dilation = 1) {
  const int64_t span = extent(kernel, dilation);
  return {rf.size + (span - 1) * rf.jump, rf.jump * stride,
          rf.offset + ((span - 1) / 2.0 - static_cast<double>(padding)) * static_cast<double>(rf.jump)};
}

}  // namespace geometry
}  // namespace zfcore

// Argument checks of every zfcore op, one check_* per op, shared by the CPU and
// CUDA launchers: torch.ops.zfcore.* called directly (as an embedding library
// does) is as safe as the Python functions in zfcore/ops, whose checks
// (zfcore/ops/checks.py) run first and only give friendlier messages.
//
// Every message names the op and the argument and says what was expected. Each
// check returns the sizes the launcher needs, all validated; size arithmetic
// that could overflow is done with overflow checks before anything is
// allocated, and no output may hold more than 2^62 bytes.
//
// Switch values are data, not arguments: the CPU kernels check them as they
// read them and raise (a switch outside its window or into the padding, which
// max pooling never records); GPU kernels cannot raise, and such a switch
// contributes nothing there.
#pragma once

#include <c10/util/safe_numerics.h>
#include <torch/all.h>

#include <optional>
#include <string>

#include "pool_geometry.h"

namespace zfcore {

// A pooling as the kernels see it: the geometry, the unpooled (N, C, H, W) and
// the pooled (OH, OW) spatial size.
struct PoolShape {
  PoolGeometry g;
  int64_t N, C, H, W, OH, OW;
};

// A transposed convolution over an input of spatial size (H, W): its parameters
// and its output's channels and spatial size.
struct ConvShape {
  int64_t sh, sw, ph, pw, oph, opw, dh, dw, groups;
  int64_t cout, kh, kw, ho, wo;
};

namespace checks {

// Parameters larger than this are refused before any arithmetic (no window,
// stride or image needs more), so the size formulas below cannot overflow.
constexpr int64_t kMaxParam = int64_t(1) << 30;

inline bool is_floating(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void tensor_4d(const char* op, const char* name, const at::Tensor& t, bool floating = true) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, " must be a defined Tensor");
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-D [N, C, H, W] (got ", t.dim(), "-D ", t.sizes(),
                    ")");
  if (floating) {
    TORCH_CHECK_TYPE(is_floating(t.scalar_type()), op, ": ", name,
                     " must be float32, float64, float16 or bfloat16 (got ", t.scalar_type(), ")");
  }
}

inline void same_device(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                        const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " must be on ", like_name, "'s device ",
                    like.device(), " (got ", t.device(), ")");
}

inline void switches_for(const char* op, const at::Tensor& switches, const char* pooled_name,
                         const at::Tensor& pooled) {
  TORCH_CHECK_VALUE(switches.defined(), op, ": switches must be a defined Tensor");
  TORCH_CHECK_TYPE(switches.scalar_type() == at::kByte, op, ": switches must be uint8 (got ",
                   switches.scalar_type(), ")");
  TORCH_CHECK_VALUE(switches.sizes() == pooled.sizes(), op, ": switches must have the shape of ", pooled_name, " ",
                    pooled.sizes(), " (got ", switches.sizes(), ")");
  same_device(op, "switches", switches, pooled_name, pooled);
}

// A pair of ints, each in [minimum, kMaxParam].
inline void pair(const char* op, const char* name, at::IntArrayRef v, int64_t minimum) {
  TORCH_CHECK_VALUE(v.size() == 2, op, ": ", name, " must have two elements (got ", v, ")");
  TORCH_CHECK_VALUE(v[0] >= minimum && v[1] >= minimum, op, ": ", name, " must be >= ", minimum, " (got ", v,
                    ")");
  TORCH_CHECK_VALUE(v[0] <= kMaxParam && v[1] <= kMaxParam, op, ": ", name, " must be at most ", kMaxParam,
                    " (got ", v, ")");
}

inline PoolGeometry pool_geometry(const char* op, const char* kernel_name, at::IntArrayRef kernel_size,
                                  const char* stride_name, at::IntArrayRef stride, const char* padding_name,
                                  at::IntArrayRef padding) {
  pair(op, kernel_name, kernel_size, 1);
  pair(op, stride_name, stride, 1);
  pair(op, padding_name, padding, 0);
  PoolGeometry g{kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1]};
  TORCH_CHECK_VALUE(g.kh * g.kw <= 256, op, ": ", kernel_name, " ", kernel_size, " has ", g.kh * g.kw,
                    " elements; switches are one byte, so a window may hold at most 256");
  TORCH_CHECK_VALUE(2 * g.ph <= g.kh && 2 * g.pw <= g.kw, op, ": ", padding_name, " ", padding,
                    " must be at most half of ", kernel_name, " ", kernel_size);
  return g;
}

// Throws unless a tensor of these sizes and element size fits in 2^62 bytes.
inline void fits(const char* op, const char* what, std::initializer_list<int64_t> sizes, int64_t element_size) {
  uint64_t total = static_cast<uint64_t>(element_size);
  bool overflow = false;
  for (int64_t s : sizes) overflow |= s < 0 || c10::mul_overflows(total, static_cast<uint64_t>(s), &total);
  TORCH_CHECK_VALUE(!overflow && total <= (uint64_t(1) << 62), op, ": ", what, " would hold more than 2^62 bytes");
}

// Whether `in` pools (floor or ceil mode) to `out` along one dimension.
inline bool pools_to(int64_t in, int64_t k, int64_t s, int64_t p, int64_t out) {
  return in > 0 && (pool_output_size(in, k, s, p, false) == out || pool_output_size(in, k, s, p, true) == out);
}

// The unpooled size given for a pooled tensor of spatial size (OH, OW).
inline void unpooled_size(const char* op, const char* name, at::IntArrayRef size, int64_t OH, int64_t OW,
                          const PoolGeometry& g, const char* kernel_name, const char* stride_name,
                          const char* padding_name) {
  pair(op, name, size, 1);
  TORCH_CHECK_VALUE(pools_to(size[0], g.kh, g.sh, g.ph, OH) && pools_to(size[1], g.kw, g.sw, g.pw, OW), op, ": ",
                    name, " ", size, " cannot be pooled to y's spatial size [", OH, ", ", OW, "] with ", kernel_name,
                    " [", g.kh, ", ", g.kw, "], ", stride_name, " [", g.sh, ", ", g.sw, "], ", padding_name, " [",
                    g.ph, ", ", g.pw, "]");
}

}  // namespace checks

inline PoolShape check_max_pool2d_switches(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, bool ceil_mode) {
  const char* op = "max_pool2d_switches";
  checks::tensor_4d(op, "x", x);
  const PoolGeometry g = checks::pool_geometry(op, "kernel_size", kernel_size, "stride", stride, "padding", padding);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(C >= 1 && H >= 1 && W >= 1, op, ": x must have at least one channel and a positive spatial size "
                    "(got ", x.sizes(), "); only the batch may be empty");
  const int64_t OH = pool_output_size(H, g.kh, g.sh, g.ph, ceil_mode);
  const int64_t OW = pool_output_size(W, g.kw, g.sw, g.pw, ceil_mode);
  TORCH_CHECK_VALUE(OH > 0 && OW > 0, op, ": x of spatial size [", H, ", ", W, "] is too small for kernel_size ",
                    kernel_size, " with padding ", padding);
  checks::fits(op, "x's pooled output", {N, C, OH, OW}, x.element_size());
  return {g, N, C, H, W, OH, OW};
}

// unpool2d's checks; deconv_step's unpooling half uses them too (`op`, and the
// name of the size argument).
inline PoolShape check_unpool2d(const at::Tensor& y, const at::Tensor& switches, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_size,
                                const char* op = "unpool2d", const char* size_name = "output_size",
                                const char* kernel_name = "kernel_size", const char* stride_name = "stride",
                                const char* padding_name = "padding") {
  checks::tensor_4d(op, "y", y);
  checks::switches_for(op, switches, "y", y);
  const PoolGeometry g = checks::pool_geometry(op, kernel_name, kernel_size, stride_name, stride, padding_name,
                                               padding);
  const int64_t N = y.size(0), C = y.size(1), OH = y.size(2), OW = y.size(3);
  checks::unpooled_size(op, size_name, output_size, OH, OW, g, kernel_name, stride_name, padding_name);
  const int64_t H = output_size[0], W = output_size[1];
  checks::fits(op, (std::string(size_name) + "'s unpooled map").c_str(), {N, C, H, W}, y.element_size());
  return {g, N, C, H, W, OH, OW};
}

inline PoolShape check_gather_switches(const at::Tensor& x, const at::Tensor& switches, at::IntArrayRef kernel_size,
                                       at::IntArrayRef stride, at::IntArrayRef padding) {
  const char* op = "gather_switches";
  checks::tensor_4d(op, "x", x);
  checks::tensor_4d(op, "switches", switches, false);
  TORCH_CHECK_TYPE(switches.scalar_type() == at::kByte, op, ": switches must be uint8 (got ", switches.scalar_type(),
                   ")");
  checks::same_device(op, "switches", switches, "x", x);
  const PoolGeometry g = checks::pool_geometry(op, "kernel_size", kernel_size, "stride", stride, "padding", padding);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), OH = switches.size(2),
                OW = switches.size(3);
  TORCH_CHECK_VALUE(switches.size(0) == N && switches.size(1) == C, op, ": switches ", switches.sizes(),
                    " must have x's batch and channels [", N, ", ", C, "]");
  TORCH_CHECK_VALUE(checks::pools_to(H, g.kh, g.sh, g.ph, OH) && checks::pools_to(W, g.kw, g.sw, g.pw, OW), op,
                    ": x of spatial size [", H, ", ", W, "] cannot be pooled to switches' spatial size [", OH, ", ",
                    OW, "] with kernel_size ", kernel_size, ", stride ", stride, ", padding ", padding);
  checks::fits(op, "the output of switches' shape", {N, C, OH, OW}, x.element_size());
  return {g, N, C, H, W, OH, OW};
}

// The transposed convolution of `y` (its channels, device and dtype) read at
// spatial size (H, W): y's own, or deconv_step's unpooled map.
inline ConvShape check_conv_transpose(const char* op, const at::Tensor& y, int64_t H, int64_t W,
                                      const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                                      int64_t groups, at::IntArrayRef dilation) {
  checks::tensor_4d(op, "weight", weight);
  checks::same_device(op, "weight", weight, "y", y);
  TORCH_CHECK_TYPE(weight.scalar_type() == y.scalar_type(), op, ": weight must have y's dtype ", y.scalar_type(),
                   " (got ", weight.scalar_type(), ")");
  TORCH_CHECK_VALUE(groups >= 1 && groups <= checks::kMaxParam, op, ": groups must be a positive int (got ", groups,
                    ")");
  TORCH_CHECK_VALUE(y.size(1) == weight.size(0), op, ": y has ", y.size(1),
                    " channels but weight [C_in, C_out/groups, kH, kW] is ", weight.sizes(),
                    "; weight is the forward convolution's weight");
  TORCH_CHECK_VALUE(weight.size(0) % groups == 0, op, ": groups ", groups, " must divide weight's first dimension ",
                    weight.size(0));
  checks::pair(op, "stride", stride, 1);
  checks::pair(op, "padding", padding, 0);
  checks::pair(op, "output_padding", output_padding, 0);
  checks::pair(op, "dilation", dilation, 1);
  TORCH_CHECK_VALUE(output_padding[0] < std::max(stride[0], dilation[0]) &&
                        output_padding[1] < std::max(stride[1], dilation[1]),
                    op, ": output_padding ", output_padding, " must be smaller than stride ", stride, " or dilation ",
                    dilation);
  const int64_t KH = weight.size(2), KW = weight.size(3);
  TORCH_CHECK_VALUE(weight.numel() > 0 && KH <= checks::kMaxParam && KW <= checks::kMaxParam, op,
                    ": weight [C_in, C_out/groups, kH, kW] must have every dimension >= 1 (got ", weight.sizes(), ")");
  TORCH_CHECK_VALUE(H >= 1 && W >= 1 && H <= checks::kMaxParam && W <= checks::kMaxParam, op,
                    ": the transposed convolution's input must have a positive spatial size (got [", H, ", ", W,
                    "])");
  const int64_t cout = weight.size(1) * groups;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == cout, op, ": bias must be 1-D with ", cout,
                      " elements (got ", bias->sizes(), ")");
    checks::same_device(op, "bias", *bias, "y", y);
    TORCH_CHECK_TYPE(bias->scalar_type() == y.scalar_type(), op, ": bias must have y's dtype ", y.scalar_type(),
                     " (got ", bias->scalar_type(), ")");
  }
  // Every factor is at most 2^30: each product at most 2^60, the sum far below 2^63.
  const int64_t ho = geometry::conv_transpose_output_size(H, KH, stride[0], padding[0], output_padding[0], dilation[0]);
  const int64_t wo = geometry::conv_transpose_output_size(W, KW, stride[1], padding[1], output_padding[1], dilation[1]);
  TORCH_CHECK_VALUE(ho > 0 && wo > 0, op, ": padding ", padding, " is too large: the output would be [", ho, ", ",
                    wo, "]");
  checks::fits(op, "the output of this weight, stride, padding and dilation", {y.size(0), cout, ho, wo},
               y.element_size());
  return {stride[0], stride[1], padding[0], padding[1], output_padding[0], output_padding[1], dilation[0], dilation[1],
          groups, cout, KH, KW, ho, wo};
}

inline ConvShape check_relu_conv_transpose2d(const at::Tensor& y, const at::Tensor& weight,
                                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                             at::IntArrayRef padding, at::IntArrayRef output_padding, int64_t groups,
                                             at::IntArrayRef dilation) {
  const char* op = "relu_conv_transpose2d";
  checks::tensor_4d(op, "y", y);
  return check_conv_transpose(op, y, y.size(2), y.size(3), weight, bias, stride, padding, output_padding, groups,
                              dilation);
}

inline std::pair<PoolShape, ConvShape> check_deconv_step(
    const at::Tensor& y, const at::Tensor& switches, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef unpooled_size, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
    int64_t groups, at::IntArrayRef dilation) {
  const char* op = "deconv_step";
  const PoolShape pool = check_unpool2d(y, switches, pool_kernel_size, pool_stride, pool_padding, unpooled_size, op,
                                        "unpooled_size", "pool_kernel_size", "pool_stride", "pool_padding");
  const ConvShape conv = check_conv_transpose(op, y, pool.H, pool.W, weight, bias, stride, padding, output_padding,
                                              groups, dilation);
  return {pool, conv};
}

}  // namespace zfcore

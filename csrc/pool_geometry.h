// Pooling-window geometry shared by every native backend (CPU and CUDA).
//
// Argument checks: csrc/checks.h.
#pragma once

#include <torch/all.h>

#include <limits>

#include "geometry.h"

namespace zfcore {

// Output extent of one spatial dimension of a max pooling (csrc/geometry.h).
inline int64_t pool_output_size(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  return geometry::pool_output_size(in, k, s, p, ceil_mode);
}

struct PoolGeometry {
  int64_t kh, kw, sh, sw, ph, pw;
};

// True when a 4-D tensor should be computed (and returned) in channels-last
// layout. The Python fake kernels use the same rule.
inline bool use_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format_of(const at::Tensor& t) {
  return use_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Row and column of each one-byte switch offset inside its window, so kernels
// divide by kw only here. Offsets outside the kh x kw window map far outside
// the input, so the bounds check that catches switches into the padding
// catches them too.
struct OffsetTable {
  int64_t dh[256], dw[256];
  explicit OffsetTable(const PoolGeometry& g) {
    for (int64_t o = 0; o < 256; ++o) {
      const bool inside = o < g.kh * g.kw;
      dh[o] = inside ? o / g.kw : std::numeric_limits<int32_t>::min();
      dw[o] = inside ? o % g.kw : 0;
    }
  }
};

}  // namespace zfcore

// Host side of the CUDA launchers (torch build only): includes, and the
// conversions from ATen's view of a tensor to the kernels' plain structs.
#pragma once

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/all.h>
#include <torch/library.h>

#include <cstdlib>
#include <initializer_list>

#include "../checks.h"
#include "kernel_common.cuh"

namespace zfcore {
namespace cuda {

template <typename I>
inline Strides<I> strides_of(const at::Tensor& t) {
  return {I(t.stride(0)), I(t.stride(1)), I(t.stride(2)), I(t.stride(3))};
}

// Whether 32-bit index arithmetic is exact for a launch over these tensors:
// every element offset, and a grid-stride loop's index past the last element,
// stay below 2^31 (with margin: 2^30).
inline bool fits_int32(std::initializer_list<at::Tensor> tensors) {
  for (const at::Tensor& t : tensors) {
    int64_t extent = 1;
    for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * std::abs(t.stride(d));
    if (t.numel() >= (int64_t(1) << 30) || extent >= (int64_t(1) << 30)) return false;
  }
  return true;
}

// Runs the lambda with `index_t` = int32_t or int64_t.
#define ZFCORE_DISPATCH_INDEX(SMALL, ...)   \
  [&] {                                      \
    if (SMALL) {                             \
      using index_t = int32_t;               \
      return __VA_ARGS__();                  \
    } else {                                 \
      using index_t = int64_t;               \
      return __VA_ARGS__();                  \
    }                                        \
  }()

inline Pool pool_of(const PoolGeometry& g) {
  return {static_cast<int>(g.kh), static_cast<int>(g.kw), static_cast<int>(g.sh),
          static_cast<int>(g.sw), static_cast<int>(g.ph), static_cast<int>(g.pw)};
}

}  // namespace cuda

// The dispatcher sends CUDA tensors here; the check that the other tensors are
// on the same device is in csrc/checks.h.
inline void check_cuda_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": ", name, " must be a CUDA tensor (got ", t.device(), ")");
}

}  // namespace zfcore

// Host side of the CUDA launchers (torch build only): includes, and the
// conversions from ATen's view of a tensor to the kernels' plain structs.
#pragma once

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/all.h>
#include <torch/library.h>

#include "../pool_geometry.h"
#include "kernel_common.cuh"

namespace zfcore {
namespace cuda {

inline Strides strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

inline Pool pool_of(const PoolGeometry& g) {
  return {static_cast<int>(g.kh), static_cast<int>(g.kw), static_cast<int>(g.sh),
          static_cast<int>(g.sw), static_cast<int>(g.ph), static_cast<int>(g.pw)};
}

inline void check_cuda(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), op, ": ", name, " must be on ", like.device(), " (got ",
              t.device(), ")");
}

}  // namespace cuda
}  // namespace zfcore

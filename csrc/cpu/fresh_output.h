// Allocation of large CPU outputs.
//
// A tensor of 32 MiB or more (glibc's largest mmap threshold) always comes
// straight from mmap, and its first touch
// costs one page fault per 4 KiB page: for ZFNet's pool1 unpooled map (74 MB)
// the faults alone take longer than the kernel (measured: zero-filling a fresh
// [16, 96, 110, 110] float tensor takes 31 ms with 4 KiB pages, 5 ms with 2 MiB
// ones). Advising transparent huge pages for the untouched buffer, before the
// kernel writes it, removes most of that cost. Where the kernel refuses (THP
// "never"), the advice is a no-op.
#pragma once

#include <sys/mman.h>

#include <torch/all.h>

namespace zfcore {

inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.nbytes();
  // Smaller buffers are mostly recycled from the heap, where the advice only costs.
  if (bytes >= (size_t(32) << 20)) {
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t last = (begin + bytes) & ~(kHuge - 1);
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
  return t;
}

}  // namespace zfcore

// unpool2d and gather_switches on the CPU.
//
// unpool2d is the adjoint of max pooling: input position (ih, iw) receives the sum
// of y over the windows whose switch points at it. On the CPU each thread owns
// a disjoint part of the output (a plane, or one image's block of channels) and
// adds its windows in row-major window order, the order of ATen's max-pool
// backward, so float32 results are equal bit for bit; no element is shared
// between threads, so there are no atomics and runs are bit-identical. (An
// element-wise gather over covering windows, what a GPU needs, measured 3x
// slower here: it tests every covering window of every position.) Half types
// accumulate in float and round once. Every write is bounds-checked: a switch
// outside its window or into the padding (which max pooling never records) is
// an error, not a stray write.
//
// gather_switches is unpool2d's adjoint: y[n, c, oh, ow] = x at the switch.
#include "unpool.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <limits>
#include <vector>

#include "../checks.h"
#include "fresh_output.h"

namespace zfcore {
namespace {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// NCHW: one thread owns a whole plane, so the sums need no atomics; it zeroes the
// plane (which stays in cache) and adds the windows in row-major order.
template <typename scalar_t, bool RELU>
void unpool_nchw(const scalar_t* y, const uint8_t* sw, scalar_t* x, int64_t planes, int64_t H, int64_t W,
                 int64_t OH, int64_t OW, const PoolGeometry& g, std::atomic<bool>& outside) {
  using acc = acc_t<scalar_t>;
  const OffsetTable table(g);
  const int64_t *dh = table.dh, *dw = table.dw;
  const int64_t sh = g.sh, sw_ = g.sw, ph = g.ph, pw = g.pw;
  const bool exact = std::is_same_v<acc, scalar_t>;
  const int64_t window = g.kh * g.kw;
  // Element offset of each in-window switch from its window's corner; offsets
  // past the window read entry 0 (in bounds) and are reported through `bad`.
  int64_t delta[256];
  for (int64_t o = 0; o < 256; ++o) delta[o] = o < window ? dh[o] * W + dw[o] : 0;
  // Output columns whose window lies inside [0, W).
  const int64_t ow_lo = std::min<int64_t>(OW, (pw + sw_ - 1) / sw_);
  const int64_t ow_hi = W + pw < g.kw ? ow_lo : std::max<int64_t>(ow_lo, std::min<int64_t>(OW, (W + pw - g.kw) / sw_ + 1));
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    std::vector<acc> wide(exact ? 0 : H * W);
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* yp = y + p * OH * OW;
      const uint8_t* sp = sw + p * OH * OW;
      acc* xp = exact ? reinterpret_cast<acc*>(x + p * H * W) : wide.data();
      std::fill(xp, xp + H * W, acc(0));
      bool bad = false;
      for (int64_t oh = 0; oh < OH; ++oh) {
        const int64_t hs = oh * sh - ph;
        const scalar_t* yrow = yp + oh * OW;
        const uint8_t* srow = sp + oh * OW;
        // Columns [lo, hi) have windows wholly inside the plane (when the rows
        // are): one table lookup a switch, no bounds check (an offset past the
        // window is still caught, by `window`). The columns stay in row-major
        // order, so every sum keeps ATen's order.
        const bool rows_inside = hs >= 0 && hs + g.kh <= H;
        const int64_t lo = rows_inside ? ow_lo : OW, hi = rows_inside ? ow_hi : OW;
        auto checked = [&](int64_t ow) {
          const int64_t off = srow[ow];
          const int64_t ih = hs + dh[off], iw = ow * sw_ - pw + dw[off];
          const bool inside = static_cast<uint64_t>(ih) < static_cast<uint64_t>(H) &&
                              static_cast<uint64_t>(iw) < static_cast<uint64_t>(W);
          bad |= !inside;  // a switch outside its window or into the padding
          if (inside) xp[ih * W + iw] += static_cast<acc>(yrow[ow]);
        };
        for (int64_t ow = 0; ow < lo; ++ow) checked(ow);
        const int64_t corner = hs * W - pw;  // + ow * sw_: the window's top-left element
        for (int64_t ow = lo; ow < hi; ++ow) {
          const int64_t off = srow[ow];
          bad |= off >= window;
          xp[corner + ow * sw_ + delta[off]] += static_cast<acc>(yrow[ow]);
        }
        for (int64_t ow = hi; ow < OW; ++ow) checked(ow);
      }
      if (bad) outside.store(true, std::memory_order_relaxed);
      if (RELU || !exact) {
        scalar_t* dst = x + p * H * W;
        for (int64_t i = 0; i < H * W; ++i) {
          acc v = xp[i];
          if constexpr (RELU) v = v < acc(0) ? acc(0) : v;  // keeps NaN, as F.relu
          dst[i] = static_cast<scalar_t>(v);
        }
      }
    }
  });
}

// Channels-last: one thread owns one image's block of channels, zeroes it at
// every position and adds the windows in row-major order: straight into the
// output for float and double, through a float buffer for half types and when
// the ReLU follows. With at least as many images as threads (and a small map)
// the block is all the channels, so each image is one pass over contiguous
// rows; otherwise a block fills one 64-byte cache line, so that a few large
// images still spread over the threads.
template <typename scalar_t, bool RELU>
void unpool_nhwc(const scalar_t* y, const uint8_t* sw, scalar_t* x, int64_t N, int64_t C, int64_t H, int64_t W,
                 int64_t OH, int64_t OW, const PoolGeometry& g, std::atomic<bool>& outside) {
  using acc = acc_t<scalar_t>;
  constexpr bool direct = std::is_same_v<acc, scalar_t> && !RELU;
  const OffsetTable table(g);
  const int64_t line = std::max<int64_t>(1, 64 / static_cast<int64_t>(sizeof(scalar_t)));
  const bool one_pass = N >= at::get_num_threads() && H * W * C * static_cast<int64_t>(sizeof(acc)) <= (int64_t(4) << 20);
  const int64_t block = one_pass ? C : line;
  const int64_t blocks = (C + block - 1) / block;
  const int64_t step = direct ? C : block;  // elements between two positions of a block's sums
  const int64_t window = g.kh * g.kw;
  // Element offset of each in-window switch from its window's corner (past the
  // window: entry 0, in bounds, reported through `bad`).
  int64_t delta[256];
  for (int64_t o = 0; o < 256; ++o) delta[o] = o < window ? (table.dh[o] * W + table.dw[o]) * step : 0;
  at::parallel_for(0, N * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc> buffer(direct ? 0 : H * W * block);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / blocks, c0 = (t % blocks) * block, cn = std::min(block, C - c0);
      acc* sum = direct ? reinterpret_cast<acc*>(x + n * H * W * C + c0) : buffer.data();
      for (int64_t i = 0; i < H * W; ++i) std::fill(sum + i * step, sum + i * step + cn, acc(0));
      bool bad = false;
      for (int64_t oh = 0; oh < OH; ++oh) {
        const int64_t hs = oh * g.sh - g.ph;
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t ws = ow * g.sw - g.pw, o = ((n * OH + oh) * OW + ow) * C + c0;
          if (hs >= 0 && hs + g.kh <= H && ws >= 0 && ws + g.kw <= W) {
            // Inside the map: one table lookup a switch, no bounds check (an
            // offset past the window is still caught, by `window`).
            acc* base = sum + (hs * W + ws) * step;
            for (int64_t c = 0; c < cn; ++c) {
              const int64_t off = sw[o + c];
              bad |= off >= window;
              base[delta[off] + c] += static_cast<acc>(y[o + c]);
            }
            continue;
          }
          for (int64_t c = 0; c < cn; ++c) {
            const int64_t off = sw[o + c];
            const int64_t ih = hs + table.dh[off], iw = ws + table.dw[off];
            const bool inside = static_cast<uint64_t>(ih) < static_cast<uint64_t>(H) &&
                                static_cast<uint64_t>(iw) < static_cast<uint64_t>(W);
            bad |= !inside;
            if (inside) sum[(ih * W + iw) * step + c] += static_cast<acc>(y[o + c]);
          }
        }
      }
      if (bad) outside.store(true, std::memory_order_relaxed);
      if constexpr (!direct) {
        for (int64_t i = 0; i < H * W; ++i) {
          scalar_t* dst = x + (n * H * W + i) * C + c0;
          const acc* src = sum + i * block;
          for (int64_t c = 0; c < cn; ++c) {
            acc v = src[c];
            if constexpr (RELU) v = v < acc(0) ? acc(0) : v;
            dst[c] = static_cast<scalar_t>(v);
          }
        }
      }
    }
  });
}

}  // namespace

at::Tensor unpool2d_cpu_impl(const at::Tensor& y, const at::Tensor& switches, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_size,
                             bool relu) {
  // Arguments checked by the caller (check_unpool2d, or check_deconv_step).
  const char* op = relu ? "deconv_step" : "unpool2d";
  const PoolGeometry g{kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1]};
  const int64_t N = y.size(0), C = y.size(1), OH = y.size(2), OW = y.size(3);
  const int64_t H = output_size[0], W = output_size[1];
  const at::MemoryFormat fmt = memory_format_of(y);
  const at::Tensor ys = y.contiguous(fmt), ss = switches.contiguous(fmt);
  at::Tensor x = empty_output({N, C, H, W}, y.options().memory_format(fmt));
  if (x.numel() == 0) return x;
  std::atomic<bool> outside{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "unpool2d_cpu", [&] {
    const scalar_t* yp = ys.const_data_ptr<scalar_t>();
    const uint8_t* sp = ss.const_data_ptr<uint8_t>();
    scalar_t* xp = x.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast) {
      relu ? unpool_nhwc<scalar_t, true>(yp, sp, xp, N, C, H, W, OH, OW, g, outside)
           : unpool_nhwc<scalar_t, false>(yp, sp, xp, N, C, H, W, OH, OW, g, outside);
    } else {
      relu ? unpool_nchw<scalar_t, true>(yp, sp, xp, N * C, H, W, OH, OW, g, outside)
           : unpool_nchw<scalar_t, false>(yp, sp, xp, N * C, H, W, OH, OW, g, outside);
    }
  });
  TORCH_CHECK_VALUE(!outside.load(), op, ": switches point outside their ", g.kh, "x", g.kw,
              " window or into the padding of the ", H, "x", W,
              " output; they must come from max_pool2d_switches with the same parameters");
  return x;
}

namespace {

at::Tensor unpool2d_cpu(const at::Tensor& y, const at::Tensor& switches, at::IntArrayRef kernel_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_size) {
  check_unpool2d(y, switches, kernel_size, stride, padding, output_size);
  return unpool2d_cpu_impl(y, switches, kernel_size, stride, padding, output_size, false);
}

at::Tensor gather_switches_cpu(const at::Tensor& x, const at::Tensor& switches, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding) {
  const PoolShape shape = check_gather_switches(x, switches, kernel_size, stride, padding);
  const PoolGeometry& g = shape.g;
  const int64_t N = shape.N, C = shape.C, H = shape.H, W = shape.W, OH = shape.OH, OW = shape.OW;
  const int64_t window = g.kh * g.kw;
  const at::MemoryFormat fmt = memory_format_of(x);
  const at::Tensor xs = x.contiguous(fmt), ss = switches.contiguous(fmt);
  at::Tensor y = empty_output({N, C, OH, OW}, x.options().memory_format(fmt));
  if (y.numel() == 0) return y;
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  std::atomic<bool> out_of_range{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gather_switches_cpu", [&] {
    const scalar_t* xp = xs.const_data_ptr<scalar_t>();
    const uint8_t* sp = ss.const_data_ptr<uint8_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, y.numel(), 4096, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; ++e) {
        int64_t n, c, oh, ow;
        if (cl) {
          c = e % C; ow = (e / C) % OW; oh = (e / (C * OW)) % OH; n = e / (C * OW * OH);
        } else {
          ow = e % OW; oh = (e / OW) % OH; c = (e / (OW * OH)) % C; n = e / (OW * OH * C);
        }
        const int64_t off = sp[e];
        const int64_t ih = oh * g.sh - g.ph + off / g.kw, iw = ow * g.sw - g.pw + off % g.kw;
        // A switch outside its window (off >= kh*kw) would read another window's
        // element: refused like one into the padding.
        if (off >= window || ih < 0 || ih >= H || iw < 0 || iw >= W) {
          out_of_range.store(true, std::memory_order_relaxed);
          yp[e] = scalar_t(0);
          continue;
        }
        yp[e] = cl ? xp[((n * H + ih) * W + iw) * C + c] : xp[((n * C + c) * H + ih) * W + iw];
      }
    });
  });
  TORCH_CHECK_VALUE(!out_of_range.load(), "gather_switches: switches point outside their ", g.kh, "x", g.kw,
                    " window or into the padding of x of spatial size ", H, "x", W,
                    "; they must come from max_pool2d_switches with the same parameters");
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(zfcore, CPU, m) {
  m.impl("unpool2d", &unpool2d_cpu);
  m.impl("gather_switches", &gather_switches_cpu);
}

}  // namespace zfcore

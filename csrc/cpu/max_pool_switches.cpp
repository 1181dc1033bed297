// max_pool2d_switches on the CPU.
//
// Output values equal F.max_pool2d bit for bit: the comparison is done on the
// values themselves (widened to float for half types, which is exact), a NaN
// always takes the slot (so the last NaN of a window wins, as in ATen), ties keep
// the first maximum in row-major window order, and a window of -inf keeps its
// first in-bounds element. The switch is that element's row-major offset inside
// the (padded) kh x kw window, stored in one byte.
//
// Two layouts: NCHW parallelizes over planes and walks each window; channels-last
// parallelizes over output pixels and runs the channel loop innermost, where the
// compiler vectorizes the branch-free compare/select.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/all.h>

#include <limits>
#include <vector>

#include "../checks.h"
#include "fresh_output.h"

namespace zfcore {
namespace {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// NCHW. Windows wholly inside the input are done a row of outputs at a time with
// the output column innermost: the loop has no branches (compare + select) and
// strided loads, which the compiler vectorizes when KH, KW and the column stride
// SW are compile-time constants. Edge windows use the scalar scan.
template <typename scalar_t, int KH, int KW, int SW>
void pool_nchw(const scalar_t* in, scalar_t* out, uint8_t* sw, int64_t planes, int64_t H, int64_t W,
               int64_t OH, int64_t OW, const PoolGeometry& g) {
  using acc = acc_t<scalar_t>;
  // Output columns whose window lies inside [0, W).
  const int64_t ow_lo = (g.pw + g.sw - 1) / g.sw;
  const int64_t ow_hi = std::max<int64_t>(ow_lo, std::min<int64_t>(OW, (W + g.pw - g.kw) / g.sw + 1));
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    std::vector<acc> best(OW);
    std::vector<int32_t> arg(OW);
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* src = in + p * H * W;
      scalar_t* dst = out + p * OH * OW;
      uint8_t* dsw = sw + p * OH * OW;
      for (int64_t oh = 0; oh < OH; ++oh) {
        const int64_t hs = oh * g.sh - g.ph;
        const int64_t h0 = std::max<int64_t>(hs, 0), h1 = std::min<int64_t>(hs + g.kh, H);
        const bool rows_inside = KH > 0 && h0 == hs && h1 == hs + g.kh;
        const bool wide = rows_inside && ow_hi - ow_lo >= 8;  // short rows do not pay for a vector loop
        const int64_t lo = wide ? ow_lo : OW, hi = wide ? ow_hi : OW;
        if (wide) {
          acc* b = best.data();
          int32_t* a = arg.data();
          for (int64_t ow = lo; ow < hi; ++ow) {
            b[ow] = -std::numeric_limits<acc>::infinity();
            a[ow] = 0;
          }
          for (int dh = 0; dh < KH; ++dh) {
            for (int dw = 0; dw < KW; ++dw) {
              const scalar_t* r = src + (hs + dh) * W + dw - g.pw;
              const int32_t off = dh * KW + dw;
              for (int64_t ow = lo; ow < hi; ++ow) {
                const acc v = static_cast<acc>(r[ow * SW]);
                const bool take = (v > b[ow]) | (v != v);
                b[ow] = take ? v : b[ow];
                a[ow] = take ? off : a[ow];
              }
            }
          }
          for (int64_t ow = lo; ow < hi; ++ow) {
            dst[oh * OW + ow] = static_cast<scalar_t>(b[ow]);
            dsw[oh * OW + ow] = static_cast<uint8_t>(a[ow]);
          }
        }
        for (int64_t ow = 0; ow < OW; ++ow) {
          if (ow == lo) ow = hi;  // skip the columns done above
          if (ow >= OW) break;
          const int64_t ws = ow * g.sw - g.pw;
          const int64_t w0 = std::max<int64_t>(ws, 0), w1 = std::min<int64_t>(ws + g.kw, W);
          acc bv = -std::numeric_limits<acc>::infinity();
          if (KH > 0 && rows_inside && w0 == ws && w1 == ws + g.kw) {  // fixed-size window, unrolled
            const scalar_t* base = src + hs * W + ws;
            int32_t av = 0;
            for (int dh = 0; dh < KH; ++dh) {
              for (int dw = 0; dw < KW; ++dw) {
                const acc v = static_cast<acc>(base[dh * W + dw]);
                const bool take = (v > bv) | (v != v);
                bv = take ? v : bv;
                av = take ? dh * KW + dw : av;
              }
            }
            dst[oh * OW + ow] = static_cast<scalar_t>(bv);
            dsw[oh * OW + ow] = static_cast<uint8_t>(av);
            continue;
          }
          int64_t av = (h0 - hs) * g.kw + (w0 - ws);
          for (int64_t ih = h0; ih < h1; ++ih) {
            const scalar_t* row = src + ih * W;
            const int64_t base = (ih - hs) * g.kw - ws;
            for (int64_t iw = w0; iw < w1; ++iw) {
              const acc v = static_cast<acc>(row[iw]);
              const bool take = (v > bv) | (v != v);
              bv = take ? v : bv;
              av = take ? base + iw : av;
            }
          }
          dst[oh * OW + ow] = static_cast<scalar_t>(bv);
          dsw[oh * OW + ow] = static_cast<uint8_t>(av);
        }
      }
    }
  });
}

template <typename scalar_t>
void pool_nhwc(const scalar_t* in, scalar_t* out, uint8_t* sw, int64_t N, int64_t C, int64_t H,
               int64_t W, int64_t OH, int64_t OW, const PoolGeometry& g) {
  using acc = acc_t<scalar_t>;
  at::parallel_for(0, N * OH * OW, 16, [&](int64_t q0, int64_t q1) {
    std::vector<acc> best(C);
    std::vector<int32_t> arg(C);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t ow = q % OW, oh = (q / OW) % OH, n = q / (OW * OH);
      const int64_t hs = oh * g.sh - g.ph, ws = ow * g.sw - g.pw;
      const int64_t h0 = std::max<int64_t>(hs, 0), h1 = std::min<int64_t>(hs + g.kh, H);
      const int64_t w0 = std::max<int64_t>(ws, 0), w1 = std::min<int64_t>(ws + g.kw, W);
      acc* b = best.data();
      int32_t* a = arg.data();
      const int32_t first = static_cast<int32_t>((h0 - hs) * g.kw + (w0 - ws));
      for (int64_t c = 0; c < C; ++c) {
        b[c] = -std::numeric_limits<acc>::infinity();
        a[c] = first;
      }
      for (int64_t ih = h0; ih < h1; ++ih) {
        for (int64_t iw = w0; iw < w1; ++iw) {
          const scalar_t* px = in + ((n * H + ih) * W + iw) * C;
          const int32_t off = static_cast<int32_t>((ih - hs) * g.kw + (iw - ws));
          for (int64_t c = 0; c < C; ++c) {
            const acc v = static_cast<acc>(px[c]);
            const bool take = (v > b[c]) | (v != v);
            b[c] = take ? v : b[c];
            a[c] = take ? off : a[c];
          }
        }
      }
      scalar_t* dst = out + q * C;
      uint8_t* dsw = sw + q * C;
      for (int64_t c = 0; c < C; ++c) {
        dst[c] = static_cast<scalar_t>(b[c]);
        dsw[c] = static_cast<uint8_t>(a[c]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_switches_cpu(const at::Tensor& x, at::IntArrayRef kernel_size,
                                                           at::IntArrayRef stride, at::IntArrayRef padding,
                                                           bool ceil_mode) {
  const PoolShape shape = check_max_pool2d_switches(x, kernel_size, stride, padding, ceil_mode);
  const PoolGeometry& g = shape.g;
  const int64_t N = shape.N, C = shape.C, H = shape.H, W = shape.W, OH = shape.OH, OW = shape.OW;
  const at::MemoryFormat fmt = memory_format_of(x);
  const at::Tensor src = x.contiguous(fmt);
  at::Tensor out = empty_output({N, C, OH, OW}, x.options().memory_format(fmt));
  at::Tensor sw = empty_output({N, C, OH, OW}, x.options().dtype(at::kByte).memory_format(fmt));
  if (out.numel() == 0) return {out, sw};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_switches_cpu", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast) {
      pool_nhwc(src.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), sw.mutable_data_ptr<uint8_t>(),
                N, C, H, W, OH, OW, g);
    } else {
      // Fixed-size fast paths for the common windows (ZFNet's 3x3, 2x2).
      auto run = [&](auto kernel) {
        kernel(src.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), sw.mutable_data_ptr<uint8_t>(),
               N * C, H, W, OH, OW, g);
      };
      if (g.kh == 3 && g.kw == 3 && g.sw == 2) {
        run(pool_nchw<scalar_t, 3, 3, 2>);
      } else if (g.kh == 2 && g.kw == 2 && g.sw == 2) {
        run(pool_nchw<scalar_t, 2, 2, 2>);
      } else {
        run(pool_nchw<scalar_t, 0, 0, 1>);  // scalar scan only
      }
    }
  });
  return {out, sw};
}

}  // namespace

TORCH_LIBRARY_IMPL(zfcore, CPU, m) { m.impl("max_pool2d_switches", &max_pool2d_switches_cpu); }

}  // namespace zfcore

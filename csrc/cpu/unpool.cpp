// unpool2d and gather_switches on the CPU.
//
// unpool2d is the adjoint of max pooling: input position (ih, iw) receives the sum
// of y over the windows whose switch points at it. It is computed as a gather:
// each output element visits the (at most ceil(k/s)^2) windows covering it in
// row-major window order and adds the matching values, which is the order in
// which ATen's max-pool backward scatters them, so float32 results are equal bit
// for bit. No element is written twice, so there are no atomics and no races, and
// runs are bit-identical. Half types accumulate in float and round once.
//
// gather_switches is unpool2d's adjoint: y[n, c, oh, ow] = x at the switch.
#include "unpool.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <vector>

#include "../pool_geometry.h"

namespace zfcore {
namespace {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

struct CoverTable {
  std::vector<int64_t> first, last;  // covering window range per input position
  CoverTable(int64_t in, int64_t k, int64_t s, int64_t p, int64_t out) : first(in), last(in) {
    for (int64_t i = 0; i < in; ++i) covering_windows(i, k, s, p, out, first[i], last[i]);
  }
};

template <typename scalar_t, bool RELU>
void unpool_nchw(const scalar_t* y, const uint8_t* sw, scalar_t* x, int64_t planes, int64_t H, int64_t W,
                 int64_t OH, int64_t OW, const PoolGeometry& g) {
  using acc = acc_t<scalar_t>;
  const CoverTable rows(H, g.kh, g.sh, g.ph, OH), cols(W, g.kw, g.sw, g.pw, OW);
  at::parallel_for(0, planes, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const scalar_t* yp = y + p * OH * OW;
      const uint8_t* sp = sw + p * OH * OW;
      scalar_t* xp = x + p * H * W;
      for (int64_t ih = 0; ih < H; ++ih) {
        const int64_t oh0 = rows.first[ih], oh1 = rows.last[ih];
        for (int64_t iw = 0; iw < W; ++iw) {
          const int64_t ow0 = cols.first[iw], ow1 = cols.last[iw];
          acc sum = acc(0);
          for (int64_t oh = oh0; oh <= oh1; ++oh) {
            const int64_t dh = (ih + g.ph - oh * g.sh) * g.kw + iw + g.pw;
            for (int64_t ow = ow0; ow <= ow1; ++ow) {
              const int64_t o = oh * OW + ow;
              if (sp[o] == dh - ow * g.sw) sum += static_cast<acc>(yp[o]);
            }
          }
          if constexpr (RELU) sum = sum < acc(0) ? acc(0) : sum;  // keeps NaN, as F.relu
          xp[ih * W + iw] = static_cast<scalar_t>(sum);
        }
      }
    }
  });
}

template <typename scalar_t, bool RELU>
void unpool_nhwc(const scalar_t* y, const uint8_t* sw, scalar_t* x, int64_t N, int64_t C, int64_t H, int64_t W,
                 int64_t OH, int64_t OW, const PoolGeometry& g) {
  using acc = acc_t<scalar_t>;
  const CoverTable rows(H, g.kh, g.sh, g.ph, OH), cols(W, g.kw, g.sw, g.pw, OW);
  at::parallel_for(0, N * H * W, 16, [&](int64_t q0, int64_t q1) {
    std::vector<acc> sum(C);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t iw = q % W, ih = (q / W) % H, n = q / (W * H);
      acc* s = sum.data();
      for (int64_t c = 0; c < C; ++c) s[c] = acc(0);
      for (int64_t oh = rows.first[ih]; oh <= rows.last[ih]; ++oh) {
        for (int64_t ow = cols.first[iw]; ow <= cols.last[iw]; ++ow) {
          const uint8_t off = static_cast<uint8_t>((ih + g.ph - oh * g.sh) * g.kw + (iw + g.pw - ow * g.sw));
          const int64_t o = ((n * OH + oh) * OW + ow) * C;
          const scalar_t* yo = y + o;
          const uint8_t* so = sw + o;
          // Adding +0 for non-matching windows leaves every sum bit-identical: the
          // sum starts at +0 and so can never be -0.
          for (int64_t c = 0; c < C; ++c) s[c] += so[c] == off ? static_cast<acc>(yo[c]) : acc(0);
        }
      }
      scalar_t* xo = x + q * C;
      for (int64_t c = 0; c < C; ++c) {
        acc v = s[c];
        if constexpr (RELU) v = v < acc(0) ? acc(0) : v;
        xo[c] = static_cast<scalar_t>(v);
      }
    }
  });
}

void check_switches(const char* op, const at::Tensor& switches, const at::Tensor& like, const PoolGeometry& g) {
  TORCH_CHECK(switches.scalar_type() == at::kByte, op, ": switches must be uint8 (got ", switches.scalar_type(), ")");
  TORCH_CHECK(switches.sizes() == like.sizes(), op, ": switches must have the shape of the pooled tensor ",
              like.sizes(), " (got ", switches.sizes(), ")");
  TORCH_CHECK(switches.device() == like.device(), op, ": switches must be on ", like.device(), " (got ",
              switches.device(), ")");
  if (switches.numel() > 0) {
    const int64_t top = switches.max().item<int64_t>();
    TORCH_CHECK(top < g.kh * g.kw, op, ": switches hold offset ", top, ", outside a ", g.kh, "x", g.kw, " window");
  }
}

}  // namespace

at::Tensor unpool2d_cpu_impl(const at::Tensor& y, const at::Tensor& switches, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_size,
                             bool relu) {
  const char* op = relu ? "deconv_step" : "unpool2d";
  const PoolGeometry g = check_pool_geometry(op, kernel_size, stride, padding);
  TORCH_CHECK(y.dim() == 4, op, ": y must be 4-D [N, C, H, W] (got ", y.dim(), "-D)");
  check_switches(op, switches, y, g);
  TORCH_CHECK(output_size.size() == 2, op, ": output_size must have two elements");
  const int64_t N = y.size(0), C = y.size(1), OH = y.size(2), OW = y.size(3);
  const int64_t H = output_size[0], W = output_size[1];
  auto pools_to = [&](int64_t in, int64_t k, int64_t s, int64_t p, int64_t out) {
    return in > 0 && (pool_output_size(in, k, s, p, false) == out || pool_output_size(in, k, s, p, true) == out);
  };
  TORCH_CHECK(pools_to(H, g.kh, g.sh, g.ph, OH) && pools_to(W, g.kw, g.sw, g.pw, OW), op, ": output_size ",
              output_size, " cannot be pooled to y's spatial size ", OH, "x", OW);
  const at::MemoryFormat fmt = memory_format_of(y);
  const at::Tensor ys = y.contiguous(fmt), ss = switches.contiguous(fmt);
  at::Tensor x = at::empty({N, C, H, W}, y.options().memory_format(fmt));
  if (x.numel() == 0) return x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "unpool2d_cpu", [&] {
    const scalar_t* yp = ys.const_data_ptr<scalar_t>();
    const uint8_t* sp = ss.const_data_ptr<uint8_t>();
    scalar_t* xp = x.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast) {
      relu ? unpool_nhwc<scalar_t, true>(yp, sp, xp, N, C, H, W, OH, OW, g)
           : unpool_nhwc<scalar_t, false>(yp, sp, xp, N, C, H, W, OH, OW, g);
    } else {
      relu ? unpool_nchw<scalar_t, true>(yp, sp, xp, N * C, H, W, OH, OW, g)
           : unpool_nchw<scalar_t, false>(yp, sp, xp, N * C, H, W, OH, OW, g);
    }
  });
  return x;
}

namespace {

at::Tensor unpool2d_cpu(const at::Tensor& y, const at::Tensor& switches, at::IntArrayRef kernel_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_size) {
  return unpool2d_cpu_impl(y, switches, kernel_size, stride, padding, output_size, false);
}

at::Tensor gather_switches_cpu(const at::Tensor& x, const at::Tensor& switches, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding) {
  const PoolGeometry g = check_pool_geometry("gather_switches", kernel_size, stride, padding);
  TORCH_CHECK(x.dim() == 4 && switches.dim() == 4, "gather_switches: x and switches must be 4-D");
  TORCH_CHECK(switches.scalar_type() == at::kByte, "gather_switches: switches must be uint8 (got ",
              switches.scalar_type(), ")");
  TORCH_CHECK(switches.size(0) == x.size(0) && switches.size(1) == x.size(1),
              "gather_switches: switches ", switches.sizes(), " do not match x ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t OH = switches.size(2), OW = switches.size(3);
  const at::MemoryFormat fmt = memory_format_of(x);
  const at::Tensor xs = x.contiguous(fmt), ss = switches.contiguous(fmt);
  at::Tensor y = at::empty({N, C, OH, OW}, x.options().memory_format(fmt));
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
        const int64_t ih = oh * g.sh - g.ph + sp[e] / g.kw, iw = ow * g.sw - g.pw + sp[e] % g.kw;
        if (ih < 0 || ih >= H || iw < 0 || iw >= W) {
          out_of_range.store(true, std::memory_order_relaxed);
          yp[e] = scalar_t(0);
          continue;
        }
        yp[e] = cl ? xp[((n * H + ih) * W + iw) * C + c] : xp[((n * C + c) * H + ih) * W + iw];
      }
    });
  });
  TORCH_CHECK(!out_of_range.load(), "gather_switches: switches point outside x of spatial size ", H, "x", W,
              " for kernel_size ", kernel_size, ", stride ", stride, ", padding ", padding);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(zfcore, CPU, m) {
  m.impl("unpool2d", &unpool2d_cpu);
  m.impl("gather_switches", &gather_switches_cpu);
}

}  // namespace zfcore

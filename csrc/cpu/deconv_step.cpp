// deconv_step on the CPU: conv_transpose2d(relu(unpool2d(y, switches)), weight, bias).
//
// The unpooled map is sparse by construction: max pooling with stride s keeps
// one position per window, so at most 1/(sh*sw) of it is nonzero (ZFNet's 3x3/s2
// pools: under 25%, about half of that after the ReLU). This kernel never writes
// that map. For each (image, input channel) it unpools the plane into a small
// buffer that stays in cache (adding overlapping windows in row-major order, as
// unpool2d, so the rectified values are the same bits), then visits the windows
// again and scatters every positive value times its filter into the output:
//   out[n, co, ih*s - p + kh*d, iw*s - p + kw*d] += relu(u[n, ci, ih, iw]) * W[ci, co, kh, kw].
// The output is accumulated per (image, block of output channels) with the
// channels innermost, so the inner loop is a vectorized axpy over channels.
// The work is proportional to the nonzeros, not to the map: measured against
// unpool + relu + oneDNN's transposed convolution in benchmarks/results/cpu.md.
// Dense unpooled maps (pooling stride 1), bfloat16/float16 layers with more
// than 4 output channels per group, and weights holding NaN or infinity take
// that composition instead.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/all.h>

#include <atomic>
#include <vector>

#include "../checks.h"
#include "fresh_output.h"
#include "unpool.h"

namespace zfcore {
namespace {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

struct ConvGeometry {
  int64_t sh, sw, ph, pw, dh, dw, groups;
};

// Unpools plane (n, ci) into `plane` (H x W, zero on entry), adding overlapping
// windows in row-major order as unpool2d does; where[o] is the position pooled
// output o went to (-1: outside the map). Returns false if a switch points
// outside the map.
template <typename scalar_t, typename acc>
bool unpool_plane(const scalar_t* yp, const uint8_t* sp, int64_t OH, int64_t OW, int64_t H, int64_t W,
                  const PoolGeometry& pg, const OffsetTable& table, acc* plane, int32_t* where) {
  bool ok = true;
  for (int64_t oh = 0; oh < OH; ++oh) {
    for (int64_t ow = 0; ow < OW; ++ow) {
      const int64_t o = oh * OW + ow, off = sp[o];
      const int64_t ih = oh * pg.sh - pg.ph + table.dh[off], iw = ow * pg.sw - pg.pw + table.dw[off];
      const bool inside = static_cast<uint64_t>(ih) < static_cast<uint64_t>(H) &&
                          static_cast<uint64_t>(iw) < static_cast<uint64_t>(W);
      ok &= inside;
      where[o] = inside ? static_cast<int32_t>(ih * W + iw) : -1;
      if (inside) plane[ih * W + iw] += static_cast<acc>(yp[o]);
    }
  }
  return ok;
}

// Few output channels per group (a first layer's 3: the stage that writes the
// image). Scattering each nonzero times its filter, as sparse_deconv does,
// costs a short read-modify-write per tap here (cout_g values), so this kernel
// turns the loop around: it unpools every channel of the group into one
// channels-last buffer, then for each position of the unpooled map sums its
// positive channels' filters, wt[ci] (all taps and output channels,
// T = KH * KW * cout_g values, one vector loop per channel), and adds that sum
// to the output once. Positions no channel reaches are skipped.
template <typename scalar_t>
void sparse_deconv_positions(const scalar_t* y, const uint8_t* switches, const acc_t<scalar_t>* wt,
                             const scalar_t* bias, scalar_t* out, bool out_channels_last, int64_t N, int64_t C,
                             int64_t OH, int64_t OW, int64_t H, int64_t W, int64_t Cout, int64_t KH, int64_t KW,
                             int64_t HO, int64_t WO, const PoolGeometry& pg, const ConvGeometry& cg,
                             std::atomic<bool>& outside) {
  using acc = acc_t<scalar_t>;
  const int64_t cin_g = C / cg.groups, cout_g = Cout / cg.groups, T = KH * KW * cout_g;
  const OffsetTable table(pg);
  at::parallel_for(0, N * cg.groups, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc> u(H * W * cin_g, acc(0));  // the group's unpooled channels, channels innermost;
                                                // each position returned to zero after use
    std::vector<uint8_t> reached(H * W);
    std::vector<acc> sum(HO * WO * cout_g), a(T);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / cg.groups, grp = t % cg.groups;
      std::fill(reached.begin(), reached.end(), uint8_t(0));
      std::fill(sum.begin(), sum.end(), acc(0));
      bool ok = true;
      for (int64_t c = 0; c < cin_g; ++c) {  // unpool, windows in row-major order per channel, as unpool2d
        const int64_t at = (n * C + grp * cin_g + c) * OH * OW;
        const scalar_t* yp = y + at;
        const uint8_t* sp = switches + at;
        for (int64_t oh = 0; oh < OH; ++oh) {
          for (int64_t ow = 0; ow < OW; ++ow) {
            const int64_t o = oh * OW + ow, off = sp[o];
            const int64_t ih = oh * pg.sh - pg.ph + table.dh[off], iw = ow * pg.sw - pg.pw + table.dw[off];
            const bool inside = static_cast<uint64_t>(ih) < static_cast<uint64_t>(H) &&
                                static_cast<uint64_t>(iw) < static_cast<uint64_t>(W);
            ok &= inside;
            if (!inside) continue;
            u[(ih * W + iw) * cin_g + c] += static_cast<acc>(yp[o]);
            reached[ih * W + iw] = 1;
          }
        }
      }
      if (!ok) outside.store(true, std::memory_order_relaxed);
      const acc* wg = wt + grp * cin_g * T;  // wt is [C, KH, KW, Cout/groups]
      for (int64_t pos = 0; pos < H * W; ++pos) {
        if (!reached[pos]) continue;
        acc* up = u.data() + pos * cin_g;
        bool any = false;
        for (int64_t c = 0; c < cin_g; ++c) {
          const acc v = up[c];
          up[c] = acc(0);
          if (!(v > acc(0)) && v == v) continue;  // rectified away (NaN goes on, as F.relu keeps it)
          const acc* wc = wg + c * T;
          if (!any) {
            for (int64_t j = 0; j < T; ++j) a[j] = v * wc[j];
            any = true;
          } else {
            for (int64_t j = 0; j < T; ++j) a[j] += v * wc[j];
          }
        }
        if (!any) continue;
        const int64_t ih = pos / W, iw = pos % W;
        const int64_t oy0 = ih * cg.sh - cg.ph, ox0 = iw * cg.sw - cg.pw;
        for (int64_t kh = 0; kh < KH; ++kh) {
          const int64_t oy = oy0 + kh * cg.dh;
          if (static_cast<uint64_t>(oy) >= static_cast<uint64_t>(HO)) continue;
          for (int64_t kw = 0; kw < KW; ++kw) {
            const int64_t ox = ox0 + kw * cg.dw;
            if (static_cast<uint64_t>(ox) >= static_cast<uint64_t>(WO)) continue;
            acc* s = sum.data() + (oy * WO + ox) * cout_g;
            const acc* ak = a.data() + (kh * KW + kw) * cout_g;
            for (int64_t co = 0; co < cout_g; ++co) s[co] += ak[co];
          }
        }
      }
      for (int64_t q = 0; q < HO * WO; ++q) {
        for (int64_t c = 0; c < cout_g; ++c) {
          const int64_t co = grp * cout_g + c;
          const acc v = sum[q * cout_g + c] + (bias ? static_cast<acc>(bias[co]) : acc(0));
          out[out_channels_last ? (n * HO * WO + q) * Cout + co : (n * Cout + co) * HO * WO + q] =
              static_cast<scalar_t>(v);
        }
      }
    }
  });
}

// CB > 0: the block of output channels has exactly CB channels (small Cout, such
// as a first layer's 3), so the channel loop unrolls instead of falling into a
// vector loop's scalar remainder.
template <typename scalar_t, int CB>
void sparse_deconv(const scalar_t* y, const uint8_t* switches, const acc_t<scalar_t>* wt, const scalar_t* bias,
                   scalar_t* out, bool out_channels_last, int64_t N, int64_t C, int64_t OH, int64_t OW, int64_t H,
                   int64_t W, int64_t Cout, int64_t KH, int64_t KW, int64_t HO, int64_t WO, const PoolGeometry& pg,
                   const ConvGeometry& cg, std::atomic<bool>& outside) {
  using acc = acc_t<scalar_t>;
  const int64_t cin_g = C / cg.groups, cout_g = Cout / cg.groups;
  const int64_t block = CB > 0 ? CB : std::min<int64_t>(cout_g, 64);
  const int64_t blocks = (cout_g + block - 1) / block;
  const OffsetTable table(pg);
  at::parallel_for(0, N * cg.groups * blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc> plane(H * W, acc(0));  // always returned to zero after use
    std::vector<int32_t> where(OH * OW);
    std::vector<acc> sum(HO * WO * block);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (cg.groups * blocks), grp = (t / blocks) % cg.groups, b = t % blocks;
      const int64_t co0 = b * block, cb = std::min(block, cout_g - co0);
      std::fill(sum.begin(), sum.end(), acc(0));
      bool bad = false;
      for (int64_t ci = grp * cin_g; ci < (grp + 1) * cin_g; ++ci) {
        const int64_t plane_at = (n * C + ci) * OH * OW;
        bad |= !unpool_plane(y + plane_at, switches + plane_at, OH, OW, H, W, pg, table, plane.data(),
                             where.data());
        const acc* wc = wt + (ci * KH * KW) * cout_g + co0;  // wt is [C, KH, KW, Cout/groups]
        for (int64_t o = 0; o < OH * OW; ++o) {  // each nonzero position once: zeroed when visited
          const int32_t pos = where[o];
          if (pos < 0) continue;
          const acc v = plane[pos];
          plane[pos] = acc(0);
          if (!(v > acc(0)) && v == v) continue;  // rectified away (NaN goes on, as F.relu keeps it)
          const int64_t ih = pos / W, iw = pos % W;
          const int64_t oy0 = ih * cg.sh - cg.ph, ox0 = iw * cg.sw - cg.pw;
          for (int64_t kh = 0; kh < KH; ++kh) {
            const int64_t oy = oy0 + kh * cg.dh;
            if (static_cast<uint64_t>(oy) >= static_cast<uint64_t>(HO)) continue;
            for (int64_t kw = 0; kw < KW; ++kw) {
              const int64_t ox = ox0 + kw * cg.dw;
              if (static_cast<uint64_t>(ox) >= static_cast<uint64_t>(WO)) continue;
              acc* s = sum.data() + (oy * WO + ox) * block;
              const acc* wk = wc + (kh * KW + kw) * cout_g;
              if constexpr (CB > 0) {
                for (int c = 0; c < CB; ++c) s[c] += v * wk[c];
              } else {
                for (int64_t c = 0; c < cb; ++c) s[c] += v * wk[c];
              }
            }
          }
        }
      }
      if (bad) outside.store(true, std::memory_order_relaxed);
      const int64_t cog = grp * cout_g + co0;  // first output channel of this block
      for (int64_t q = 0; q < HO * WO; ++q) {
        const acc* s = sum.data() + q * block;
        for (int64_t c = 0; c < cb; ++c) {
          const acc v = s[c] + (bias ? static_cast<acc>(bias[cog + c]) : acc(0));
          const int64_t index = out_channels_last ? (n * HO * WO + q) * Cout + cog + c
                                                  : ((n * Cout + cog + c) * HO * WO) + q;
          out[index] = static_cast<scalar_t>(v);
        }
      }
    }
  });
}

at::Tensor deconv_step_cpu(const at::Tensor& y, const at::Tensor& switches, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef pool_kernel_size,
                           at::IntArrayRef pool_stride, at::IntArrayRef pool_padding, at::IntArrayRef unpooled_size,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef output_padding,
                           int64_t groups, at::IntArrayRef dilation) {
  const auto checked = check_deconv_step(y, switches, weight, bias, pool_kernel_size, pool_stride, pool_padding,
                                         unpooled_size, stride, padding, output_padding, groups, dilation);
  const PoolShape& pool = checked.first;
  const ConvShape& conv = checked.second;
  const PoolGeometry& pg = pool.g;
  const int64_t OH = pool.OH, OW = pool.OW, H = pool.H, W = pool.W;
  const at::MemoryFormat fmt = memory_format_of(y);
  // Dense unpooled maps, and half types with many output channels, where
  // oneDNN's reduced-precision GEMM runs at twice its float32 speed: the
  // composition wins (measured in benchmarks/results/cpu.md).
  const bool reduced = y.scalar_type() == at::kHalf || y.scalar_type() == at::kBFloat16;
  const bool few_outputs = weight.dim() == 4 && groups > 0 && weight.size(1) <= 4;
  // The sparse kernel skips the zeros of the rectified map, so a NaN or an
  // infinity in the weight would not reach the outputs those zeros touch
  // (0 * NaN is NaN): such a weight takes the composition, as on every backend.
  // A finite double-precision sum means every element is finite (one NaN or
  // infinity makes it NaN or infinite); it costs a fraction of isfinite().all().
  const bool finite_weight = weight.sum(at::kDouble).isfinite().item<bool>();
  if (2 * OH * OW > H * W || (reduced && !few_outputs) || !finite_weight) {
    const at::Tensor rectified =
        unpool2d_cpu_impl(y, switches, pool_kernel_size, pool_stride, pool_padding, unpooled_size, true);
    return at::conv_transpose2d(rectified, weight, bias, stride, padding, output_padding, groups, dilation)
        .contiguous(fmt);
  }
  const int64_t N = y.size(0), C = y.size(1), KH = conv.kh, KW = conv.kw;
  const int64_t Cout = conv.cout, HO = conv.ho, WO = conv.wo;
  at::Tensor bias_c;
  if (bias.has_value() && bias->defined()) bias_c = bias->contiguous();
  at::Tensor out = empty_output({N, Cout, HO, WO}, y.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const at::Tensor ys = y.contiguous(), ss = switches.contiguous();
  const ConvGeometry cg{stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], groups};
  std::atomic<bool> outside{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "deconv_step_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const int64_t cout_g = Cout / groups;
    const at::Tensor wt = weight.permute({0, 2, 3, 1}).to(c10::CppTypeToScalarType<acc>::value).contiguous();
    auto run = [&](auto kernel) {
      kernel(ys.const_data_ptr<scalar_t>(), ss.const_data_ptr<uint8_t>(), wt.const_data_ptr<acc>(),
             bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
             fmt == at::MemoryFormat::ChannelsLast, N, C, OH, OW, H, W, Cout, KH, KW, HO, WO, pg, cg, outside);
    };
    if (cout_g <= 4) {  // see sparse_deconv_positions
      run(sparse_deconv_positions<scalar_t>);
      return;
    }
    switch (cout_g) {
      case 1: run(sparse_deconv<scalar_t, 1>); break;
      case 2: run(sparse_deconv<scalar_t, 2>); break;
      case 3: run(sparse_deconv<scalar_t, 3>); break;
      case 4: run(sparse_deconv<scalar_t, 4>); break;
      default: run(sparse_deconv<scalar_t, 0>);
    }
  });
  TORCH_CHECK_VALUE(!outside.load(), "deconv_step: switches point outside their ", pg.kh, "x", pg.kw,
              " window or into the padding of the ", H, "x", W, " unpooled map");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(zfcore, CPU, m) { m.impl("deconv_step", &deconv_step_cpu); }

}  // namespace zfcore

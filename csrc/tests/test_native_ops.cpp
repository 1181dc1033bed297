// C++ unit test of the native CPU kernels, through the dispatcher, against ATen.
// Usage: test_native_ops <path to the zfcore ops library>
// Built and run by CMakeLists.txt (ctest); needs no Python.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace {

int failures = 0, passes = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAIL", what.c_str());
  (ok ? passes : failures)++;
}

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

void test_pool_and_unpool(bool channels_last) {
  const std::string layout = channels_last ? " (channels_last)" : " (NCHW)";
  at::manual_seed(channels_last ? 1 : 0);
  at::Tensor x = at::randn({3, 5, 13, 11});
  x.index_put_({0, 0, 2, 2}, std::nan(""));
  if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  const std::vector<int64_t> k{3, 3}, s{2, 2}, p{1, 1}, d{1, 1};
  auto pool = op("zfcore::max_pool2d_switches")
                  .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                                            at::IntArrayRef, bool)>();
  auto [out, switches] = pool.call(x, k, s, p, true);
  auto [expected, indices] = at::max_pool2d_with_indices(x, k, s, p, d, true);
  expect(at::equal(out.nan_to_num(), expected.nan_to_num()), "max_pool2d_switches equals max_pool2d" + layout);
  expect(switches.scalar_type() == at::kByte, "switches are uint8" + layout);

  at::Tensor y = at::randn(out.sizes());
  auto unpool = op("zfcore::unpool2d")
                    .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                      at::IntArrayRef, at::IntArrayRef)>();
  at::Tensor got = unpool.call(y, switches, k, s, p, {13, 11});
  at::Tensor want = at::max_pool2d_with_indices_backward(y, x, k, s, p, d, true, indices);
  expect(at::equal(got, want), "unpool2d equals max_pool2d backward bit for bit" + layout);
}

void test_deconv_step() {
  at::manual_seed(2);
  at::Tensor a = at::relu(at::randn({2, 6, 15, 15}));
  const std::vector<int64_t> k{3, 3}, s{2, 2}, p{0, 0}, d{1, 1};
  auto [pooled, indices] = at::max_pool2d_with_indices(a, k, s, p, d, true);
  auto pool = op("zfcore::max_pool2d_switches")
                  .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                                            at::IntArrayRef, bool)>();
  at::Tensor switches = std::get<1>(pool.call(a, k, s, p, true));
  at::Tensor y = at::randn(pooled.sizes(), at::kDouble);
  at::Tensor weight = at::randn({6, 4, 5, 5}, at::kDouble);
  auto step = op("zfcore::deconv_step")
                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                                    at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                    at::IntArrayRef, int64_t, at::IntArrayRef)>();
  at::Tensor got = step.call(y, switches, weight, std::nullopt, k, s, p, {15, 15}, {2, 2}, {1, 1}, {0, 0}, 1, d);
  at::Tensor unpooled = at::max_pool2d_with_indices_backward(y, a.to(at::kDouble), k, s, p, d, true, indices);
  at::Tensor want = at::conv_transpose2d(at::relu(unpooled), weight, {}, {2, 2}, {1, 1}, {0, 0}, 1, d);
  expect(got.sizes() == want.sizes() && at::allclose(got, want, 1e-12, 1e-12),
         "deconv_step equals unpool + relu + conv_transpose2d (float64)");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <libzfcore_ops.so>\n", argv[0]);
    return 2;
  }
  if (!dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL)) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 2;
  }
  test_pool_and_unpool(false);
  test_pool_and_unpool(true);
  test_deconv_step();
  std::printf("%d passed, %d failed\n", passes, failures);
  return failures == 0 ? 0 : 1;
}

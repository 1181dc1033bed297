"""zfcore.geometry against PyTorch itself on thousands of random geometries
(shapes from meta tensors: no arithmetic runs), and the receptive-field step
against a brute force over which input pixels reach a unit."""

import random

import pytest
import torch
import torch.nn.functional as F

from zfcore import geometry


def _geometries(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        kernel, stride, dilation = rng.randint(1, 7), rng.randint(1, 5), rng.randint(1, 3)
        padding = rng.randint(0, kernel // 2)
        size = rng.randint(geometry.extent(kernel, dilation), 40)
        yield size, kernel, stride, padding, dilation


def test_pool_output_size_equals_torch_in_floor_and_ceil_mode():
    for size, kernel, stride, padding, dilation in _geometries(0, 3000):
        x = torch.empty(1, 1, size, size + 1, device="meta")
        for ceil in (False, True):
            got = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil).shape[-2:]
            want = tuple(geometry.pool_output_size(n, kernel, stride, padding, ceil, dilation)
                         for n in (size, size + 1))
            assert tuple(got) == want, (size, kernel, stride, padding, dilation, ceil)


def test_conv_and_transposed_conv_sizes_and_output_padding_equal_torch():
    for size, kernel, stride, padding, dilation in _geometries(1, 3000):
        x = torch.empty(1, 2, size, size, device="meta")
        w = torch.empty(3, 2, kernel, kernel, device="meta")
        y = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
        assert y.shape[-1] == geometry.conv_output_size(size, kernel, stride, padding, dilation)
        extra = geometry.output_padding(size, y.shape[-1], kernel, stride, padding, dilation)
        assert 0 <= extra < max(stride, dilation)  # what conv_transpose2d accepts
        back = F.conv_transpose2d(y, w, stride=stride, padding=padding, output_padding=extra, dilation=dilation)
        assert back.shape[-1] == size  # the transpose returns the convolution's input size
        assert back.shape[-1] == geometry.conv_transpose_output_size(y.shape[-1], kernel, stride, padding, extra,
                                                                     dilation)


@pytest.mark.parametrize("seed", range(6))
def test_receptive_field_step_equals_a_brute_force_of_the_pixels_a_unit_sees(seed):
    rng = random.Random(seed)
    layers = [(rng.randint(1, 5), rng.randint(1, 3), rng.randint(0, 2), rng.randint(1, 2)) for _ in range(3)]
    size, jump, offset = 1, 1, 0.0
    n = 96
    x = torch.zeros(1, 1, n, dtype=torch.float64, requires_grad=True)
    y = x.unsqueeze(-1)
    for kernel, stride, padding, dilation in layers:
        padding = min(padding, kernel // 2)
        if y.shape[2] + 2 * padding < geometry.extent(kernel, dilation):
            break  # the map is used up
        size, jump, offset = geometry.receptive_field_step(size, jump, offset, kernel, stride, padding, dilation)
        y = F.conv2d(y, torch.ones(1, 1, kernel, 1, dtype=torch.float64), stride=(stride, 1),
                     padding=(padding, 0), dilation=(dilation, 1))
    for h in range(y.shape[2]):
        (grad,) = torch.autograd.grad(y[0, 0, h, 0], x, retain_graph=True)
        seen = torch.nonzero(grad[0, 0]).flatten()
        centre = offset + h * jump
        low, high = centre - (size - 1) / 2, centre + (size - 1) / 2
        assert len(seen) == 0 or (seen.min() >= low and seen.max() <= high), (h, layers)
        inside = [i for i in range(n) if low <= i <= high]
        if inside and len(seen) and all(d == 1 for *_, d in layers):  # dense windows reach every pixel inside
            assert seen.tolist() == inside, (h, layers)


def test_pair_names_the_argument():
    assert geometry.pair(3) == (3, 3) and geometry.pair((2, 5)) == (2, 5)
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        geometry.pair("x", "kernel_size")


DRIVER = r"""
#include <cstdio>
#include "geometry.h"
using namespace zfcore::geometry;
int main() {
  long long size, k, s, p, d, op;
  while (std::scanf("%lld %lld %lld %lld %lld %lld", &size, &k, &s, &p, &d, &op) == 6) {
    const int64_t conv = conv_output_size(size, k, s, p, d);
    const ReceptiveField rf = receptive_field_step({size, s + 1, p / 2.0}, k, s, p, d);
    std::printf("%lld %lld %lld %lld %lld %lld %lld %lld %.17g\n", (long long)extent(k, d),
                (long long)pool_output_size(size, k, s, p, false, d), (long long)pool_output_size(size, k, s, p, true, d),
                (long long)conv, (long long)conv_transpose_output_size(size, k, s, p, op, d),
                (long long)output_padding(size, conv, k, s, p, d), (long long)rf.size, (long long)rf.jump, rf.offset);
  }
}
"""


def test_the_native_geometry_header_agrees_with_the_python_module(tmp_path):
    """csrc/geometry.h (the C++ and CUDA side) and zfcore/geometry.py give the
    same sizes, output paddings and receptive fields on 6000 random geometries,
    padding up to the kernel, ceil mode and dilation included."""
    import os
    import shutil
    import subprocess

    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "driver.cpp").write_text(DRIVER)
    subprocess.run([compiler, "-std=c++17", "-O1", "-I", os.path.join(root, "csrc"), str(tmp_path / "driver.cpp"),
                    "-o", str(tmp_path / "driver")], check=True)
    rng = random.Random(7)
    cases = []
    for _ in range(6000):
        kernel, stride, dilation = rng.randint(1, 9), rng.randint(1, 6), rng.randint(1, 4)
        padding = rng.randint(0, kernel)  # past half the kernel too: the formulas must agree everywhere
        size = rng.randint(1, 60)
        cases.append((size, kernel, stride, padding, dilation, rng.randint(0, stride - 1)))
    out = subprocess.run([str(tmp_path / "driver")], input="\n".join(" ".join(map(str, c)) for c in cases),
                         capture_output=True, text=True, check=True).stdout.split("\n")
    for case, line in zip(cases, out, strict=False):
        size, k, s, p, d, op = case
        conv = geometry.conv_output_size(size, k, s, p, d)
        rf = geometry.receptive_field_step(size, s + 1, p / 2, k, s, p, d)
        want = [geometry.extent(k, d), geometry.pool_output_size(size, k, s, p, False, d),
                geometry.pool_output_size(size, k, s, p, True, d), conv,
                geometry.conv_transpose_output_size(size, k, s, p, op, d),
                geometry.output_padding(size, conv, k, s, p, d), rf[0], rf[1]]
        got = line.split()
        assert [int(v) for v in got[:8]] == want and float(got[8]) == rf[2], (case, got, want, rf)
    assert len([line for line in out if line]) == len(cases)
    assert sum(1 for c in cases if geometry.pool_output_size(c[0], c[1], c[2], c[3], True, c[4]) <= 0) > 0

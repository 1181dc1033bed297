"""max_pool2d_switches and unpool2d against PyTorch, bit for bit."""

import pytest
import torch
import torch.nn.functional as F

from zfcore import nn as zfnn
from zfcore.ops import deconv_step, max_pool2d_switches, switches_to_indices, unpool2d

from .helpers import AVAILABLE, BACKENDS, DTYPES, assert_close_verbose, interpreted, layouts_for, on
from .samples import pool_sample_inputs, unpool_sample_inputs


def _torch_pool(sample):
    return F.max_pool2d(sample.x, sample.kernel_size, sample.stride, sample.padding,
                        ceil_mode=sample.ceil_mode, return_indices=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_is_bit_identical_to_torch(backend, dtype):
    for sample in pool_sample_inputs(dtype, layouts_for(backend, dtype)):
        out, switches = max_pool2d_switches(on(backend, sample.x), *sample.args, backend=backend)
        expected, indices = _torch_pool(sample)
        what = sample.describe()
        assert switches.dtype == torch.uint8 and switches.shape == out.shape, what
        assert_close_verbose(out, expected, what=f"out of {what}")
        got = switches_to_indices(switches.cpu(), sample.x.shape, sample.kernel_size, sample.stride, sample.padding)
        assert torch.equal(got, indices), f"switches of {what}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_keeps_channels_last(backend):
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    out, switches = max_pool2d_switches(on(backend, x), 3, 2, ceil_mode=True, backend=backend)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert switches.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.cpu(), F.max_pool2d(x, 3, 2, ceil_mode=True))


def test_pool_semantics_on_handmade_windows():
    # First maximum wins ties (row-major), the last NaN wins (as ATen), and a
    # window of -inf gives its first element.
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[5.0, 1.0, 5.0, 2.0],
                      [5.0, nan, 3.0, nan],
                      [-inf, -inf, 7.0, 7.0],
                      [-inf, -inf, 7.0, 0.0]]).view(1, 1, 4, 4)
    for backend in AVAILABLE:
        out, switches = max_pool2d_switches(on(backend, x), 2, 2, backend=backend)
        out, switches = out.cpu(), switches.cpu()
        assert switches.view(-1).tolist() == [3, 3, 0, 0], backend
        assert out.view(-1)[2:].tolist() == [-inf, 7.0] and out.view(-1)[:2].isnan().all(), backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_unpool_is_bit_identical_to_aten_backward_float32(backend):
    for sample in unpool_sample_inputs(torch.float32):
        e = sample.extra
        got = unpool2d(on(backend, e["y"]), on(backend, e["switches"]), sample.kernel_size, sample.stride,
                       sample.padding, e["output_size"], backend=backend)
        _, indices = _torch_pool(sample)
        k, s, p = (F._pair(v) if v is not None else None for v in (sample.kernel_size, sample.stride, sample.padding))
        expected = torch.ops.aten.max_pool2d_with_indices_backward(
            e["y"].contiguous(), sample.x.contiguous(), list(k), list(s), list(p), [1, 1], sample.ceil_mode,
            indices.contiguous())
        assert_close_verbose(got, expected, what=sample.describe())


@pytest.mark.parametrize("backend", BACKENDS)
def test_unpool_float64_equals_the_reference(backend):
    for sample in unpool_sample_inputs(torch.float64):
        e = sample.extra
        got = unpool2d(on(backend, e["y"]), on(backend, e["switches"]), sample.kernel_size, sample.stride,
                       sample.padding, e["output_size"], backend=backend)
        exact = unpool2d(e["y"], e["switches"], sample.kernel_size, sample.stride, sample.padding,
                         e["output_size"], backend="reference")
        assert_close_verbose(got, exact, atol=1e-15, rtol=1e-15, what=sample.describe())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unpool_half_sums_in_float32_in_window_order_and_rounds_once(backend, dtype):
    """Half types accumulate in float32, adding the windows in row-major order
    (ATen's max-pool backward order), and round once: bit for bit that."""
    for sample in unpool_sample_inputs(dtype, layouts_for(backend, dtype)):
        e = sample.extra
        got = unpool2d(on(backend, e["y"]), on(backend, e["switches"]), sample.kernel_size, sample.stride,
                       sample.padding, e["output_size"], backend=backend)
        _, indices = _torch_pool(sample)
        k, s, p = (F._pair(v) if v is not None else None for v in (sample.kernel_size, sample.stride, sample.padding))
        wide = torch.ops.aten.max_pool2d_with_indices_backward(
            e["y"].float().contiguous(), sample.x.float().contiguous(), list(k), list(s), list(p), [1, 1],
            sample.ceil_mode, indices.contiguous())
        assert_close_verbose(got, wide.to(dtype), what=sample.describe())
    # Peaks chosen by all nine overlapping 3x3/s1 windows: sums of up to nine terms
    # of mixed magnitudes, where rounding at every addition would give other bits
    # (measured: 22 of 288 positions in float16, 16 in bfloat16).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 12, 12, generator=g)
    x[..., ::4, ::4] += 10
    _, switches = max_pool2d_switches(x, 3, 1, padding=1)
    y = (torch.randn(switches.shape, generator=g) * torch.logspace(-3, 3, switches.shape[-1])).to(dtype)
    got = unpool2d(on(backend, y), on(backend, switches), 3, 1, 1, output_size=x.shape, backend=backend)
    _, indices = F.max_pool2d(x, 3, 1, 1, return_indices=True)
    wide = torch.ops.aten.max_pool2d_with_indices_backward(y.float(), x, [3, 3], [1, 1], [1, 1], [1, 1], False,
                                                            indices)
    assert_close_verbose(got, wide.to(dtype), what=f"nine-window peaks, {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unpool_is_the_adjoint_of_pooling(backend):
    # <P x, y> == <x, U y> where P gathers at the switches and U = unpool2d.
    for sample in unpool_sample_inputs(torch.float64):
        e = sample.extra
        x = torch.randn(sample.x.shape, dtype=torch.float64)
        gathered = torch.gather(x.flatten(2), 2, switches_to_indices(
            e["switches"], sample.x.shape, sample.kernel_size, sample.stride, sample.padding).flatten(2))
        lhs = (gathered * e["y"].reshape(gathered.shape)).sum()
        rhs = (x * unpool2d(on(backend, e["y"]), on(backend, e["switches"]), sample.kernel_size, sample.stride,
                            sample.padding, e["output_size"], backend=backend).cpu()).sum()
        torch.testing.assert_close(lhs, rhs, msg=lambda generated, what=sample.describe(): f"{what}: {generated}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_unpool_is_bit_identical_over_100_runs(backend, channels_last):
    x = torch.randn(2, 8, 27, 27) if interpreted(backend) else torch.randn(4, 32, 27, 27)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = on(backend, x)
    _, switches = max_pool2d_switches(x, 3, 2, ceil_mode=True, backend=backend)
    y = on(backend, torch.randn(switches.shape) * torch.logspace(-6, 6, switches.shape[-1]))  # sums that round
    first = unpool2d(y, switches, 3, 2, output_size=x.shape, backend=backend)
    for _ in range(4 if interpreted(backend) else 99):  # the CPU interpreter is slow and serial anyway
        assert torch.equal(unpool2d(y, switches, 3, 2, output_size=x.shape, backend=backend), first)


def test_max_unpool2d_is_not_the_transpose_on_overlapping_windows():
    # ZFNet-like pool1: overlapping 3x3/s2 windows. Positions chosen by two
    # windows must receive the sum; F.max_unpool2d keeps only one of them.
    x = torch.randn(4, 16, 55, 55)
    out, indices = F.max_pool2d(x, 3, 2, ceil_mode=True, return_indices=True)
    y = torch.rand(out.shape) + 0.5
    transpose = torch.ops.aten.max_pool2d_with_indices_backward(y, x, [3, 3], [2, 2], [0, 0], [1, 1], True, indices)
    overwritten = F.max_unpool2d(y, indices, 3, 2, output_size=x.shape[-2:])
    assert (overwritten != transpose).float().mean() > 0.01
    _, switches = max_pool2d_switches(x, 3, 2, ceil_mode=True)
    assert torch.equal(unpool2d(y, switches, 3, 2, output_size=x.shape), transpose)


def test_unpool_default_output_size_and_full_shape():
    x = torch.randn(1, 2, 8, 8)
    out, switches = max_pool2d_switches(x, 2, 2)
    assert unpool2d(out, switches, 2).shape == x.shape
    assert unpool2d(out, switches, 2, output_size=x.shape).shape == x.shape


def test_modules_match_torch():
    x = torch.randn(2, 5, 13, 13)
    pool = zfnn.MaxPool2dSwitches(3, 2, ceil_mode=True)
    assert torch.equal(pool(x), torch.nn.MaxPool2d(3, 2, ceil_mode=True)(x))
    out, switches = zfnn.MaxPool2dSwitches(3, 2, ceil_mode=True, return_switches=True)(x)
    restored = zfnn.Unpool2d(3, 2)(out, switches, x.shape)
    _, indices = F.max_pool2d(x, 3, 2, ceil_mode=True, return_indices=True)
    expected = torch.ops.aten.max_pool2d_with_indices_backward(out, x, [3, 3], [2, 2], [0, 0], [1, 1], True, indices)
    assert torch.equal(restored, expected)
    assert "kernel_size=(3, 3)" in repr(pool)


@pytest.mark.skipif("cpu" not in AVAILABLE, reason="the C++ CPU backend is not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_unpool_of_fewer_images_than_threads(dtype):
    # With fewer images than threads the CPU kernel splits each image's channels
    # into cache-line blocks (the other branch: one pass per image). The test
    # workers run one thread each, so two are set here for the call.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(1, 37, 15, 13, dtype=torch.float64)  # 37 channels: a partial last block
        x[0, :, 4:7, 4:7] = 1.0  # ties
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        out, switches = max_pool2d_switches(x, 3, 2, 1, True)
        y = torch.randn_like(out.float()).to(dtype)
        got = unpool2d(y, switches, 3, 2, 1, x.shape[-2:], backend="cpu")
        exact = unpool2d(y.double(), switches, 3, 2, 1, x.shape[-2:], backend="reference")
        assert got.is_contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32:  # bit for bit ATen's max-pool backward
            _, indices = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
            expected = torch.ops.aten.max_pool2d_with_indices_backward(y, x, [3, 3], [2, 2], [1, 1], [1, 1], True,
                                                                       indices)
            assert torch.equal(got, expected)
        else:  # summed in float32, rounded once
            torch.testing.assert_close(got.double(), exact, rtol=torch.finfo(dtype).eps, atol=1e-6)
        # deconv_step's unpooling (with the ReLU, through the float buffer) takes the same branch.
        weight = torch.randn(37, 4, 3, 3, dtype=torch.float64).to(dtype)
        step = deconv_step(y, switches, weight, pool_kernel_size=3, pool_stride=2, pool_padding=1,
                           unpooled_size=x.shape[-2:], stride=1, padding=1, backend="cpu")
        expected = F.conv_transpose2d(F.relu(exact), weight.double(), None, 1, 1)
        scale = expected.abs().max().item()
        torch.testing.assert_close(step.double(), expected, rtol=0, atol=64 * torch.finfo(dtype).eps * scale)
    finally:
        torch.set_num_threads(threads)

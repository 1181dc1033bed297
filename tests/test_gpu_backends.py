"""The GPU backends (triton, cuda) as PyTorch sees them: opcheck, torch.compile,
the automatic choice, agreement at ZFNet's shapes, and the deconvnet engine on
a GPU. Without a GPU the triton backend runs here in Triton's CPU interpreter
(tests/conftest.py); the cuda backend needs a GPU and a CUDA build."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zfcore
from zfcore.ops import backend_choice, deconv_step, max_pool2d_switches, relu_conv_transpose2d, unpool2d

from .helpers import assert_close_verbose, device_of, interpreted, on
from .samples import conv_sample_inputs, deconv_sample_inputs, pool_sample_inputs, unpool_sample_inputs

REPO = Path(__file__).resolve().parents[1]

INFO = zfcore.backends()
GPU_BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(not INFO[name].available, reason=INFO[name].reason))
    for name in ("triton", "cuda")
]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _namespace(backend):
    return torch.ops.zfcore_triton if backend == "triton" else torch.ops.zfcore


def _pair(v):
    return list(F._pair(v))


def _grad(t):
    return t.detach().requires_grad_() if t.is_floating_point() else t


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_opcheck_gpu_backend(backend):
    ops = _namespace(backend)
    dtype = torch.float32 if backend == "triton" and not interpreted(backend) else torch.float64
    sparse = 3 if interpreted(backend) else 1  # the CPU interpreter is slow: fewer samples there
    for i, sample in enumerate(pool_sample_inputs(dtype, contents=("random",))):
        if i % (7 * sparse) == 0:
            args = (_pair(sample.kernel_size), _pair(sample.stride or sample.kernel_size), _pair(sample.padding))
            torch.library.opcheck(ops.max_pool2d_switches.default,
                                  (_grad(on(backend, sample.x)), *args, sample.ceil_mode))
    for i, sample in enumerate(unpool_sample_inputs(dtype)):
        if i % (9 * sparse) == 0:
            e = sample.extra
            k, s, p = _pair(sample.kernel_size), _pair(sample.stride or sample.kernel_size), _pair(sample.padding)
            y, switches = on(backend, e["y"]), on(backend, e["switches"])
            torch.library.opcheck(ops.unpool2d.default, (_grad(y), switches, k, s, p, list(e["output_size"])))
            x = on(backend, torch.randn(sample.x.shape, dtype=dtype))
            torch.library.opcheck(ops.gather_switches.default, (_grad(x), switches, k, s, p))
    for sample in list(conv_sample_inputs(dtype, layouts=("nchw", "channels_last")))[::5 * sparse]:
        st, pd, op, groups, d = sample.conv
        args = (_pair(st), _pair(pd), _pair(op), groups, _pair(d))
        torch.library.opcheck(ops.relu_conv_transpose2d.default,
                              (_grad(on(backend, sample.y)), _grad(on(backend, sample.weight)),
                               _grad(on(backend, sample.bias)) if sample.bias is not None else None, *args))
    for sample in list(deconv_sample_inputs(dtype, layouts=("nchw", "channels_last")))[::3 * sparse]:
        kw = sample.kwargs
        torch.library.opcheck(ops.deconv_step.default, (
            _grad(on(backend, sample.y)), on(backend, sample.switches), _grad(on(backend, sample.weight)), None,
            _pair(kw["pool_kernel_size"]), _pair(kw["pool_stride"]), _pair(kw["pool_padding"]),
            list(kw["unpooled_size"]), _pair(kw["stride"]), _pair(kw["padding"]), _pair(kw["output_padding"]),
            kw["groups"], _pair(kw["dilation"])))


class TinyDeconvNet(torch.nn.Module):
    """conv -> relu -> pool, then the deconvnet's way down, on one backend."""

    def __init__(self, backend):
        super().__init__()
        self.backend = backend
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=2, padding=1)

    def forward(self, x):
        a = F.relu(self.conv(x))
        pooled, switches = max_pool2d_switches(a, 3, 2, ceil_mode=True, backend=self.backend)
        down = unpool2d(pooled, switches, 3, 2, output_size=a.shape, backend=self.backend)
        rec = relu_conv_transpose2d(down, self.conv.weight, stride=2, padding=1, output_padding=1,
                                    backend=self.backend)
        fused = deconv_step(pooled, switches, self.conv.weight, pool_kernel_size=3, pool_stride=2,
                            unpooled_size=a.shape[-2:], stride=2, padding=1, output_padding=1, backend=self.backend)
        return rec, fused


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_torch_compile_fullgraph_on_gpu_backend(backend):
    torch._dynamo.reset()
    model = TinyDeconvNet(backend).to(device_of(backend)).double()
    x = on(backend, torch.randn(2, 3, 32, 32, dtype=torch.float64)).requires_grad_()
    eager = model(x)
    # Inductor compiles Triton for CUDA tensors; in the CPU interpreter the
    # graph is traced (fake kernels, wrap_triton) and run by aot_eager.
    compiler = "aot_eager" if interpreted(backend) else "inductor"
    compiled = torch.compile(model, fullgraph=True, backend=compiler)(x)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)
    (compiled[0].sum() + compiled[1].sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch._dynamo.explain(model)(x).graph_break_count == 0


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_switches_outside_their_window_write_nothing(backend):
    # GPU kernels cannot raise: a switch outside its window matches no position.
    y = on(backend, torch.randn(1, 1, 3, 3))
    bad = on(backend, torch.full((1, 1, 3, 3), 9, dtype=torch.uint8))
    out = unpool2d(y, bad, 2, 2, output_size=(6, 6), backend=backend)
    assert out.shape == (1, 1, 6, 6) and bool((out == 0).all())
    x = on(backend, torch.randn(1, 1, 6, 6))
    gathered = _namespace(backend).gather_switches(x, bad, [2, 2], [2, 2], [0, 0])
    assert gathered.shape == (1, 1, 3, 3) and bool((gathered == 0).all())
    # Switch 12 of a 3x3 window is row 4, column 0: outside the window but inside
    # x (the CPU backend raises; a GPU kernel must not read that element).
    x7 = on(backend, torch.arange(1.0, 50.0).view(1, 1, 7, 7))
    inside_x = on(backend, torch.full((1, 1, 3, 3), 12, dtype=torch.uint8))
    assert bool((_namespace(backend).gather_switches(x7, inside_x, [3, 3], [2, 2], [0, 0]) == 0).all())
    assert bool((unpool2d(y, inside_x, 3, 2, output_size=(7, 7), backend=backend) == 0).all())


def test_automatic_choice_follows_the_measured_table():
    x = torch.zeros(1, 1, 2, 2)
    assert backend_choice.resolve("unpool2d", x, None) == ("cpu" if INFO["cpu"].available else "reference")
    assert set(backend_choice.GPU_PREFERENCE) == set(backend_choice.OPS)
    for op, first in backend_choice.GPU_PREFERENCE.items():
        assert first in ("triton", "cuda") or (first == "torch" and op in backend_choice.TORCH_PATH_OPS), (op, first)
    if torch.cuda.is_available():
        for op, first in backend_choice.GPU_PREFERENCE.items():
            chosen = backend_choice.resolve(op, x.cuda(), None)
            if first == "torch":
                assert chosen == "torch"
            else:
                assert chosen == first if INFO[first].available else chosen in ("triton", "cuda", "reference")


def test_preference_file_is_read_with_care(tmp_path):
    path = tmp_path / "gpu_preference.json"
    path.write_text('{"fastest": {"unpool2d": "triton", "deconv_step": "torch", "max_pool2d_switches": "torch", '
                    '"relu_conv_transpose2d": "rm -rf", "nonsense": "cuda"}}')
    table = backend_choice._load_preference(path)
    assert table["unpool2d"] == "triton" and table["deconv_step"] == "torch"
    # "torch" only for the ops that end in a transposed convolution; junk ignored.
    assert table["max_pool2d_switches"] == backend_choice._DEFAULT_PREFERENCE["max_pool2d_switches"]
    assert table["relu_conv_transpose2d"] == backend_choice._DEFAULT_PREFERENCE["relu_conv_transpose2d"]
    assert "nonsense" not in table
    path.write_text("not json")
    assert backend_choice._load_preference(path) == backend_choice._DEFAULT_PREFERENCE


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_torch_path_is_the_exact_composition(layout):
    # deconv_step through PyTorch's transposed convolution: zfcore's unpooling on
    # the fastest backend for the tensor, then relu + F.conv_transpose2d; equal to
    # the reference composition bit for bit (the unpooling is exact in float32).
    g = torch.Generator().manual_seed(3)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    a = torch.randn(2, 6, 11, 11, generator=g).contiguous(memory_format=fmt)
    y, switches = max_pool2d_switches(a, 3, 2, ceil_mode=True)
    y = torch.randn(y.shape, generator=g).contiguous(memory_format=fmt)
    weight, bias = torch.randn(6, 3, 5, 5, generator=g), torch.randn(3, generator=g)
    args = (y, switches, weight, bias, [3, 3], [2, 2], [0, 0], [11, 11], [2, 2], [1, 1], [0, 0], 1, [1, 1])
    got = backend_choice.torch_path("deconv_step", y, *args)
    expected = zfcore.ops.reference.deconv_step(*args)
    assert torch.equal(got, expected) and got.abs().sum() > 0
    assert got.is_contiguous(memory_format=fmt)
    conv = backend_choice.torch_path("relu_conv_transpose2d", y, y, weight, bias, [2, 2], [1, 1], [0, 0], 1, [1, 1])
    assert torch.equal(conv, F.conv_transpose2d(F.relu(y), weight, bias, 2, 1, 0).contiguous(memory_format=fmt))
    with pytest.raises(ValueError, match="unpool2d has no PyTorch path"):
        backend_choice.torch_path("unpool2d", y, y)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_backends_agree_with_torch_at_zfnet_layer1(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(8, 96, 110, 110, device="cuda", generator=g).to(dtype)
    y = torch.randn(8, 96, 55, 55, device="cuda", generator=g).to(dtype)
    weight = (torch.randn(96, 3, 7, 7, device="cuda", generator=g) * 0.05).to(dtype)
    expected, indices = F.max_pool2d(a, 3, 2, ceil_mode=True, return_indices=True)
    unpooled = torch.ops.aten.max_pool2d_with_indices_backward(y, a, [3, 3], [2, 2], [0, 0], [1, 1], True, indices)
    exact = F.conv_transpose2d(F.relu(unpooled.double()), weight.double(), None, 2, 1, 1)
    with torch.backends.cudnn.flags(allow_tf32=False):  # PyTorch's own error in IEEE float32, not tf32
        torch_own = F.conv_transpose2d(F.relu(unpooled), weight, None, 2, 1, 1)
    for backend in [name for name in ("triton", "cuda") if INFO[name].available]:
        out, switches = max_pool2d_switches(a, 3, 2, ceil_mode=True, backend=backend)
        assert torch.equal(out, expected), backend
        assert torch.equal(zfcore.ops.switches_to_indices(switches, a.shape, 3, 2), indices), backend
        got = unpool2d(y, switches, 3, 2, output_size=a.shape, backend=backend)
        if dtype == torch.float32:
            assert torch.equal(got, unpooled), backend
        fused = deconv_step(y, switches, weight, pool_kernel_size=3, pool_stride=2, unpooled_size=(110, 110),
                            stride=2, padding=1, output_padding=1, backend=backend)
        error = (fused.double() - exact).abs().max().item()
        assert error <= 2 * (torch_own.double() - exact).abs().max().item() + 1e-6, (backend, error)


@needs_gpu
def test_deconvnet_engine_on_gpu_equals_cpu():
    from zfcore.deconv import Deconvnet
    from zfcore.models import zfnet_small

    torch.manual_seed(0)
    model = zfnet_small().eval()
    images = torch.randn(3, 3, 64, 64)
    cpu = Deconvnet(model, (3, 64, 64)).project(images, "relu5", 3)
    with torch.backends.cudnn.flags(allow_tf32=False):
        gpu = Deconvnet(model.cuda(), (3, 64, 64)).project(images.cuda(), "relu5", 3)
    scale = cpu.abs().max().item()
    assert scale > 0, "the projection is all zeros: pick another channel"
    assert_close_verbose(gpu.cpu(), cpu, atol=1e-4 * scale, rtol=1e-3, what="relu5 projection")


@pytest.mark.skipif(not zfcore.ops.REGISTRATION.triton, reason="Triton not importable")
def test_every_triton_kernel_compiles_for_sm90_without_a_gpu():
    # triton.compile of each kernel variant as the launchers launch it (fp32 with
    # tf32 on and off, bf16, fp16, fp64, both layouts), for the H100/H200 target.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(REPO / "tools" / "compile_check.py"), "--arch", "90"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all variants compiled" in result.stdout
    assert result.stdout.count("conv_transpose_kernel") >= 20


@pytest.mark.parametrize("backend", [p for p in ("reference", "cpu", "triton", "cuda")])
def test_relu_conv_transpose2d_returns_the_layout_of_y(backend):
    # A channels-last weight does not change the output's layout (ATen's CUDA and
    # CPU convolutions would follow it): the fake kernel and every backend agree.
    if not INFO[backend].available:
        pytest.skip(INFO[backend].reason)
    y = on(backend, torch.randn(2, 8, 5, 5, dtype=torch.float64))
    weight = on(backend, torch.randn(8, 3, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last))
    out = relu_conv_transpose2d(y, weight, None, 2, 1, 1, backend=backend)
    assert out.is_contiguous()
    if backend != "reference":
        ops = _namespace(backend)
        torch.library.opcheck(ops.relu_conv_transpose2d.default,
                              (y.requires_grad_(), weight.requires_grad_(), None, [2, 2], [1, 1], [1, 1], 1, [1, 1]))

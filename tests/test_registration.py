"""The ops as PyTorch sees them: schemas, opcheck, torch.compile, backend choice,
the fallback without the native library, and errors for bad input."""

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import zfcore
from zfcore.ops import REGISTRATION, deconv_step, max_pool2d_switches, relu_conv_transpose2d, unpool2d
from zfcore.ops.schemas import SCHEMAS

from .samples import conv_sample_inputs, deconv_sample_inputs, pool_sample_inputs, unpool_sample_inputs

NATIVE = REGISTRATION.native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ops = torch.ops.zfcore


def _cpp_schemas() -> dict[str, str]:
    """The schemas as csrc/registration.cpp writes them (m.def string literals)."""
    source = open(os.path.join(REPO, "csrc", "registration.cpp")).read()
    schemas = {}
    for block in re.findall(r"m\.def\(((?:\s*\"[^\"]*\")+)\s*\)", source):
        text = "".join(re.findall(r"\"([^\"]*)\"", block))
        schemas[text.split("(")[0]] = text
    return schemas


def test_python_schemas_equal_the_cpp_ones():
    """zfcore/ops/schemas.py (used without the native library) against the
    source of csrc/registration.cpp, whether or not the library is built."""
    cpp = _cpp_schemas()
    assert sorted(cpp) == sorted(SCHEMAS)
    for name, schema in SCHEMAS.items():
        assert torch._C.parse_schema(f"zfcore::{schema}") == torch._C.parse_schema(f"zfcore::{cpp[name]}"), name


@pytest.mark.skipif(not NATIVE, reason="native library not built")
def test_registered_schemas_are_the_native_ones():
    for name, schema in _cpp_schemas().items():
        assert str(getattr(ops, name).default._schema) == str(torch._C.parse_schema(f"zfcore::{schema}")), name


def _loose(schema) -> list[tuple[str, str]]:
    """(name, type) of each argument and return, with the integer types PyTorch
    infers for Python signatures (int -> SymInt, int[2] -> SymInt[])."""
    def kind(t):
        return re.sub(r"\[\d\]", "[]", str(t)).replace("SymInt", "int")
    return ([(a.name, kind(a.type)) for a in schema.arguments]
            + [("return", kind(r.type)) for r in schema.returns])


@pytest.mark.skipif(not REGISTRATION.triton, reason="Triton not importable")
def test_triton_ops_are_defined_from_the_same_schemas():
    for name, schema in SCHEMAS.items():
        triton = getattr(torch.ops.zfcore_triton, name).default._schema
        assert _loose(triton) == _loose(torch._C.parse_schema(f"zfcore::{schema}")), name


def test_register_is_idempotent_and_says_what_it_registered():
    again = zfcore.ops.register()
    assert again is REGISTRATION
    assert REGISTRATION.native == (REGISTRATION.native_error is None)
    assert REGISTRATION.triton == (REGISTRATION.triton_error is None)
    assert zfcore.backends()["cpu"].available == REGISTRATION.native
    for name in SCHEMAS:  # every op has its fake and autograd kernels, on both namespaces
        for namespace in ("zfcore", "zfcore_triton") if REGISTRATION.triton else ("zfcore",):
            qualified = f"{namespace}::{name}"
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "Meta"), qualified
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "Autograd"), qualified


def test_the_runtime_package_does_not_patch_triton():
    # The interpreter fix lives in tools/ (the tests load it); importing zfcore
    # in a fresh process leaves Triton's interpreter as it is.
    code = ("import os; os.environ['TRITON_INTERPRET'] = '1'\n"
            "import zfcore, torch\n"
            "from triton.runtime import interpreter\n"
            "print(getattr(interpreter._patch_lang_tensor, '_zfcore_patched', False))\n"
            "print(any(m.startswith('zfcore.') and 'compile_check' in m for m in __import__('sys').modules))")
    if not REGISTRATION.triton:
        pytest.skip("Triton not importable")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def _grad(t):
    return t.detach().requires_grad_() if t.is_floating_point() else t


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontiguous"])
def test_opcheck_every_op(layout):
    for i, sample in enumerate(pool_sample_inputs(torch.float64, layouts=(layout,), contents=("random",))):
        if i % 3 == 0:  # a third of the geometries keeps the test quick
            torch.library.opcheck(ops.max_pool2d_switches.default,
                                  (_grad(sample.x), *_normalized(sample), sample.ceil_mode))
    for i, sample in enumerate(unpool_sample_inputs(torch.float64, layouts=(layout,))):
        if i % 3 == 0:
            e = sample.extra
            k, s, p = _normalized(sample)
            torch.library.opcheck(ops.unpool2d.default, (_grad(e["y"]), e["switches"], k, s, p, list(e["output_size"])))
            torch.library.opcheck(ops.gather_switches.default,
                                  (_grad(torch.randn(sample.x.shape, dtype=torch.float64)), e["switches"], k, s, p))
    for sample in list(conv_sample_inputs(torch.float64, layouts=(layout,)))[::3]:
        s, p, op, groups, d = (zfcore.ops.checks.pair("t", "a", v, minimum=0) if not isinstance(v, int) or j != 3
                               else v for j, v in enumerate(sample.conv))
        bias = _grad(sample.bias) if sample.bias is not None else None
        torch.library.opcheck(ops.relu_conv_transpose2d.default,
                              (_grad(sample.y), _grad(sample.weight), bias, s, p, op, groups, d))
    for sample in deconv_sample_inputs(torch.float64, layouts=(layout,)):
        kw = sample.kwargs
        pair = lambda v: list(F._pair(v))  # noqa: E731
        torch.library.opcheck(ops.deconv_step.default, (
            _grad(sample.y), sample.switches, _grad(sample.weight), None, pair(kw["pool_kernel_size"]),
            pair(kw["pool_stride"]), pair(kw["pool_padding"]), list(kw["unpooled_size"]), pair(kw["stride"]),
            pair(kw["padding"]), pair(kw["output_padding"]), kw["groups"], pair(kw["dilation"])))


def _normalized(sample):
    return zfcore.ops.checks.pool_geometry("test", sample.kernel_size, sample.stride, sample.padding)


class TinyDeconvNet(torch.nn.Module):
    """conv -> relu -> pool, then the deconvnet's way down, all on zfcore ops."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=2, padding=1)

    def forward(self, x):
        a = F.relu(self.conv(x))
        pooled, switches = max_pool2d_switches(a, 3, 2, ceil_mode=True)
        down = unpool2d(pooled, switches, 3, 2, output_size=a.shape)
        rec = relu_conv_transpose2d(down, self.conv.weight, stride=2, padding=1, output_padding=1)
        fused = deconv_step(pooled, switches, self.conv.weight, pool_kernel_size=3, pool_stride=2,
                            unpooled_size=a.shape[-2:], stride=2, padding=1, output_padding=1)
        return rec, fused


def test_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    model = TinyDeconvNet()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)(x)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)
    (compiled[0].sum() + compiled[1].sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0


def test_backends_report():
    info = zfcore.backends()
    assert set(info) == {"reference", "cpu", "triton", "cuda"}
    assert info["reference"].available
    assert info["cpu"].available == NATIVE
    for name, item in info.items():
        assert item.reason, name


def test_backend_argument_and_errors():
    x = torch.randn(1, 2, 6, 6)
    torch.testing.assert_close(max_pool2d_switches(x, 2, backend="reference")[0], F.max_pool2d(x, 2))
    with pytest.raises(ValueError, match="backend must be one of"):
        max_pool2d_switches(x, 2, backend="fastest")
    if zfcore.backends()["cuda"].available:  # built, with a GPU: it refuses CPU tensors
        with pytest.raises(ValueError, match="backend='cuda' runs on cuda tensors"):
            max_pool2d_switches(x, 2, backend="cuda")
    else:
        with pytest.raises(RuntimeError, match="backend='cuda' is not available"):
            max_pool2d_switches(x, 2, backend="cuda")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=300)


def test_zfcore_backend_environment_variable():
    code = ("import torch, zfcore.ops.backend_choice as b; x = torch.zeros(1); "
            "print(b.resolve('op', x, None)); print(b.resolve('op', x, 'reference'))")
    result = _run(code, ZFCORE_BACKEND="reference")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["reference", "reference"]
    bad = _run("import torch, zfcore; zfcore.ops.max_pool2d_switches(torch.zeros(1, 1, 2, 2), 2)",
               ZFCORE_BACKEND="gpu9")
    assert bad.returncode != 0 and "ZFCORE_BACKEND must be one of" in bad.stderr


def test_fallback_without_native_library_warns_once_and_works():
    code = (
        "import sys, warnings, torch\n"
        "sys.modules['zfcore._C'] = None  # as if the build were missing\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import zfcore\n"
        "    x = torch.randn(2, 3, 9, 9)\n"
        "    out, sw = zfcore.ops.max_pool2d_switches(x, 3, 2, ceil_mode=True)\n"
        "    out2, sw2 = torch.ops.zfcore.max_pool2d_switches(x, [3, 3], [2, 2], [0, 0], True)\n"
        "    zfcore.ops.unpool2d(out, sw, 3, 2, output_size=x.shape)\n"
        "assert torch.equal(out, torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True)) and torch.equal(sw, sw2)\n"
        "print(sum('native library is not available' in str(w.message) for w in caught))\n"
        "print(zfcore.backends()['cpu'].available)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "False"]


BAD_INPUTS = [
    (lambda: max_pool2d_switches(torch.randn(2, 9, 9), 3), ValueError, "x must be 4-D"),
    (lambda: max_pool2d_switches(torch.randn(1, 1, 20, 20), 17), ValueError, "at most 256"),
    (lambda: max_pool2d_switches(torch.randn(1, 1, 9, 9), 3, padding=2), ValueError, "padding .* at most half"),
    (lambda: max_pool2d_switches(torch.randn(1, 1, 9, 9), 0), ValueError, "kernel_size must be >= 1"),
    (lambda: max_pool2d_switches(torch.randn(1, 1, 9, 9), 3, stride=0), ValueError, "stride must be >= 1"),
    (lambda: max_pool2d_switches(torch.randn(1, 1, 1, 1), 5, padding=1), ValueError, "too small"),
    (lambda: max_pool2d_switches(torch.ones(1, 1, 4, 4, dtype=torch.int32), 2), TypeError, "x must be float32"),
    (lambda: max_pool2d_switches(torch.randn(1, 1, 4, 4), (2, 2, 2)), TypeError, "kernel_size must be an int"),
    (lambda: unpool2d(torch.randn(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.int64), 2), ValueError,
     r"switches must be uint8 with the shape of y \[1, 2, 3, 3\] \(got int64"),
    (lambda: unpool2d(torch.randn(1, 2, 3, 3), torch.zeros(1, 2, 3, 4, dtype=torch.uint8), 2), ValueError,
     "switches must be uint8 with the shape of y"),
    (lambda: unpool2d(torch.randn(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.uint8), 2, output_size=(9, 9)),
     ValueError, r"output_size \(9, 9\) cannot be pooled"),
    (lambda: unpool2d(torch.randn(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.uint8, device="meta"), 2),
     ValueError, "all tensors must be on one device"),
    (lambda: relu_conv_transpose2d(torch.randn(1, 4, 5, 5), torch.randn(3, 2, 3, 3)), ValueError,
     "y has 4 channels but weight"),
    (lambda: relu_conv_transpose2d(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3).double()), TypeError,
     "weight must have y's dtype"),
    (lambda: relu_conv_transpose2d(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3), output_padding=1), ValueError,
     "output_padding"),
    (lambda: deconv_step(torch.randn(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.uint8), torch.randn(2, 1, 3, 3),
                         pool_kernel_size=2, unpooled_size=(9, 9)), ValueError, r"unpooled_size \(9, 9\) cannot"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not NATIVE, reason="native library not built")
def test_native_kernels_reject_switches_that_point_outside():
    y = torch.randn(1, 1, 3, 3)
    with pytest.raises(ValueError, match="outside their 2x2 window"):
        ops.unpool2d(y, torch.full((1, 1, 3, 3), 9, dtype=torch.uint8), [2, 2], [2, 2], [0, 0], [6, 6])
    with pytest.raises(ValueError, match="into the padding"):  # offset 0 of a padded corner window
        ops.unpool2d(y, torch.zeros(1, 1, 3, 3, dtype=torch.uint8), [2, 2], [2, 2], [1, 1], [5, 5])
    with pytest.raises(ValueError, match="gather_switches: switches point outside their 2x2 window or into the padding"):
        ops.gather_switches(torch.randn(1, 1, 5, 5), torch.zeros(1, 1, 3, 3, dtype=torch.uint8), [2, 2], [2, 2], [1, 1])


@pytest.mark.skipif(not NATIVE, reason="native library not built")
def test_direct_cpu_calls_only_where_nothing_is_lost():
    # The Python API calls the native CPU kernel below the dispatcher's autograd
    # and mode layers only when nothing needs them: no gradient to record, no
    # Python mode, no subclass, no functorch wrapper.
    from torch.utils._python_dispatch import TorchDispatchMode

    from zfcore.ops import backend_choice

    x = torch.randn(2, 3, 9, 9)
    assert backend_choice._direct((x, [3, 3]))
    w = x.clone().requires_grad_()
    assert not backend_choice._direct((w,))
    with torch.no_grad():
        assert backend_choice._direct((w,))

    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Log():
        assert not backend_choice._direct((x,))
        out, switches = max_pool2d_switches(x, 3, 2, ceil_mode=True)
        unpool2d(out, switches, 3, 2, output_size=x.shape)
    assert any("zfcore.max_pool2d_switches" in s for s in seen) and any("zfcore.unpool2d" in s for s in seen)
    # The direct call is the registered op's kernel: the same results, the same errors.
    direct_out, direct_switches = max_pool2d_switches(x, 3, 2, ceil_mode=True)
    out2, switches2 = torch.ops.zfcore.max_pool2d_switches(x, [3, 3], [2, 2], [0, 0], True)
    assert torch.equal(direct_out, out2) and torch.equal(direct_switches, switches2) and torch.equal(out, out2)
    # Tensors the dispatcher must handle (a negative view) and calls it must see
    # (a jit trace, the profiler) take the registered op.
    negative = torch._neg_view(x)
    assert not backend_choice._direct((negative,))
    assert torch.equal(max_pool2d_switches(negative, 3, 2, ceil_mode=True)[0],
                       F.max_pool2d(-x, 3, 2, ceil_mode=True))
    traced = torch.jit.trace(lambda t: max_pool2d_switches(t, 3, 2, ceil_mode=True)[0], x)
    other = torch.randn(2, 3, 9, 9)
    assert torch.equal(traced(other), F.max_pool2d(other, 3, 2, ceil_mode=True))
    with torch.profiler.profile() as prof:
        max_pool2d_switches(x, 3, 2, ceil_mode=True)
    assert any("zfcore::max_pool2d_switches" in e.name for e in prof.events())
    with pytest.raises(ValueError, match="outside their 3x3 window"):
        unpool2d(out, torch.full_like(switches, 200), 3, 2, output_size=x.shape)
    # And gradients still flow where they are asked for.
    pooled, s = max_pool2d_switches(w, 3, 2, ceil_mode=True)
    pooled.sum().backward()
    assert w.grad is not None and w.grad.sum().item() == pytest.approx(pooled.numel())


# ------------------------------------------------------- checks, once per call


def _counting_checkers(monkeypatch):
    """Counts the calls of every op's checker in zfcore/ops/checks.py, both as
    the Python API calls them and as the registered ops' Python code does."""
    from zfcore.ops import checks
    calls = {}

    def counting(name, checker):
        def counted(*args):
            calls[name] = calls.get(name, 0) + 1
            return checker(*args)
        return counted

    for name, checker in dict(checks.CHECKERS).items():
        wrapped = counting(name, checker)
        monkeypatch.setattr(checks, name, wrapped)
        monkeypatch.setitem(checks.CHECKERS, name, wrapped)
    return calls


def _triton_device():
    info = zfcore.backends()["triton"]
    return info.device if info.available else None


CALLS = {  # op -> a call of it through the Python API
    "max_pool2d_switches": lambda x, out, sw, **kw: max_pool2d_switches(x, 2, **kw),
    "unpool2d": lambda x, out, sw, **kw: unpool2d(out, sw, 2, output_size=x.shape, **kw),
    "relu_conv_transpose2d": lambda x, out, sw, **kw: relu_conv_transpose2d(x, torch.randn(4, 3, 3, 3).to(x),
                                                                            padding=1, **kw),
    "deconv_step": lambda x, out, sw, **kw: deconv_step(out, sw, torch.randn(4, 3, 3, 3).to(x), pool_kernel_size=2,
                                                        unpooled_size=(8, 8), padding=1, **kw),
}


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("path", ["native", "autograd", "reference", "triton", "triton-autograd", "fake", "meta"])
def test_each_call_checks_its_arguments_once(op, path, monkeypatch):
    # The Python API checks a call; the registered op it calls (a fake kernel, a
    # Triton op) does not check the same arguments again in Python.
    device, backend = "cpu", None
    if path.startswith("triton"):
        device, backend = _triton_device(), "triton"
        if device is None:
            pytest.skip("Triton backend not available")
    if path == "reference":
        backend = "reference"
    x = torch.randn(1, 4, 8, 8, device=device, dtype=torch.float64, requires_grad=path.endswith("autograd"))
    out, switches = max_pool2d_switches(x.detach(), 2)
    if path.endswith("autograd"):
        out.requires_grad_()
    call = CALLS[op]
    calls = _counting_checkers(monkeypatch)
    if path == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            result = call(mode.from_tensor(x), mode.from_tensor(out), mode.from_tensor(switches))
    elif path == "meta":
        result = call(x.to("meta"), out.to("meta"), switches.to("meta"))
    else:
        result = call(x, out, switches, backend=backend)
    assert calls == {op: 1}, calls
    assert isinstance(result, (torch.Tensor, tuple))
    from zfcore.ops import checks
    assert getattr(checks._passed, "call", None) is None  # nothing is left to skip a later check


def test_deconv_step_by_pytorchs_convolution_checks_once(monkeypatch):
    # The automatic choice on a GPU may run deconv_step as zfcore's unpooling
    # (another registered op) followed by PyTorch's transposed convolution: the
    # unpooling's arguments were checked with deconv_step's.
    from zfcore.ops import backend_choice
    if _triton_device() is None:
        pytest.skip("Triton backend not available")
    x = torch.randn(1, 4, 8, 8, device=_triton_device())
    out, switches = max_pool2d_switches(x, 2)
    weight = torch.randn(4, 3, 3, 3, device=x.device)
    expected = deconv_step(out, switches, weight, pool_kernel_size=2, unpooled_size=(8, 8), padding=1,
                           backend="reference")
    chosen = {"deconv_step": "torch", "unpool2d": "triton"}
    monkeypatch.setattr(backend_choice, "resolve", lambda op, tensor, backend: chosen[op])
    calls = _counting_checkers(monkeypatch)
    result = deconv_step(out, switches, weight, pool_kernel_size=2, unpooled_size=(8, 8), padding=1)
    assert calls == {"deconv_step": 1}, calls
    torch.testing.assert_close(result, expected)


def test_registered_ops_called_directly_still_check_every_call(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from zfcore.ops import checks
    x = torch.randn(1, 4, 8, 8)
    calls = _counting_checkers(monkeypatch)
    good, bad = (x, [2, 2], [2, 2], [0, 0], False), (x, [17, 17], [1, 1], [0, 0], False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        ops.max_pool2d_switches(*good)
        assert calls == {"max_pool2d_switches": 1}
        with pytest.raises(ValueError, match="max_pool2d_switches: kernel_size .* at most 256"):
            ops.max_pool2d_switches(*bad)
    entries = [ops.max_pool2d_switches]
    if REGISTRATION.triton and zfcore.backends()["triton"].device == "cpu":
        entries.append(torch.ops.zfcore_triton.max_pool2d_switches)
        with pytest.raises(ValueError, match="at most 256"):
            torch.ops.zfcore_triton.max_pool2d_switches(*bad)
    # What the Python API hands on skips the check of those very arguments only,
    # and only once: other arguments, or a second call, are checked.
    for entry in entries:
        checks.passing_on("max_pool2d_switches", good)
        with pytest.raises(ValueError, match="at most 256"):
            _fake_or_real(entry, bad)
        assert getattr(checks._passed, "call", None) is None
        checks.passing_on("max_pool2d_switches", good)
        checks.registered("max_pool2d_switches", *good)  # skipped: the arguments handed on
        before = calls["max_pool2d_switches"]
        checks.registered("max_pool2d_switches", *good)  # checked: the hand-on is spent
        assert calls["max_pool2d_switches"] == before + 1
    checks.passing_on("max_pool2d_switches", good)
    with pytest.raises(ValueError, match="at most 256"):  # another tensor with the same values is checked
        checks.registered("max_pool2d_switches", x.clone(), [17, 17], [1, 1], [0, 0], False)
    checks.passing_on(None)
    # A call the op refuses after the Python API handed it on leaves nothing behind.
    out, switches = max_pool2d_switches(x, 2)
    with pytest.raises(ValueError, match="outside their 2x2 window"):
        unpool2d(out.requires_grad_(), torch.full_like(switches, 9), 2, output_size=x.shape)
    assert getattr(checks._passed, "call", None) is None


def _fake_or_real(entry, args):
    if entry is ops.max_pool2d_switches:  # the native op checks in C++; its fake kernel in Python
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode(allow_non_fake_inputs=True):
            return entry(*args)
    return entry(*args)


@pytest.mark.skipif(not NATIVE, reason="native library not built")
def test_the_private_torch_state_the_fast_path_reads():
    # backend_choice._plain_dispatch reads what no public torch API reports; this
    # fails at once if a torch upgrade removes one of these reads or changes
    # what it means.
    from torch.utils._python_dispatch import TorchDispatchMode

    from zfcore.ops import backend_choice as b
    x = torch.randn(2, 3, 5, 5)
    assert b._plain_dispatch([x]) and b._direct((x, [2, 2], None, False))
    # a __torch_dispatch__ mode on the stack
    assert torch._C._len_torch_dispatch_stack() == 0

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passthrough():
        assert torch._C._len_torch_dispatch_stack() == 1 and not b._plain_dispatch([x])
    # the profiler
    assert torch._C._autograd._profiler_enabled() is False
    with torch.profiler.profile():
        assert torch._C._autograd._profiler_enabled() is True and not b._plain_dispatch([x])
    # the dispatch keys of a plain dense CPU tensor (a parameter's are the same), and tensors that differ
    assert b._PLAIN_CPU_KEYS == torch._C._dispatch_keys(torch.empty(3))
    assert torch._C._dispatch_keys(torch.nn.Parameter(x)) == b._PLAIN_CPU_KEYS
    with torch.inference_mode():
        inference = torch.randn(2)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fake = torch.empty(2)
    special = {"negative view": torch._neg_view(x), "conjugate view": torch.randn(2, dtype=torch.cfloat).conj(),
               "zero tensor": torch._efficientzerotensor(2), "sparse": x.to_sparse(), "inference": inference,
               "fake": fake, "meta": x.to("meta")}
    batched = []
    torch.vmap(lambda t: batched.append(t) or t)(x)
    special["vmap-batched"] = batched[0]
    for name, t in special.items():
        assert torch._C._dispatch_keys(t) != b._PLAIN_CPU_KEYS, name
        assert not b._plain_dispatch([t]), name
    # the CPU kernel below autograd: the same outputs as the registered op
    args = (x, [3, 3], [2, 2], [1, 1], True)
    direct = ops.max_pool2d_switches.default.redispatch(b._CPU_KEYS, *args)
    assert all(torch.equal(a, c) for a, c in zip(direct, ops.max_pool2d_switches(*args)))


def test_the_fast_path_asks_public_torch_apis_first():
    from zfcore.ops import backend_choice as b
    x = torch.randn(2, 3, 5, 5)
    assert b._direct((x,))
    with torch.device("cpu"):  # a __torch_function__ mode
        assert not b._direct((x,))

    class Sub(torch.Tensor):
        pass

    assert not b._direct((x.as_subclass(Sub),))
    assert not b._direct((x.clone().requires_grad_(),))
    with torch.no_grad():
        assert b._direct((x.clone().requires_grad_(),))

"""Which backend runs an op: what is built, why not, and the choice per call.

Order of precedence: the ``backend=`` argument of a call, then the
``ZFCORE_BACKEND`` environment variable (read once, at import), then the fastest
available backend for the tensor's device. On CUDA tensors "fastest" is the
measured table ``GPU_PREFERENCE`` (from benchmarks/bench_gpu.py on an H200),
falling back to the other GPU backend, then the reference.

The table may also name ``"torch"`` for the two transposed-convolution ops,
where PyTorch's own convolution (cuDNN) measured faster than zfcore's kernels:
``relu_conv_transpose2d`` then runs as ``F.conv_transpose2d(F.relu(y))`` and
``deconv_step`` as zfcore's unpooling on its fastest GPU backend followed by
that; both are exact compositions of the ops (``torch`` is a path the automatic
choice takes, not a backend a caller names).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import has_torch_function

from ..kernels import interpreted
from . import checks, reference, registry, triton_ops

NAMES = ("reference", "cpu", "triton", "cuda")
OPS = ("max_pool2d_switches", "unpool2d", "gather_switches", "relu_conv_transpose2d", "deconv_step")
# What the GPU table may name per op: the GPU backends, and for the ops that end in
# a transposed convolution, PyTorch's own (module docstring).
TORCH_PATH_OPS = ("relu_conv_transpose2d", "deconv_step")
_ENV_BACKEND = os.environ.get("ZFCORE_BACKEND", "").strip().lower() or None

# The GPU backend that measured fastest per op (benchmarks/bench_gpu.py writes
# gpu_preference.json beside this file from its run; it is committed with the
# results). Until a GPU measurement exists: Triton for the two GEMM ops (tensor
# cores), the CUDA C++ kernels for the memory-bound pooling ops.
_DEFAULT_PREFERENCE = {
    "max_pool2d_switches": "cuda",
    "unpool2d": "cuda",
    "gather_switches": "cuda",
    "relu_conv_transpose2d": "triton",
    "deconv_step": "triton",
}


def _load_preference(path: Path = Path(__file__).with_name("gpu_preference.json")) -> dict[str, str]:
    table = dict(_DEFAULT_PREFERENCE)
    try:
        measured = json.loads(path.read_text())["fastest"]
        table.update({op: name for op, name in measured.items()
                      if op in OPS and (name in ("triton", "cuda") or (name == "torch" and op in TORCH_PATH_OPS))})
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return table


GPU_PREFERENCE = _load_preference()


@dataclass(frozen=True)
class BackendInfo:
    """Whether a backend can run here, the device type it serves, and why not."""

    name: str
    device: str
    available: bool
    reason: str


def backends() -> dict[str, BackendInfo]:
    """What each backend is and whether it is built and usable here.

    Example:
        >>> {name: info.available for name, info in zfcore.backends().items()}
        {'reference': True, 'cpu': True, 'triton': False, 'cuda': False}
    """
    return dict(_backends())


@functools.cache
def _backends() -> dict[str, BackendInfo]:
    # Fixed for the process (the build, Triton's mode and the GPUs are settled at
    # import), so the per-call choice reads it once.
    reg = registry.register()
    cpu_reason = "C++ kernels in zfcore._C" if reg.native else f"native library not loaded: {reg.native_error}"
    has_gpu = torch.cuda.is_available()
    if not reg.triton:
        triton = BackendInfo("triton", "cuda", False, f"Triton not importable ({reg.triton_error})")
    elif interpreted():
        triton = BackendInfo("triton", "cpu", True, "Triton kernels in Triton's CPU interpreter (TRITON_INTERPRET=1)")
    elif has_gpu:
        triton = BackendInfo("triton", "cuda", True, "Triton kernels in zfcore/kernels")
    else:
        triton = BackendInfo("triton", "cuda", False,
                             "no CUDA device (TRITON_INTERPRET=1 runs the Triton kernels on CPU tensors, slowly)")
    if not reg.cuda_native:
        cuda = BackendInfo("cuda", "cuda", False, reg.native_error or _NO_CUDA_KERNELS_REASON)
    elif not has_gpu:
        cuda = BackendInfo("cuda", "cuda", False, "built, but no CUDA device is visible")
    else:
        cuda = BackendInfo("cuda", "cuda", True, "CUDA C++ kernels in zfcore._C (csrc/cuda)")
    return {
        "reference": BackendInfo("reference", "any", True, "pure PyTorch (zfcore/ops/reference.py)"),
        "cpu": BackendInfo("cpu", "cpu", reg.native, cpu_reason),
        "triton": triton,
        "cuda": cuda,
    }


def _no_cuda_kernels_reason() -> str:
    """Why zfcore._C has no CUDA kernels, as its build recorded it: setup.py
    writes _build_info.json beside the library (not committed)."""
    try:
        info = json.loads(Path(__file__).parents[1].joinpath("_build_info.json").read_text())
        note = str(info["cuda"])
        built = bool(info["cuda_kernels"])
    except (OSError, ValueError, KeyError, TypeError):
        return ("zfcore._C was built without CUDA kernels (no build record; they need a CUDA build of torch and "
                "an nvcc of the same CUDA major version at build)")
    if built:
        return f"zfcore._C has no CUDA kernels, yet its build record says it was built with them ({note}): rebuild it"
    return f"zfcore._C was built without CUDA kernels: {note}"


# Read at import: torch.compile traces the backend choice, and a file read
# inside it would break the graph.
_NO_CUDA_KERNELS_REASON = _no_cuda_kernels_reason()


def resolve(op: str, tensor: torch.Tensor, backend: str | None) -> str:
    """The backend that runs ``op`` on ``tensor``; a clear error if the one asked
    for cannot."""
    source = "backend" if backend is not None else "ZFCORE_BACKEND"
    name = backend if backend is not None else _ENV_BACKEND
    if name is None or name == "auto":
        return _automatic(op, tensor)
    if name not in NAMES:
        raise ValueError(f"{op}: {source} must be one of {', '.join(NAMES)} or auto (got {name!r})")
    info = _backends()[name]
    if not info.available:
        raise RuntimeError(f"{op}: {source}={name!r} is not available here ({info.reason})")
    if info.device != "any" and info.device != tensor.device.type:
        raise ValueError(f"{op}: {source}={name!r} runs on {info.device} tensors (got a {tensor.device.type} tensor)")
    return name


def _automatic(op: str, tensor: torch.Tensor) -> str:
    device = tensor.device.type
    if device == "cpu":
        return "cpu" if _backends()["cpu"].available else "reference"
    if device == "cuda":
        infos = _backends()
        first = GPU_PREFERENCE.get(op, "cuda")
        if first == "torch":
            return "torch"
        for name in (first, "triton" if first == "cuda" else "cuda"):
            if infos[name].available and infos[name].device == "cuda":
                return name
    return "reference"


def _direct(args) -> bool:
    """Whether a native kernel may be called below the dispatcher's autograd and
    mode layers: nothing to differentiate, no Python mode (fake tensors,
    opcheck), no jit trace, no profiler, no tensor but plain dense ones (or
    parameters), not traced by torch.compile. Such a call skips the Python
    autograd wrapper of the registered op (about 15-30 us a call).

    Public torch APIs first; what none reports is read by ``_plain_dispatch``."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or has_torch_function(args):
        return False  # (has_torch_function: a __torch_function__ subclass or mode, torch.device(...) included)
    grad = torch.is_grad_enabled()
    tensors = []
    for a in args:
        if isinstance(a, torch.Tensor):
            if type(a) not in _PLAIN_TYPES or (grad and a.requires_grad):
                return False
            tensors.append(a)
    return _plain_dispatch(tensors)


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)

# ----------------------------------------------------- torch's private state
# The fast path's only reads of torch internals, all here: no public API (torch
# 2.13) says whether a __torch_dispatch__ mode is active, whether the profiler
# records, or which dispatch keys a tensor carries, nor calls an op's CPU kernel
# below autograd. tests/test_registration.py
# (test_the_private_torch_state_the_fast_path_reads) checks that each still
# exists and means what is assumed here, so a torch upgrade that changes one
# fails that test at once.

_CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
# The dispatch keys of a plain dense CPU tensor: a tensor with any other key (a
# negative or conjugate view, a zero tensor, sparse, a functorch wrapper, a
# __torch_dispatch__ subclass, an inference tensor) needs the dispatcher's handling.
_PLAIN_CPU_KEYS = torch._C._dispatch_keys(torch.empty(0))


def _plain_dispatch(tensors) -> bool:
    """No __torch_dispatch__ mode on the stack (FakeTensorMode, opcheck's modes,
    make_fx, a logging mode), the profiler off (it records the dispatcher's
    calls, not a redispatch), and only plain dense CPU ``tensors``."""
    if torch._C._len_torch_dispatch_stack() or torch._C._autograd._profiler_enabled():
        return False
    for t in tensors:
        if torch._C._dispatch_keys(t) != _PLAIN_CPU_KEYS:
            return False
    return True


def _call_cpu_kernel(op: str, args):
    """The registered op's C++ CPU kernel, with its C++ checks, below the autograd
    and mode layers (only where ``_direct``)."""
    return getattr(registry.ops, op).default.redispatch(_CPU_KEYS, *args)


# ---------------------------------------------------------------- the call


def run(op: str, tensor: torch.Tensor, backend: str | None, *args):
    """Run ``op`` on the chosen backend with ``args``: its schema's arguments,
    normalized and already checked by zfcore/ops/checks.py. No Python check
    runs again: the native CPU kernels are called straight through the
    dispatcher's CPU entry when nothing needs autograd (``_direct``; the same
    kernel, with its C++ checks, as ``torch.ops.zfcore.<op>``); a registered op
    whose Python code checks its arguments (a fake kernel, a Triton op) is told
    that these were (``checks.passing_on``)."""
    name = resolve(op, tensor, backend)
    if name == "cpu" and _direct(args):
        return _call_cpu_kernel(op, args)
    if name == "reference":
        return getattr(reference, op)(*args)
    if name == "torch":
        return torch_path(op, tensor, *args)
    entry = getattr(triton_ops.ops if name == "triton" else registry.ops, op)
    if torch.compiler.is_compiling():  # traced: the checks run while tracing, none in the compiled graph
        return entry(*args)
    checks.passing_on(op, args)
    try:
        return entry(*args)
    finally:
        checks.passing_on(None)


def torch_path(op: str, tensor: torch.Tensor, *args):
    """``relu_conv_transpose2d`` or ``deconv_step`` with PyTorch's transposed
    convolution (cuDNN on a GPU); ``deconv_step``'s unpooling runs on the fastest
    backend for ``tensor`` (checked, normalized arguments ``args``, as ``run``)."""
    if op == "relu_conv_transpose2d":
        return reference.relu_conv_transpose2d(*args)
    if op != "deconv_step":
        raise ValueError(f"torch_path: {op} has no PyTorch path (only {', '.join(TORCH_PATH_OPS)})")
    y, switches, weight, bias, k, s, p, size, *conv = args
    unpooled = run("unpool2d", tensor, None, y, switches, k, s, p, size)
    return reference.relu_conv_transpose2d(unpooled, weight, bias, *conv)

"""The one registration of the zfcore ops with PyTorch: ``register()``.

``register()`` (called once by ``zfcore.ops``; later calls return the same
``Registration``) does, in this order:

1. the schemas: the native library zfcore._C defines them (csrc/registration.cpp)
   with its C++ CPU kernels, and CUDA kernels when it was built with them.
   Without it the same schemas (zfcore/ops/schemas.py) are defined here, with the
   reference as their CPU kernel, after one warning;
2. the Triton backend as its own ops, ``torch.ops.zfcore_triton.*``, defined from
   the same schemas (zfcore/ops/triton_ops.py), when Triton is importable;
3. the CUDA kernels of the ``zfcore::`` ops the native library has none for: the
   Triton launchers, else the reference;
4. the fake (meta) kernels, which let torch.compile trace the ops, each after the
   op's argument checks;
5. autograd. Max pooling's backward is unpool2d; unpool2d is linear and its
   backward is gather_switches (the gather through the same switches), whose
   backward is unpool2d again, so every order of derivative stays on the ops.

Python owns what is not compute (fakes, autograd); the kernels are C++, CUDA or
Triton.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels import interpreted
from ..kernels.common import conv_transpose_output_size, memory_format_of
from . import checks, reference, triton_ops
from .schemas import SCHEMAS

NAMESPACE = "zfcore"
ops = torch.ops.zfcore


@dataclass(frozen=True)
class Registration:
    """What ``register()`` found and registered."""

    native: bool  # zfcore._C loaded: its schemas and C++ CPU kernels
    native_error: str | None  # why it did not load
    cuda_native: bool  # zfcore._C has a CUDA kernel for every op
    triton: bool  # torch.ops.zfcore_triton.* defined
    triton_error: str | None  # why Triton is not usable


_REGISTRATION: Registration | None = None
_fallback_library = None  # the Python-defined schemas, kept alive while the process runs


def register() -> Registration:
    """Register every zfcore op with PyTorch (module docstring); idempotent."""
    global _REGISTRATION
    if _REGISTRATION is not None:
        return _REGISTRATION
    native_error = _load_native()
    if native_error is not None:
        _define_fallback(native_error)
    triton_error = triton_ops.define()
    cuda_native = native_error is None and all(_has_native_cuda_kernel(name) for name in SCHEMAS)
    for name in SCHEMAS:
        if native_error is not None:
            torch.library.register_kernel(f"{NAMESPACE}::{name}", "cpu", _checked_reference(name))
        if not (native_error is None and _has_native_cuda_kernel(name)):
            kernel = triton_ops.EAGER[name] if triton_error is None else _checked_reference(name)
            torch.library.register_kernel(f"{NAMESPACE}::{name}", "cuda", kernel)
    _register_fakes(NAMESPACE)
    # torch.library.triton_op makes its launcher the fake kernel, through
    # wrap_triton; in Triton's CPU interpreter the Triton ops are plain custom ops
    # and get the fake kernels here.
    if triton_error is None and interpreted():
        _register_fakes(triton_ops.NAMESPACE)
    _register_autograd(NAMESPACE)
    if triton_error is None:
        _register_autograd(triton_ops.NAMESPACE)
    _REGISTRATION = Registration(native_error is None, native_error, cuda_native, triton_error is None,
                                 triton_error)
    return _REGISTRATION


def _load_native() -> str | None:
    """Load zfcore._C (it registers its ops on import); None, or why not."""
    try:  # the extension module sits at the bottom of the house, beside the kernels
        importlib.import_module("zfcore._C")
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


def _define_fallback(native_error: str) -> None:
    global _fallback_library
    warnings.warn(
        "zfcore: the native library is not available, ops run on the pure-PyTorch reference backend "
        f"({native_error}); build it with `pip install --no-build-isolation -e .`",
        RuntimeWarning,
        stacklevel=4,
    )
    _fallback_library = torch.library.Library(NAMESPACE, "DEF")
    for schema in SCHEMAS.values():
        _fallback_library.define(schema)


def _has_native_cuda_kernel(name: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", "CUDA")


def _checked_reference(name: str):
    """The reference as a registered kernel: the op's argument checks first (as
    the native kernels' csrc/checks.h), then the CPU backends' switch rule."""
    compute = getattr(reference, name)

    def kernel(*args):
        checks.registered(name, *args)
        if name == "unpool2d":
            checks.switch_values(name, args[1], args[5], *args[2:5])
        elif name == "gather_switches":
            checks.switch_values(name, args[1], args[0].shape[-2:], *args[2:5])
        elif name == "deconv_step":
            checks.switch_values(name, args[1], args[7], *args[4:7])
        return compute(*args)

    return kernel


# ---------------------------------------------------------------- fake kernels


def _empty(like: torch.Tensor, shape, memory_format, dtype=None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)


def _fake_max_pool2d_switches(x, kernel_size, stride, padding, ceil_mode):
    torch._check(x.dim() == 4, lambda: "max_pool2d_switches: x must be 4-D")
    oh, ow = (reference.pool_output_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], ceil_mode)
              for i in range(2))
    fmt = memory_format_of(x)
    shape = (x.shape[0], x.shape[1], oh, ow)
    return _empty(x, shape, fmt), _empty(x, shape, fmt, torch.uint8)


def _fake_unpool2d(y, switches, kernel_size, stride, padding, output_size):
    torch._check(switches.shape == y.shape, lambda: "unpool2d: switches must have the shape of y")
    return _empty(y, (y.shape[0], y.shape[1], *output_size), memory_format_of(y))


def _fake_gather_switches(x, switches, kernel_size, stride, padding):
    return _empty(x, switches.shape, memory_format_of(x))


def _fake_relu_conv_transpose2d(y, weight, bias, stride, padding, output_padding, groups, dilation):
    # Every backend returns y's layout (ATen's CUDA convolution would also follow
    # a channels-last weight, so its fake is not used here).
    size = [conv_transpose_output_size(y.shape[2 + i], weight.shape[2 + i], stride[i], padding[i],
                                       output_padding[i], dilation[i]) for i in range(2)]
    return _empty(y, (y.shape[0], weight.shape[1] * groups, *size), memory_format_of(y))


def _fake_deconv_step(y, switches, weight, bias, pool_kernel_size, pool_stride, pool_padding, unpooled_size,
      stride, padding, output_padding, groups, dilation):
    size = [conv_transpose_output_size(unpooled_size[i], weight.shape[2 + i], stride[i], padding[i],
                                       output_padding[i], dilation[i]) for i in range(2)]
    return _empty(y, (y.shape[0], weight.shape[1] * groups, *size), memory_format_of(y))


def _checked_fake(name: str):
    fake = globals()[f"_fake_{name}"]

    def kernel(*args):
        checks.registered(name, *args)  # the same argument checks as every real kernel
        return fake(*args)

    return kernel


def _register_fakes(namespace: str) -> None:
    """Fake (meta) kernels of the ops of ``namespace``: output shapes, dtypes and
    layouts without computing, so torch.compile can trace the ops (and meta
    tensors get them), after the ops' argument checks."""
    for name in SCHEMAS:
        torch.library.register_fake(f"{namespace}::{name}", _checked_fake(name))




# -------------------------------------------------------------------- autograd


def _pool_setup(ctx, inputs, output):
    x, ctx.kernel_size, ctx.stride, ctx.padding, _ = inputs
    ctx.input_size = list(x.shape[-2:])
    ctx.save_for_backward(output[1])


def _pool_backward(ops, ctx, grad_out, _grad_switches):
    (switches,) = ctx.saved_tensors
    grad_x = ops.unpool2d(grad_out, switches, ctx.kernel_size, ctx.stride, ctx.padding, ctx.input_size)
    return grad_x, None, None, None, None


def _unpool_setup(ctx, inputs, output):
    _, switches, ctx.kernel_size, ctx.stride, ctx.padding, _ = inputs
    ctx.save_for_backward(switches)


def _unpool_backward(ops, ctx, grad_x):
    (switches,) = ctx.saved_tensors
    grad_y = ops.gather_switches(grad_x, switches, ctx.kernel_size, ctx.stride, ctx.padding)
    return grad_y, None, None, None, None, None


def _gather_setup(ctx, inputs, output):
    x, switches, ctx.kernel_size, ctx.stride, ctx.padding = inputs
    ctx.input_size = list(x.shape[-2:])
    ctx.save_for_backward(switches)


def _gather_backward(ops, ctx, grad_y):
    (switches,) = ctx.saved_tensors
    grad_x = ops.unpool2d(grad_y, switches, ctx.kernel_size, ctx.stride, ctx.padding, ctx.input_size)
    return grad_x, None, None, None, None


def _conv_transpose_grads(ctx, grad, pre_relu, weight, has_bias):
    """Gradients of conv_transpose2d(relu(pre_relu), weight, bias) by ATen's
    convolution backward, with the ReLU's mask applied to the input gradient."""
    need_input, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[2 if ctx.deconv else 1]
    need_bias = has_bias and ctx.needs_input_grad[3 if ctx.deconv else 2]
    grad_in, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad, F.relu(pre_relu), weight, [weight.shape[1] * ctx.groups] if has_bias else None,
        ctx.conv_stride, ctx.conv_padding, ctx.dilation, True, ctx.output_padding, ctx.groups,
        [need_input, need_weight, need_bias])
    if grad_in is not None:
        grad_in = torch.ops.aten.threshold_backward(grad_in, pre_relu, 0)
    return grad_in, grad_w, grad_b


def _relu_conv_setup(ctx, inputs, output):
    y, weight, bias, ctx.conv_stride, ctx.conv_padding, ctx.output_padding, ctx.groups, ctx.dilation = inputs
    ctx.deconv, ctx.has_bias = False, bias is not None
    ctx.save_for_backward(y, weight)


def _relu_conv_backward(ops, ctx, grad):
    y, weight = ctx.saved_tensors
    grad_y, grad_w, grad_b = _conv_transpose_grads(ctx, grad, y, weight, ctx.has_bias)
    return grad_y, grad_w, grad_b, None, None, None, None, None


def _deconv_setup(ctx, inputs, output):
    (y, switches, weight, bias, ctx.kernel_size, ctx.stride, ctx.padding, ctx.unpooled_size,
     ctx.conv_stride, ctx.conv_padding, ctx.output_padding, ctx.groups, ctx.dilation) = inputs
    ctx.deconv, ctx.has_bias = True, bias is not None
    ctx.save_for_backward(y, switches, weight)


def _deconv_backward(ops, ctx, grad):
    y, switches, weight = ctx.saved_tensors
    # Recomputed rather than saved: the unpooled map is the largest tensor here.
    unpooled = ops.unpool2d(y, switches, ctx.kernel_size, ctx.stride, ctx.padding, ctx.unpooled_size)
    grad_unpooled, grad_w, grad_b = _conv_transpose_grads(ctx, grad, unpooled, weight, ctx.has_bias)
    grad_y = None
    if grad_unpooled is not None:
        grad_y = ops.gather_switches(grad_unpooled, switches, ctx.kernel_size, ctx.stride, ctx.padding)
    return (grad_y, None, grad_w, grad_b) + (None,) * 9


def _register_autograd(namespace: str) -> None:
    """Autograd of the ops of ``namespace`` (zfcore, zfcore_triton), each backward
    made of the same namespace's ops."""
    ns_ops = getattr(torch.ops, namespace)
    for name, backward, setup in (
        ("max_pool2d_switches", _pool_backward, _pool_setup),
        ("unpool2d", _unpool_backward, _unpool_setup),
        ("gather_switches", _gather_backward, _gather_setup),
        ("relu_conv_transpose2d", _relu_conv_backward, _relu_conv_setup),
        ("deconv_step", _deconv_backward, _deconv_setup),
    ):
        torch.library.register_autograd(f"{namespace}::{name}", functools.partial(backward, ns_ops),
                                        setup_context=setup)

"""The Triton backend as PyTorch ops: ``torch.ops.zfcore_triton.*``.

Each op is defined with ``torch.library.triton_op`` over its launcher in
zfcore/kernels, the kernels launched through ``wrap_triton``, so
``torch.compile`` sees the Triton kernels themselves (and ``opcheck`` the op);
under TRITON_INTERPRET=1 they are plain custom ops (see below).
The schemas equal the ``zfcore::`` ones; autograd is registered by
zfcore/ops/library.py the same way for both namespaces. Without Triton this
module defines nothing and ``ERROR`` says why.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import checks

ERROR: str | None = None
try:
    import triton  # noqa: F401
    from torch.library import triton_op, wrap_triton

    from ..kernels import deconv_step as _deconv
    from ..kernels import interpreted, patch_interpreter
    from ..kernels import max_pool_switches as _pool
    from ..kernels import relu_conv_transpose as _conv
    from ..kernels import unpool as _unpool
except Exception as error:  # noqa: BLE001  (any failure to import Triton means: no Triton backend)
    ERROR = f"{type(error).__name__}: {error}"

AVAILABLE = ERROR is None
if AVAILABLE:
    patch_interpreter()
    # In Triton's CPU interpreter wrap_triton hands back the plain kernel, which
    # tracing (fake and functional tensors) cannot run: there the ops are plain
    # custom ops, with the fake kernels of zfcore/ops/library.py.
    _define = torch.library.custom_op if interpreted() else triton_op
NAMESPACE = "zfcore_triton"

if AVAILABLE:

    @_define(f"{NAMESPACE}::max_pool2d_switches", mutates_args=())
    def max_pool2d_switches(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                            ceil_mode: bool) -> tuple[Tensor, Tensor]:
        checks.registered("max_pool2d_switches", x, kernel_size, stride, padding, ceil_mode)
        return _pool.max_pool2d_switches(x, kernel_size, stride, padding, ceil_mode, launch=wrap_triton)

    @_define(f"{NAMESPACE}::unpool2d", mutates_args=())
    def unpool2d(y: Tensor, switches: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                 output_size: list[int]) -> Tensor:
        checks.registered("unpool2d", y, switches, kernel_size, stride, padding, output_size)
        return _unpool.unpool2d(y, switches, kernel_size, stride, padding, output_size, launch=wrap_triton)

    @_define(f"{NAMESPACE}::gather_switches", mutates_args=())
    def gather_switches(x: Tensor, switches: Tensor, kernel_size: list[int], stride: list[int],
                        padding: list[int]) -> Tensor:
        checks.registered("gather_switches", x, switches, kernel_size, stride, padding)
        return _unpool.gather_switches(x, switches, kernel_size, stride, padding, launch=wrap_triton)

    @_define(f"{NAMESPACE}::relu_conv_transpose2d", mutates_args=())
    def relu_conv_transpose2d(y: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int],
                              padding: list[int], output_padding: list[int], groups: int,
                              dilation: list[int]) -> Tensor:
        checks.registered("relu_conv_transpose2d", y, weight, bias, stride, padding, output_padding, groups,
                          dilation)
        return _conv.relu_conv_transpose2d(y, weight, bias, stride, padding, output_padding, groups, dilation,
                                           launch=wrap_triton)

    @_define(f"{NAMESPACE}::deconv_step", mutates_args=())
    def deconv_step(y: Tensor, switches: Tensor, weight: Tensor, bias: Tensor | None,
                    pool_kernel_size: list[int], pool_stride: list[int], pool_padding: list[int],
                    unpooled_size: list[int], stride: list[int], padding: list[int],
                    output_padding: list[int], groups: int, dilation: list[int]) -> Tensor:
        checks.registered("deconv_step", y, switches, weight, bias, pool_kernel_size, pool_stride, pool_padding,
                          unpooled_size, stride, padding, output_padding, groups, dilation)
        return _deconv.deconv_step(y, switches, weight, bias, pool_kernel_size, pool_stride, pool_padding,
                                   unpooled_size, stride, padding, output_padding, groups, dilation,
                                   launch=wrap_triton)

    ops = getattr(torch.ops, NAMESPACE)

    # Plain launchers (no wrap_triton): the zfcore:: ops' CUDA kernels when the
    # native library has none of its own.
    def _eager(name, launcher):
        def kernel(*args):
            checks.registered(name, *args)
            return launcher(*args)
        return kernel

    EAGER = {name: _eager(name, launcher) for name, launcher in (
        ("max_pool2d_switches", _pool.max_pool2d_switches),
        ("unpool2d", _unpool.unpool2d),
        ("gather_switches", _unpool.gather_switches),
        ("relu_conv_transpose2d", _conv.relu_conv_transpose2d),
        ("deconv_step", _deconv.deconv_step),
    )}

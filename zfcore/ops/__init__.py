"""zfcore's operations: max pooling with one-byte switches, its exact transpose,
and the deconvnet's fused rectify-and-filter stages. Also ``torch.ops.zfcore.*``,
registered once, here, by ``registry.register()``."""

from .registry import Registration, register

REGISTRATION = register()  # the ops, their fakes and autograd, with PyTorch (zfcore/ops/registry.py)

from .backend_choice import BackendInfo, backends  # noqa: E402
from .deconv import deconv_step, relu_conv_transpose2d  # noqa: E402
from .pooling import max_pool2d_switches, switches_to_indices, unpool2d  # noqa: E402

__all__ = [
    "REGISTRATION",
    "BackendInfo",
    "Registration",
    "backends",
    "deconv_step",
    "max_pool2d_switches",
    "register",
    "relu_conv_transpose2d",
    "switches_to_indices",
    "unpool2d",
]

"""zfcore's operations: max pooling with one-byte switches, its exact transpose,
and the deconvnet's fused rectify-and-filter stages. Also ``torch.ops.zfcore.*``."""

from .backend_choice import BackendInfo, backends
from .deconv import deconv_step, relu_conv_transpose2d
from .pooling import max_pool2d_switches, switches_to_indices, unpool2d

__all__ = [
    "BackendInfo",
    "backends",
    "deconv_step",
    "max_pool2d_switches",
    "relu_conv_transpose2d",
    "switches_to_indices",
    "unpool2d",
]

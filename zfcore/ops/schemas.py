"""The op schemas, as written in csrc/registration.cpp.

Used to define the ops from Python when the native library is missing, so that
``torch.ops.zfcore.*`` exists on every install. tests/test_registration.py checks
these strings against the ones the native library registers.
"""

SCHEMAS = {
    "max_pool2d_switches": (
        "max_pool2d_switches(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode) -> (Tensor, Tensor)"
    ),
    "unpool2d": (
        "unpool2d(Tensor y, Tensor switches, int[2] kernel_size, int[2] stride, int[2] padding, "
        "SymInt[2] output_size) -> Tensor"
    ),
    "gather_switches": (
        "gather_switches(Tensor x, Tensor switches, int[2] kernel_size, int[2] stride, "
        "int[2] padding) -> Tensor"
    ),
    "relu_conv_transpose2d": (
        "relu_conv_transpose2d(Tensor y, Tensor weight, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] output_padding, int groups, int[2] dilation) -> Tensor"
    ),
    "deconv_step": (
        "deconv_step(Tensor y, Tensor switches, Tensor weight, Tensor? bias, "
        "int[2] pool_kernel_size, int[2] pool_stride, int[2] pool_padding, SymInt[2] unpooled_size, "
        "int[2] stride, int[2] padding, int[2] output_padding, int groups, int[2] dilation) -> Tensor"
    ),
}

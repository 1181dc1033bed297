"""Max pooling that keeps its switches, and the module that undoes it."""

from __future__ import annotations

from torch import Tensor, nn

from ..ops import checks
from ..ops.pooling import max_pool2d_switches, unpool2d


class MaxPool2dSwitches(nn.Module):
    """``nn.MaxPool2d`` computed by ``zfcore.ops.max_pool2d_switches``.

    With ``return_switches=True`` the forward returns ``(out, switches)``; the
    deconvnet engine reads the switches of every pooling layer this way.

    Example:
        >>> pool = MaxPool2dSwitches(3, 2, ceil_mode=True)   # ZFNet's pool1
        >>> pool(torch.randn(1, 96, 110, 110)).shape
        torch.Size([1, 96, 55, 55])
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 return_switches: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = checks.pool_geometry(
            "MaxPool2dSwitches", kernel_size, stride, padding)
        self.ceil_mode = ceil_mode
        self.return_switches = return_switches

    def forward(self, x: Tensor):
        out, switches = max_pool2d_switches(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        return (out, switches) if self.return_switches else out

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"ceil_mode={self.ceil_mode}")


class Unpool2d(nn.Module):
    """The exact transpose of a ``MaxPool2dSwitches`` with the same parameters.

    Example:
        >>> out, switches = MaxPool2dSwitches(3, 2, ceil_mode=True, return_switches=True)(x)
        >>> Unpool2d(3, 2)(out, switches, x.shape[-2:]).shape == x.shape
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = checks.pool_geometry("Unpool2d", kernel_size, stride, padding)

    def forward(self, y: Tensor, switches: Tensor, output_size=None) -> Tensor:
        return unpool2d(y, switches, self.kernel_size, self.stride, self.padding, output_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

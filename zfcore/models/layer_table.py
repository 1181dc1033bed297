"""The module types of plain sequential CNNs, in one table: ``LayerSpec``
computes their shapes and receptive fields, occlusion's incremental path reuses
them, and the deconvnet engine names its layers' kinds by them. (The engine
itself reads the captured graph: its op table is ``zfcore.deconv.rules``.)"""

from __future__ import annotations

from torch import nn

from ..geometry import pair
from ..nn import MaxPool2dSwitches

# type -> kind, in the order error messages list them
KINDS: dict[type, str] = {
    nn.Conv2d: "conv",
    nn.ReLU: "relu",
    nn.MaxPool2d: "pool",
    MaxPool2dSwitches: "pool",
    nn.LocalResponseNorm: "localresponsenorm",
    nn.Dropout: "dropout",
    nn.Flatten: "flatten",
    nn.Linear: "linear",
    nn.AdaptiveAvgPool2d: "adaptiveavgpool2d",
    nn.Identity: "identity",
}
SUPPORTED = tuple(KINDS)
POINTWISE = ("relu", "localresponsenorm", "dropout", "identity")  # output (h, w) sees input (h, w) only
WINDOWED = ("conv", "pool")  # a kernel sliding with a stride over padded input


def kind_of(module: nn.Module) -> str | None:
    """``module``'s kind (``KINDS``' values), or None for a type outside this table."""
    for cls, kind in KINDS.items():
        if isinstance(module, cls):
            return kind
    return None


def window_rule(module: nn.Module) -> tuple[tuple[int, int], ...] | None:
    """``(kernel, stride, padding, dilation)``, each an ``(h, w)`` pair, of a conv
    or max pooling (a pooling's stride defaults to its kernel); None for others."""
    kind = kind_of(module)
    if kind not in WINDOWED:
        return None
    kernel = pair(module.kernel_size)
    stride = pair(module.stride) if module.stride is not None and module.stride != () else kernel
    return kernel, stride, pair(module.padding), pair(getattr(module, "dilation", 1))

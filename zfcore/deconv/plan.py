"""The deconvnet's way down as a plan of stages.

``compile_plan(steps, top, mode)`` turns the walk below (and including) step
``top`` into stages, top first. Each stage undoes one layer, or, in deconvnet
mode, a fused run of them (pool -> ReLU -> conv as one ``deconv_step``,
ReLU -> conv as one ``relu_conv_transpose2d``), with one ``down(signal,
records, windows)`` for every mode: ``windows`` is None on whole maps, or the
``Windows`` of the requests' receptive fields, where each stage works on its
windows (no padding, no output padding: the window arithmetic accounts for
them) and reads its records through ``windows.crop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import geometry
from ..models.layer_table import kind_of, window_rule
from ..ops import checks, deconv_step, relu_conv_transpose2d, unpool2d
from .walk import Step
from .windows import Windows


@dataclass
class Record:
    """What the way down needs from one step's forward, for the distinct images."""

    input_shape: tuple              # the step's input (after any flatten before it)
    flat_from: tuple | None = None  # the shape before that flatten
    input: Tensor | None = None     # ReLU/LRN inputs, guided and gradient modes
    switches: Tensor | None = None  # max pooling


def pool_geometry(module: nn.Module):
    """A max pooling's ``(kernel, stride, padding)``, checked as the ops check them."""
    return checks.pool_geometry("Deconvnet", module.kernel_size, module.stride, module.padding)


def output_padding(conv: nn.Conv2d, in_shape: tuple, out_shape: tuple) -> tuple[int, int]:
    """The output_padding that makes conv_transpose2d return the conv's input size."""
    return tuple(geometry.output_padding(in_shape[-2 + i], out_shape[-2 + i], conv.kernel_size[i], conv.stride[i],
                                         conv.padding[i], conv.dilation[i]) for i in range(2))


def _vjp(module: nn.Module, x: Tensor, signal: Tensor) -> Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        return torch.autograd.grad(module(x), x, signal)[0]


def _rows(signal: Tensor, shape: tuple) -> tuple:
    """``shape`` (a record's, over the distinct images) for ``signal``'s rows."""
    return (signal.shape[0], *shape[1:])


@dataclass
class Stage:
    """Undoes steps ``bottom..top`` of the walk (inclusive)."""

    top: int
    bottom: int
    mode: str = field(default="deconvnet", repr=False)

    def down(self, signal: Tensor, records: list[Record], windows: Windows | None) -> Tensor:
        raise NotImplementedError

    def read(self, records: list[Record], attribute: str, windows: Windows | None, index: Tensor | None) -> Tensor:
        """Step ``top``'s record ``attribute`` for the signal's rows: windows of it
        when cropped, else its rows ``index`` (each request's image)."""
        t = getattr(records[self.top], attribute)
        return windows.crop(t, self.top) if windows is not None else t[index]


@dataclass
class DeconvStep(Stage):
    """pool -> ReLU -> conv, undone by one ``deconv_step`` (deconvnet mode)."""

    pool: nn.Module = None
    conv: nn.Conv2d = None

    def down(self, signal, records, windows, index=None):
        k, s, p = pool_geometry(self.pool)
        conv = self.conv
        switches = self.read(records, "switches", windows, index)
        if windows is not None:
            return deconv_step(signal, switches, conv.weight, None, pool_kernel_size=k, pool_stride=s, pool_padding=0,
                               unpooled_size=windows.size(self.top - 1), stride=conv.stride, padding=0,
                               groups=conv.groups, dilation=conv.dilation)
        unpooled = records[self.top].input_shape
        return deconv_step(signal, switches, conv.weight, None, pool_kernel_size=k, pool_stride=s, pool_padding=p,
                           unpooled_size=unpooled[-2:], stride=conv.stride, padding=conv.padding,
                           output_padding=output_padding(conv, records[self.bottom].input_shape, unpooled),
                           groups=conv.groups, dilation=conv.dilation)


@dataclass
class ReluConvTranspose(Stage):
    """ReLU -> conv, undone by one ``relu_conv_transpose2d`` (deconvnet mode)."""

    conv: nn.Conv2d = None

    def down(self, signal, records, windows, index=None):
        conv = self.conv
        if windows is not None:
            return relu_conv_transpose2d(signal, conv.weight, None, conv.stride, 0, 0, conv.groups, conv.dilation)
        return relu_conv_transpose2d(signal, conv.weight, None, conv.stride, conv.padding,
                                     output_padding(conv, records[self.bottom].input_shape, signal.shape),
                                     conv.groups, conv.dilation)


@dataclass
class Unpool(Stage):
    pool: nn.Module = None

    def down(self, signal, records, windows, index=None):
        k, s, p = pool_geometry(self.pool)
        switches = self.read(records, "switches", windows, index)
        if windows is not None:
            return unpool2d(signal, switches, k, s, 0, windows.size(self.top - 1))
        return unpool2d(signal, switches, k, s, p, records[self.top].input_shape[-2:])


@dataclass
class Relu(Stage):
    """Deconvnet: rectify the signal; guided: also mask by the forward's
    positive inputs; gradient: only mask."""

    def down(self, signal, records, windows, index=None):
        if self.mode == "deconvnet":
            return F.relu(signal)
        mask = self.read(records, "input", windows, index) > 0
        return F.relu(signal) * mask if self.mode == "guided" else signal * mask


@dataclass
class ConvTranspose(Stage):
    conv: nn.Conv2d = None

    def down(self, signal, records, windows, index=None):
        conv = self.conv
        if windows is not None:
            return F.conv_transpose2d(signal, conv.weight, None, conv.stride, 0, 0, conv.groups, conv.dilation)
        return F.conv_transpose2d(signal, conv.weight, None, conv.stride, conv.padding,
                                  output_padding(conv, records[self.bottom].input_shape, signal.shape), conv.groups,
                                  conv.dilation)


@dataclass
class LocalResponseNorm(Stage):
    """Skipped by the deconvnet (unless ``skip`` is False); its vector-Jacobian
    product otherwise."""

    module: nn.Module = None
    skip: bool = False

    def down(self, signal, records, windows, index=None):
        if self.skip:
            return signal
        return _vjp(self.module, self.read(records, "input", windows, index), signal)


@dataclass
class LinearTranspose(Stage):
    module: nn.Linear = None

    def down(self, signal, records, windows, index=None):
        return signal @ self.module.weight


@dataclass
class AveragePoolTranspose(Stage):
    module: nn.Module = None

    def down(self, signal, records, windows, index=None):
        return _vjp(self.module, signal.new_zeros(_rows(signal, records[self.top].input_shape)), signal)


@dataclass
class Unflatten(Stage):
    """The transpose of a flatten: a Flatten layer, or the flatten before a Linear one."""

    def down(self, signal, records, windows, index=None):
        rec = records[self.top]
        return signal.reshape(_rows(signal, rec.flat_from if rec.flat_from is not None else rec.input_shape))


@dataclass
class Identity(Stage):
    """Dropout (eval) and Identity."""

    def down(self, signal, records, windows, index=None):
        return signal


def compile_plan(steps: list[Step], top: int, mode: str, lrn: str = "skip") -> list[Stage]:
    """The stages undoing ``steps[top], ..., steps[0]``, top first; ``lrn``: how
    deconvnet mode passes LocalResponseNorm layers (``"skip"`` or ``"gradient"``)."""
    kinds = [kind_of(step.module) for step in steps]
    plan: list[Stage] = []
    i = top
    while i >= 0:
        module, kind = steps[i].module, kinds[i]
        below = (kinds[i - 1] if i >= 1 else None, kinds[i - 2] if i >= 2 else None)
        if mode == "deconvnet" and kind == "pool" and below == ("relu", "conv") and not any(
                s.flatten_before for s in steps[i - 1:i + 1]):
            stage = DeconvStep(i, i - 2, mode, pool=module, conv=steps[i - 2].module)
        elif mode == "deconvnet" and kind == "relu" and below[0] == "conv" and not steps[i].flatten_before:
            stage = ReluConvTranspose(i, i - 1, mode, conv=steps[i - 1].module)
        elif kind == "pool":
            stage = Unpool(i, i, mode, pool=module)
        elif kind == "relu":
            stage = Relu(i, i, mode)
        elif kind == "conv":
            stage = ConvTranspose(i, i, mode, conv=module)
        elif kind == "localresponsenorm":
            stage = LocalResponseNorm(i, i, mode, module=module, skip=mode == "deconvnet" and lrn == "skip")
        elif kind == "linear":
            stage = LinearTranspose(i, i, mode, module=module)
        elif kind == "adaptiveavgpool2d":
            stage = AveragePoolTranspose(i, i, mode, module=module)
        elif kind == "flatten":
            stage = Unflatten(i, i, mode)
        else:
            stage = Identity(i, i, mode)
        plan.append(stage)
        if steps[stage.bottom].flatten_before:
            plan.append(Unflatten(stage.bottom, stage.bottom, mode))
        i = stage.bottom - 1
    return plan


def window_rules(steps: list[Step]) -> list:
    """Per step, its window rule (``models.layer_table.window_rule``): kernel,
    stride, padding and dilation of convs and poolings, None for the rest."""
    rules = []
    for step in steps:
        rule = window_rule(step.module)
        if rule is not None and kind_of(step.module) == "pool":
            k, s, p = pool_geometry(step.module)
            rule = (k, s, p, (1, 1))
        rules.append(rule)
    return rules

"""The deconvnet engine (Zeiler & Fergus, section 2.1): project units or maps
of any layer back to pixel space, many at once.

One forward pass records, per layer, what the way down needs: the switches of
every max pooling (one byte each), the inputs of ReLU and LRN layers (guided
and gradient modes only) and the target layer's activations. The way down
undoes each layer in reverse with zfcore's ops:

========================  =====================  ==================  ==================
layer                     deconvnet (paper)      guided              gradient
========================  =====================  ==================  ==================
max pooling               unpool2d (switches)    unpool2d            unpool2d
ReLU                      relu(signal)           relu(signal)*mask   signal*mask
Conv2d                    conv_transpose2d with the forward weights, no bias (all modes)
LocalResponseNorm         skipped                its gradient        its gradient
Linear, avg pool, flatten their transposes (all modes)
========================  =====================  ==================  ==================

(mask: the forward ReLU's input > 0.) In deconvnet mode, pool -> ReLU -> conv
going down runs as one ``deconv_step`` and ReLU -> conv as
``relu_conv_transpose2d``. In gradient mode the result equals autograd's
gradient of the unit times the unit's value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import LayerSpec
from ..nn import MaxPool2dSwitches
from ..ops import checks, deconv_step, max_pool2d_switches, relu_conv_transpose2d, unpool2d
from .walk import Step, walk

MODES = ("deconvnet", "guided", "gradient")
_POOLS = (nn.MaxPool2d, MaxPool2dSwitches)


@dataclass
class _Record:
    """What the way down needs from one layer's forward."""

    input_shape: tuple            # the layer's input (after any flatten before it)
    flat_from: tuple | None = None  # the shape before that flatten
    input: Tensor | None = None   # ReLU/LRN inputs, guided and gradient modes
    switches: Tensor | None = None


@dataclass(frozen=True)
class Request:
    """One projection of ``project_many``: the image's index in the batch, the
    layer, the channel (or unit of a Linear layer), and the position: a unit
    ``(h, w)``, ``None`` for the channel's strongest unit, or ``"map"``."""

    image: int
    layer: str
    channel: int
    position: tuple[int, int] | str | None = None


def _pool_geometry(module):
    return checks.pool_geometry("Deconvnet", module.kernel_size, module.stride, module.padding)


def _output_padding(conv: nn.Conv2d, in_shape: tuple, out_shape: tuple) -> tuple[int, int]:
    """The output_padding that makes conv_transpose2d return the conv's input size."""
    return tuple(in_shape[-2 + i] - ((out_shape[-2 + i] - 1) * conv.stride[i] - 2 * conv.padding[i]
                                     + conv.dilation[i] * (conv.kernel_size[i] - 1) + 1) for i in range(2))


def _vjp(module: nn.Module, x: Tensor, signal: Tensor) -> Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        return torch.autograd.grad(module(x), x, signal)[0]


class Deconvnet:
    """Deconvnet projections for a plain CNN: zfcore's models, and
    torchvision-style AlexNet/VGG made of Conv2d, ReLU, MaxPool2d,
    LocalResponseNorm, Dropout, Flatten, Linear and AdaptiveAvgPool2d. Layers
    are named by ``model.named_modules()``.

    Args:
        model: the network, walked once (``zfcore.deconv.walk``); it runs in eval mode.
        input_shape: ``(C, H, W)`` of its inputs.

    Example:
        >>> net = Deconvnet(zfnet_small(), (3, 64, 64))
        >>> net.project(images, "conv2", channel=5).shape   # each image's strongest unit
        torch.Size([8, 3, 64, 64])
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int]):
        self.model = model.eval()
        self.input_shape = tuple(input_shape)
        parameter = next(model.parameters(), None)
        options = {"dtype": parameter.dtype, "device": parameter.device} if parameter is not None else {}
        self.steps: list[Step] = walk(model, torch.randn(2, *self.input_shape, **options))
        self._index = {step.name: i for i, step in enumerate(self.steps)}

    @property
    def layers(self) -> list[str]:
        """The walked layers' names, in forward order."""
        return [step.name for step in self.steps]

    def receptive_field(self, layer: str):
        """``layer``'s shape and its units' receptive field in input pixels (size,
        jump, offset: a ``zfcore.models.LayerInfo``); ``self.layer_spec().box(layer,
        h, w)`` gives any unit's input box."""
        self._layer_index(layer)
        return self.layer_spec()[layer]

    def layer_spec(self) -> LayerSpec:
        """Shapes and receptive fields of every walked layer."""
        return LayerSpec.of_layers([(s.name, s.module) for s in self.steps], self.input_shape)

    def _layer_index(self, layer: str) -> int:
        if layer not in self._index:
            raise ValueError(f"Deconvnet: no layer named {layer!r}; layers are {', '.join(self.layers)}")
        return self._index[layer]

    # ------------------------------------------------------------------ forward

    def _forward(self, images: Tensor, top: int, mode: str) -> tuple[list[_Record], Tensor]:
        records, x = [], images
        with torch.no_grad():
            for step in self.steps[: top + 1]:
                flat_from = None
                if step.flatten_before:
                    flat_from, x = tuple(x.shape), torch.flatten(x, 1)
                module = step.module
                rec = _Record(tuple(x.shape), flat_from)
                if isinstance(module, _POOLS):
                    y, rec.switches = max_pool2d_switches(x, *_pool_geometry(module), module.ceil_mode)
                else:
                    y = module(x.clone() if getattr(module, "inplace", False) else x)
                if mode != "deconvnet" and isinstance(module, nn.ReLU | nn.LocalResponseNorm):
                    rec.input = x
                records.append(rec)
                x = y
        return records, x

    # ---------------------------------------------------------------- way down

    def _down(self, signal: Tensor, records: list[_Record], top: int, mode: str) -> Tensor:
        i = top
        while i >= 0:
            module = self.steps[i].module
            below = [self.steps[j].module if j >= 0 else None for j in (i - 1, i - 2)]
            fused_step = (mode == "deconvnet" and isinstance(module, _POOLS) and isinstance(below[0], nn.ReLU)
                          and isinstance(below[1], nn.Conv2d))
            fused_conv = mode == "deconvnet" and isinstance(module, nn.ReLU) and isinstance(below[0], nn.Conv2d)
            if fused_step:
                conv = below[1]
                k, s, p = _pool_geometry(module)
                unpooled = records[i].input_shape
                signal = deconv_step(signal, records[i].switches, conv.weight, None, pool_kernel_size=k,
                                     pool_stride=s, pool_padding=p, unpooled_size=unpooled[-2:],
                                     stride=conv.stride, padding=conv.padding,
                                     output_padding=_output_padding(conv, records[i - 2].input_shape, unpooled),
                                     groups=conv.groups, dilation=conv.dilation)
                i -= 3
            elif fused_conv:
                conv = below[0]
                signal = relu_conv_transpose2d(signal, conv.weight, None, conv.stride, conv.padding,
                                               _output_padding(conv, records[i - 1].input_shape, signal.shape),
                                               conv.groups, conv.dilation)
                i -= 2
            else:
                signal = self._undo(signal, records[i], module, mode)
                i -= 1
            if records[i + 1].flat_from is not None:
                signal = signal.reshape(records[i + 1].flat_from)
        return signal

    @staticmethod
    def _undo(signal: Tensor, rec: _Record, module: nn.Module, mode: str) -> Tensor:
        if isinstance(module, _POOLS):
            return unpool2d(signal, rec.switches, *_pool_geometry(module), rec.input_shape[-2:])
        if isinstance(module, nn.ReLU):
            if mode == "deconvnet":
                return F.relu(signal)
            mask = rec.input > 0
            return F.relu(signal) * mask if mode == "guided" else signal * mask
        if isinstance(module, nn.Conv2d):
            return F.conv_transpose2d(signal, module.weight, None, module.stride, module.padding,
                                      _output_padding(module, rec.input_shape, signal.shape), module.groups,
                                      module.dilation)
        if isinstance(module, nn.LocalResponseNorm):
            return signal if mode == "deconvnet" else _vjp(module, rec.input, signal)
        if isinstance(module, nn.Linear):
            return signal @ module.weight
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return _vjp(module, signal.new_zeros(rec.input_shape), signal)
        if isinstance(module, nn.Flatten):
            return signal.reshape(rec.input_shape)
        return signal  # Dropout (eval) and Identity

    # -------------------------------------------------------------- projections

    def project(self, images: Tensor, layer: str, channel: int, position=None, mode: str = "deconvnet") -> Tensor:
        """Project one unit or map of ``layer`` back to input space, for every image.

        Args:
            images: ``Tensor[N, C, H, W]``, as the model takes them.
            layer: a layer name (``self.layers``).
            channel: the feature map (or the unit of a Linear layer).
            position: ``(h, w)``; ``None`` for the map's strongest unit in each
                image; ``"map"`` for the whole map. The chosen activations keep
                their values, every other activation of the layer is zeroed.
            mode: ``"deconvnet"`` (the paper), ``"guided"`` or ``"gradient"``.

        Returns:
            ``Tensor[N, C, H, W]`` in input space.
        """
        n = images.shape[0] if isinstance(images, Tensor) else 0
        return self.project_many(images, [Request(i, layer, channel, position) for i in range(n)], mode)

    def project_many(self, images: Tensor, requests: Sequence[Request], mode: str = "deconvnet") -> Tensor:
        """Many projections in one batch: one forward over ``images``, then every
        request goes down together with its own image's switches and masks.

        Args:
            images: ``Tensor[N, C, H, W]``.
            requests: ``Request(image, layer, channel, position)`` items.
            mode: as ``project``.

        Returns:
            ``Tensor[len(requests), C, H, W]``, in request order.
        """
        if mode not in MODES:
            raise ValueError(f"Deconvnet: mode must be one of {', '.join(MODES)} (got {mode!r})")
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != self.input_shape:
            got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"Deconvnet: images must be a Tensor[N, {', '.join(map(str, self.input_shape))}] "
                             f"(got {got})")
        requests = [r if isinstance(r, Request) else Request(*r) for r in requests]
        result = images.new_zeros((len(requests), *images.shape[1:]))
        for layer in dict.fromkeys(r.layer for r in requests):
            top = self._layer_index(layer)
            chosen = [i for i, r in enumerate(requests) if r.layer == layer]
            wanted = torch.tensor([requests[i].image for i in chosen], device=images.device)
            if len(wanted) and (wanted.min() < 0 or wanted.max() >= images.shape[0]):
                raise ValueError(f"Deconvnet: a request's image index is outside the {images.shape[0]} images")
            distinct, inverse = torch.unique(wanted, return_inverse=True)
            records, activations = self._forward(images[distinct], top, mode)
            signal = self._seed(activations[inverse], [requests[i] for i in chosen])
            for rec in records:  # each request with its own image's switches and masks
                rec.switches = rec.switches[inverse] if rec.switches is not None else None
                rec.input = rec.input[inverse] if rec.input is not None else None
                rec.input_shape = (len(chosen), *rec.input_shape[1:])
                rec.flat_from = (len(chosen), *rec.flat_from[1:]) if rec.flat_from is not None else None
            result[chosen] = self._down(signal, records, top, mode)
        return result

    @staticmethod
    def _seed(activations: Tensor, requests: list[Request]) -> Tensor:
        """Keep each request's unit (or map) at its activation, zero the rest."""
        signal = torch.zeros_like(activations)
        for row, r in enumerate(requests):
            if not 0 <= r.channel < activations.shape[1]:
                raise ValueError(f"Deconvnet: channel {r.channel} is outside {r.layer!r}'s "
                                 f"{activations.shape[1]} channels")
            if activations.dim() == 2:
                signal[row, r.channel] = activations[row, r.channel]
                continue
            plane = activations[row, r.channel]
            if r.position == "map":
                signal[row, r.channel] = plane
                continue
            if r.position is None:
                h, w = divmod(int(plane.argmax()), plane.shape[1])
            else:
                h, w = r.position
                if not (0 <= h < plane.shape[0] and 0 <= w < plane.shape[1]):
                    raise ValueError(f"Deconvnet: position {r.position} is outside {r.layer!r}'s "
                                     f"{plane.shape[0]}x{plane.shape[1]} map")
            signal[row, r.channel, h, w] = plane[h, w]
        return signal

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

from .. import geometry
from ..models import LayerSpec
from ..nn import MaxPool2dSwitches
from ..ops import checks, deconv_step, max_pool2d_switches, relu_conv_transpose2d, unpool2d
from .walk import Step, walk

MODES = ("deconvnet", "guided", "gradient")
_POOLS = nn.MaxPool2d | MaxPool2dSwitches


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
    return tuple(geometry.output_padding(in_shape[-2 + i], out_shape[-2 + i], conv.kernel_size[i], conv.stride[i],
                                         conv.padding[i], conv.dilation[i]) for i in range(2))


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

    @torch.no_grad()
    def project_many(self, images: Tensor, requests: Sequence[Request], mode: str = "deconvnet",
                     crop: bool = True) -> Tensor:
        """Many projections in one batch: one forward over ``images``, then every
        request goes down together with its own image's switches and masks.

        A single unit's projection is nonzero only inside its receptive field, so
        with ``crop`` (the default) units of the conv stack go down on their
        receptive-field window at every layer: the same values, far less work
        (``crop_work_ratio``). Maps and units above the conv stack go down whole.

        Args:
            images: ``Tensor[N, C, H, W]``.
            requests: ``Request(image, layer, channel, position)`` items.
            mode: as ``project``.
            crop: go down on receptive-field windows where that is exact.

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
            group = [requests[i] for i in chosen]
            units = all(r.position != "map" for r in group)
            if crop and units and activations.dim() == 4 and self.crop_work_ratio(layer) > 1:
                values, corners = self._units(activations, inverse, group)
                windows, tops = self._down_cropped(values, group, corners, records, inverse, top, mode)
                height, width = images.shape[-2:]
                for row, window, (r, c) in zip(chosen, windows, tops.tolist()):  # paste, clipped to the image
                    r0, c0 = max(r, 0), max(c, 0)
                    r1, c1 = min(r + window.shape[-2], height), min(c + window.shape[-1], width)
                    if r1 > r0 and c1 > c0:
                        result[row, :, r0:r1, c0:c1] = window[:, r0 - r:r1 - r, c0 - c:c1 - c]
                continue
            signal = self._seed(activations[inverse], group)
            for rec in records:  # each request with its own image's switches and masks
                rec.switches = rec.switches[inverse] if rec.switches is not None else None
                rec.input = rec.input[inverse] if rec.input is not None else None
                rec.input_shape = (len(chosen), *rec.input_shape[1:])
                rec.flat_from = (len(chosen), *rec.flat_from[1:]) if rec.flat_from is not None else None
            result[chosen] = self._down(signal, records, top, mode)
        return result

    # ------------------------------------------------------- receptive-field crops

    def _croppable(self, top: int) -> bool:
        return all(isinstance(s.module, nn.Conv2d | nn.ReLU | nn.LocalResponseNorm | nn.Dropout | nn.Identity
                              | _POOLS) and not s.flatten_before for s in self.steps[: top + 1])

    def _windows(self, top: int, corners: Tensor) -> dict[int, tuple[Tensor, tuple[int, int]]]:
        """Per step, the window of its output that can be nonzero on the way
        down from one unit per row of ``corners`` ([R, 2], the unit's (h, w)):
        ``{i: (top-left corners [R, 2], (height, width))}``; key -1 is the input."""
        windows, size = {}, (1, 1)
        for i in range(top, -1, -1):
            windows[i] = (corners, size)
            module = self.steps[i].module
            if isinstance(module, nn.Conv2d | _POOLS):
                if isinstance(module, nn.Conv2d):
                    k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
                else:
                    (k, s, p), d = _pool_geometry(module), (1, 1)
                k_eff = torch.tensor([d[j] * (k[j] - 1) + 1 for j in range(2)])
                corners = corners * torch.tensor(s) - torch.tensor(p)
                size = tuple(int((size[j] - 1) * s[j] + k_eff[j]) for j in range(2))
        windows[-1] = (corners, size)
        return windows

    def crop_work_ratio(self, layer: str) -> float:
        """Elements the uncropped way down from one unit of ``layer`` touches,
        over those its receptive-field windows touch (summed over the layers).
        Below 1 (windows wider than the maps, deep units of small inputs) the
        engine goes down uncropped."""
        top = self._layer_index(layer)
        if not self._croppable(top):
            return 1.0
        spec = self.layer_spec()
        windows = self._windows(top, torch.zeros(1, 2, dtype=torch.long))
        full = cropped = 0
        for i in range(top + 1):
            c, h, w = spec[self.steps[i].name].shape
            full += c * h * w
            cropped += c * windows[i][1][0] * windows[i][1][1]
        return full / cropped

    @staticmethod
    def _inside(x: Tensor, corners: Tensor, size: tuple[int, int], extent) -> Tensor:
        """``x`` (windows at ``corners``) with the rows and columns outside ``extent`` zeroed."""
        rows = corners[:, 0, None] + torch.arange(size[0])
        cols = corners[:, 1, None] + torch.arange(size[1])
        keep_r = ((rows >= 0) & (rows < extent[0])).to(x.device)
        keep_c = ((cols >= 0) & (cols < extent[1])).to(x.device)
        return x.masked_fill(~(keep_r[:, None, :, None] & keep_c[:, None, None, :]), 0)

    @staticmethod
    def _crop(t: Tensor, corners: Tensor, size: tuple[int, int], image: Tensor) -> Tensor:
        """Windows ``[R, C, *size]`` of ``t[image[r]]`` ([N, C, H, W]) at ``corners``, zero outside."""
        _, _, h, w = t.shape
        pads = [max(0, -int(corners[:, j].min())) for j in range(2)]
        ends = [max(0, int(corners[:, j].max()) + size[j] - (h, w)[j]) for j in range(2)]
        padded = F.pad(t, (pads[1], ends[1], pads[0], ends[0]))
        top, left = (corners[:, 0] + pads[0]).tolist(), (corners[:, 1] + pads[1]).tolist()
        return torch.stack([padded[n, :, r:r + size[0], c:c + size[1]]
                            for n, r, c in zip(image.tolist(), top, left)])

    def _down_cropped(self, values: Tensor, requests: list[Request], corners: Tensor, records: list[_Record],
                      inverse: Tensor, top: int, mode: str) -> tuple[Tensor, Tensor]:
        """The way down on receptive-field windows; records hold the distinct
        images, ``inverse`` maps each request to its image. Returns the input-space
        windows and their top-left corners."""
        windows = self._windows(top, corners)
        channels = self.layer_spec()[self.steps[top].name].shape[0]
        x = values.new_zeros(len(requests), channels, 1, 1)
        x[torch.arange(len(requests)), torch.tensor([r.channel for r in requests]), 0, 0] = values
        crop = lambda t, window: self._crop(t, *window, image=inverse)  # noqa: E731
        i = top
        while i >= 0:
            if i < top:  # a transposed conv's window reaches past the map: that part is padding, drop it
                x = self._inside(x, *windows[i], records[i + 1].input_shape[-2:])
            module = self.steps[i].module
            below = [self.steps[j].module if j >= 0 else None for j in (i - 1, i - 2)]
            if isinstance(module, _POOLS):
                k, s, _ = _pool_geometry(module)
                switches = crop(records[i].switches, windows[i])
                in_size = windows[i - 1][1]
                if mode == "deconvnet" and isinstance(below[0], nn.ReLU) and isinstance(below[1], nn.Conv2d):
                    conv = below[1]
                    x = deconv_step(x, switches, conv.weight, None, pool_kernel_size=k, pool_stride=s,
                                    pool_padding=0, unpooled_size=in_size, stride=conv.stride, padding=0,
                                    groups=conv.groups, dilation=conv.dilation)
                    i -= 3
                    continue
                x = unpool2d(x, switches, k, s, 0, in_size)
            elif isinstance(module, nn.ReLU):
                if mode == "deconvnet":
                    if isinstance(below[0], nn.Conv2d):
                        conv = below[0]
                        x = relu_conv_transpose2d(x, conv.weight, None, conv.stride, 0, 0, conv.groups,
                                                  conv.dilation)
                        i -= 2
                        continue
                    x = F.relu(x)
                else:
                    mask = crop(records[i].input, windows[i]) > 0
                    x = F.relu(x) * mask if mode == "guided" else x * mask
            elif isinstance(module, nn.Conv2d):
                x = F.conv_transpose2d(x, module.weight, None, module.stride, 0, 0, module.groups, module.dilation)
            elif isinstance(module, nn.LocalResponseNorm) and mode != "deconvnet":
                x = _vjp(module, crop(records[i].input, windows[i]), x)
            i -= 1
        return self._inside(x, *windows[-1], records[0].input_shape[-2:]), windows[-1][0]

    @staticmethod
    def _units(activations: Tensor, inverse: Tensor, requests: list[Request]) -> tuple[Tensor, Tensor]:
        """Each request's unit: its activation value [R] and its (h, w) [R, 2]."""
        channels = torch.tensor([r.channel for r in requests], device=activations.device)
        if len(channels) and (channels.min() < 0 or channels.max() >= activations.shape[1]):
            bad = next(r for r in requests if not 0 <= r.channel < activations.shape[1])
            raise ValueError(f"Deconvnet: channel {bad.channel} is outside {bad.layer!r}'s "
                             f"{activations.shape[1]} channels")
        planes = activations[inverse, channels]  # [R, H, W]
        h, w = planes.shape[-2:]
        corners = torch.empty(len(requests), 2, dtype=torch.long)
        strongest = planes.flatten(1).argmax(1).cpu()
        for row, r in enumerate(requests):
            if r.position is None:
                corners[row] = torch.stack([strongest[row] // w, strongest[row] % w])
            else:
                if not (0 <= r.position[0] < h and 0 <= r.position[1] < w):
                    raise ValueError(f"Deconvnet: position {r.position} is outside {r.layer!r}'s {h}x{w} map")
                corners[row] = torch.tensor(r.position)
        rows = torch.arange(len(requests), device=planes.device)
        return planes[rows, corners[:, 0].to(planes.device), corners[:, 1].to(planes.device)], corners

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

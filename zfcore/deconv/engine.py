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

The way down is a plan of stages (``zfcore.deconv.plan``), compiled once per
layer and mode; receptive-field windows and their arithmetic are in
``zfcore.deconv.windows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from ..models import LayerSpec
from ..models.layer_table import POINTWISE, WINDOWED, kind_of
from ..nn.normalization import local_response_norm
from ..ops import max_pool2d_switches
from .plan import Record, Stage, compile_plan, pool_geometry, window_rules
from .walk import Step, walk
from .windows import Windows, window_sizes

MODES = ("deconvnet", "guided", "gradient")


@dataclass(frozen=True)
class Request:
    """One projection of ``project_many``: the image's index in the batch, the
    layer, the channel (or unit of a Linear layer), and the position: a unit
    ``(h, w)``, ``None`` for the channel's strongest unit, or ``"map"``."""

    image: int
    layer: str
    channel: int
    position: tuple[int, int] | str | None = None


class Deconvnet:
    """Deconvnet projections for a plain CNN: zfcore's models, and
    torchvision-style AlexNet/VGG made of Conv2d, ReLU, MaxPool2d,
    LocalResponseNorm, Dropout, Flatten, Linear and AdaptiveAvgPool2d. Layers
    are named by ``model.named_modules()``.

    Args:
        model: the network, walked once (``zfcore.deconv.walk``); it runs in eval mode.
        input_shape: ``(C, H, W)`` of its inputs.
        lrn: how deconvnet mode goes down through LocalResponseNorm layers:
            ``"skip"`` (the paper) or ``"gradient"`` (their vector-Jacobian
            product, as the guided and gradient modes always do, and as
            Captum's ``NeuronDeconvolution`` does).

    Example:
        >>> net = Deconvnet(zfnet_small(), (3, 64, 64))
        >>> net.project(images, "conv2", channel=5).shape   # each image's strongest unit
        torch.Size([8, 3, 64, 64])
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], lrn: str = "skip"):
        if lrn not in ("skip", "gradient"):
            raise ValueError(f"Deconvnet: lrn must be 'skip' or 'gradient' (got {lrn!r})")
        self.lrn = lrn
        self.model = model.eval()
        self.input_shape = tuple(input_shape)
        parameter = next(model.parameters(), None)
        options = {"dtype": parameter.dtype, "device": parameter.device} if parameter is not None else {}
        self.steps: list[Step] = walk(model, torch.randn(2, *self.input_shape, **options))
        self._index = {step.name: i for i, step in enumerate(self.steps)}
        self._rules = window_rules(self.steps)
        self._plans: dict[tuple[int, str], list[Stage]] = {}

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
        return self._spec

    @cached_property
    def _spec(self) -> LayerSpec:
        return LayerSpec.of_layers([(s.name, s.module) for s in self.steps], self.input_shape)

    def plan(self, layer: str, mode: str = "deconvnet") -> list[Stage]:
        """The stages of the way down from ``layer`` in ``mode``, top first
        (``zfcore.deconv.plan``); compiled once and kept."""
        self._check_mode(mode)
        return self._plan(self._layer_index(layer), mode)

    def _plan(self, top: int, mode: str) -> list[Stage]:
        if (top, mode) not in self._plans:
            self._plans[(top, mode)] = compile_plan(self.steps, top, mode, self.lrn)
        return self._plans[(top, mode)]

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"Deconvnet: mode must be one of {', '.join(MODES)} (got {mode!r})")

    def _layer_index(self, layer: str) -> int:
        if layer not in self._index:
            raise ValueError(f"Deconvnet: no layer named {layer!r}; layers are {', '.join(self.layers)}")
        return self._index[layer]

    # ------------------------------------------------------------------ forward

    def _forward(self, images: Tensor, top: int, mode: str, keep: set[int]) -> tuple[list[Record], dict[int, Tensor]]:
        """One forward through steps ``0..top``: each step's record, and the
        outputs of the steps in ``keep``."""
        records, outputs, x = [], {}, images
        # The memory of the caller's images, kept outputs and records: an in-place
        # layer (ReLU(inplace=True)) must not overwrite it, and runs on a copy there.
        held = {images.untyped_storage().data_ptr()}
        with torch.no_grad():
            for i, step in enumerate(self.steps[: top + 1]):
                flat_from = None
                if step.flatten_before:
                    flat_from, x = tuple(x.shape), torch.flatten(x, 1)
                module, kind = step.module, kind_of(step.module)
                rec = Record(tuple(x.shape), flat_from)
                if (mode != "deconvnet" and kind == "relu") or (
                        kind == "localresponsenorm" and (mode != "deconvnet" or self.lrn == "gradient")):
                    rec.input = x
                    held.add(x.untyped_storage().data_ptr())
                if kind == "pool":
                    y, rec.switches = max_pool2d_switches(x, *pool_geometry(module), module.ceil_mode)
                elif type(module) is nn.LocalResponseNorm and x.dim() == 4:  # the same function, faster
                    y = local_response_norm(x, module.size, module.alpha, module.beta, module.k)
                elif getattr(module, "inplace", False) and x.untyped_storage().data_ptr() in held:
                    y = module(x.clone())
                else:
                    y = module(x)
                records.append(rec)
                if i in keep:
                    outputs[i] = y
                    held.add(y.untyped_storage().data_ptr())
                x = y
        return records, outputs

    # ---------------------------------------------------------------- way down

    def _down(self, signal: Tensor, records: list[Record], top: int, mode: str, windows: Windows | None = None,
              index: Tensor | None = None) -> Tensor:
        """Run the plan from step ``top``: on whole maps (``index``: each signal
        row's image in ``records``), or on ``windows``."""
        for stage in self._plan(top, mode):
            if windows is not None and stage.top < top:
                # a transposed conv's window reaches past the map: that part is padding, drop it
                signal = windows.inside(signal, stage.top, records[stage.top + 1].input_shape[-2:])
            signal = stage.down(signal, records, windows, index)
        return signal

    # -------------------------------------------------------------- projections

    @torch.no_grad()
    def project_signal(self, images: Tensor, layer: str, signal: Tensor, mode: str = "deconvnet") -> Tensor:
        """Send any ``signal`` at ``layer``'s output down to input space, each row
        with its own image's switches and masks: the general form of ``project``
        (which seeds one unit or map at its activation). In gradient mode this is
        the vector-Jacobian product of the network up to ``layer`` with ``signal``.

        Args:
            images: ``Tensor[N, C, H, W]``.
            layer: a layer name (``self.layers``).
            signal: ``Tensor[N, *shape]``, ``shape`` being ``layer``'s output's
                (``self.layer_spec()[layer].shape``).
            mode: as ``project``.

        Returns:
            ``Tensor[N, C, H, W]`` in input space.
        """
        self._check(images, [], mode)
        top = self._layer_index(layer)
        expected = (images.shape[0], *self._spec[layer].shape)
        if not isinstance(signal, Tensor) or tuple(signal.shape) != expected or not signal.is_floating_point():
            got = f"{signal.dtype} {list(signal.shape)}" if isinstance(signal, Tensor) else type(signal).__name__
            raise ValueError(f"Deconvnet: signal must be a float Tensor[{', '.join(map(str, expected))}] "
                             f"(got {got})")
        records, _ = self._forward(images, top, mode, set())
        index = torch.arange(images.shape[0], device=images.device)
        return self._down(signal.to(images.dtype), records, top, mode, index=index)

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
        requests = self._check(images, requests, mode)
        result = images.new_zeros((len(requests), *images.shape[1:]))
        if not requests:
            return result
        # one forward over every requested image, to the deepest requested layer
        tops = {layer: self._layer_index(layer) for layer in dict.fromkeys(r.layer for r in requests)}
        distinct, inverse = torch.unique(torch.tensor([r.image for r in requests]), return_inverse=True)
        records, outputs = self._forward(images[distinct.to(images.device)], max(tops.values()), mode,
                                         set(tops.values()))
        for layer, top in tops.items():
            chosen = [i for i, r in enumerate(requests) if r.layer == layer]
            group, index = [requests[i] for i in chosen], inverse[chosen]
            activations = outputs[top]
            if crop and all(r.position != "map" for r in group) and activations.dim() == 4 \
                    and self.crop_work_ratio(layer) > 1:
                self._paste(result, chosen, *self._down_cropped(activations, group, index, records, top, mode))
            else:
                signal = self._seed(activations[index.to(activations.device)], group)
                result[chosen] = self._down(signal, records, top, mode, index=index.to(images.device))
        return result

    def _check(self, images: Tensor, requests: Sequence, mode: str) -> list[Request]:
        """Requests as ``Request`` items, each checked against the layer it names."""
        self._check_mode(mode)
        if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != self.input_shape:
            got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"Deconvnet: images must be a Tensor[N, {', '.join(map(str, self.input_shape))}] "
                             f"(got {got})")
        checked = []
        for r in requests:
            if not isinstance(r, Request):
                try:
                    r = Request(*r)
                except TypeError:
                    raise ValueError(f"Deconvnet: a request is Request(image, layer, channel, position) or such a "
                                     f"tuple (got {r!r})") from None
            shape = self._spec[self.steps[self._layer_index(r.layer)].name].shape
            for name in ("image", "channel"):
                value = getattr(r, name)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"Deconvnet: a request's {name} must be an int (got {value!r})")
            if not 0 <= r.image < images.shape[0]:
                raise ValueError(f"Deconvnet: a request's image index is outside the {images.shape[0]} images")
            if not 0 <= r.channel < shape[0]:
                raise ValueError(f"Deconvnet: channel {r.channel} is outside {r.layer!r}'s {shape[0]} channels")
            if len(shape) == 3 and r.position not in (None, "map"):
                p = r.position
                if not (isinstance(p, Sequence) and len(p) == 2 and all(isinstance(v, int) for v in p)):
                    raise ValueError(f"Deconvnet: a request's position must be None, 'map' or (h, w) ints "
                                     f"(got {p!r})")
                if not (0 <= p[0] < shape[1] and 0 <= p[1] < shape[2]):
                    raise ValueError(f"Deconvnet: position {tuple(p)} is outside {r.layer!r}'s "
                                     f"{shape[1]}x{shape[2]} map")
            checked.append(r)
        return checked

    @staticmethod
    def _paste(result: Tensor, rows: list[int], windows: Tensor, corners: Tensor) -> None:
        """Each input-space window into its row of ``result``, clipped to the image."""
        height, width = result.shape[-2:]
        for row, window, (r, c) in zip(rows, windows, corners.tolist()):
            r0, c0 = max(r, 0), max(c, 0)
            r1, c1 = min(r + window.shape[-2], height), min(c + window.shape[-1], width)
            if r1 > r0 and c1 > c0:
                result[row, :, r0:r1, c0:c1] = window[:, r0 - r:r1 - r, c0 - c:c1 - c]

    # ------------------------------------------------------- receptive-field crops

    def _croppable(self, top: int) -> bool:
        return all(kind_of(s.module) in WINDOWED + POINTWISE and not s.flatten_before for s in self.steps[: top + 1])

    def crop_work_ratio(self, layer: str) -> float:
        """Elements the uncropped way down from one unit of ``layer`` touches,
        over those its receptive-field windows touch (summed over the layers).
        Below 1 (windows wider than the maps, deep units of small inputs) the
        engine goes down uncropped."""
        top = self._layer_index(layer)
        if not self._croppable(top):
            return 1.0
        sizes = window_sizes(self._rules, top)
        full = cropped = 0
        for i in range(top + 1):
            c, h, w = self._spec[self.steps[i].name].shape
            full += c * h * w
            cropped += c * sizes[i][0] * sizes[i][1]
        return full / cropped

    def _down_cropped(self, activations: Tensor, requests: list[Request], index: Tensor, records: list[Record],
                      top: int, mode: str) -> tuple[Tensor, Tensor]:
        """The way down on receptive-field windows from each request's unit
        (``index``: each request's image in ``records``). Returns the input-space
        windows and their top-left corners."""
        values, corners = self._units(activations, index, requests)
        windows = Windows(self._rules, top, corners, index)
        x = values.new_zeros(len(requests), activations.shape[1], 1, 1)
        x[torch.arange(len(requests)), torch.tensor([r.channel for r in requests]), 0, 0] = values
        x = self._down(x, records, top, mode, windows)
        return windows.inside(x, -1, records[0].input_shape[-2:]), windows.corners[-1]

    @staticmethod
    def _units(activations: Tensor, index: Tensor, requests: list[Request]) -> tuple[Tensor, Tensor]:
        """Each request's unit: its activation value [R] and its (h, w) [R, 2]."""
        channels = torch.tensor([r.channel for r in requests], device=activations.device)
        planes = activations[index.to(activations.device), channels]  # [R, H, W]
        w = planes.shape[-1]
        strongest = planes.flatten(1).argmax(1).cpu()
        corners = torch.stack([strongest // w, strongest % w], 1)
        for row, r in enumerate(requests):
            if r.position is not None:
                corners[row] = torch.tensor(r.position)
        rows = torch.arange(len(requests), device=planes.device)
        return planes[rows, corners[:, 0].to(planes.device), corners[:, 1].to(planes.device)], corners

    @staticmethod
    def _seed(activations: Tensor, requests: list[Request]) -> Tensor:
        """Keep each request's unit (or map) at its activation, zero the rest."""
        signal = torch.zeros_like(activations)
        for row, r in enumerate(requests):
            if activations.dim() == 2:
                signal[row, r.channel] = activations[row, r.channel]
                continue
            plane = activations[row, r.channel]
            if r.position == "map":
                signal[row, r.channel] = plane
                continue
            h, w = divmod(int(plane.argmax()), plane.shape[1]) if r.position is None else r.position
            signal[row, r.channel, h, w] = plane[h, w]
        return signal

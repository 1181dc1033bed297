"""The deconvnet engine (Zeiler & Fergus, section 2.1): project units or maps
of any layer of any CNN back to pixel space, many at once.

The engine works on the model's captured graph (``zfcore.deconv.graph``:
``torch.export``, decomposed to core ATen ops), not on module hooks: every
call of a ReLU (a module used twice, ``F.relu``, ``x.relu_()``) is its own
node, and BatchNorm, residual additions, concatenation and every pooling are
rows of one ``LayerRule`` table (``zfcore.deconv.rules``):

========================  =====================  ==================  ==================
op                        deconvnet (paper)      guided              gradient
========================  =====================  ==================  ==================
max pooling               unpool2d (switches)    unpool2d            unpool2d
ReLU                      relu(signal)           relu(signal)*mask   signal*mask
convolution               transposed convolution with the forward weights, no bias (all modes)
BatchNorm (eval)          its per-channel scale, folded into the convolution below it
LocalResponseNorm         skipped                its gradient        its gradient
add / cat, split          the signal to every input / the matching slices
linear ops                their transposes (linear, pooling, mean, view, padding)
other nonlinearities      their gradient (sigmoid, tanh, GELU, SiLU, ReLU6, ...), as Captum
========================  =====================  ==================  ==================

(mask: the forward ReLU's input > 0, kept as 1 byte.) One forward pass records
what the way down needs: the switches of every max pooling (one byte each),
the ReLU masks (guided and gradient modes), the inputs of ops that go down by
their gradient, and the requested layers' activations. In deconvnet mode,
pool <- ReLU <- conv going down runs as one ``deconv_step`` and ReLU <- conv as
``relu_conv_transpose2d`` (``zfcore.deconv.plan``). In gradient mode the
result equals autograd's gradient of the unit times the unit's value.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torch import Tensor

from ..models import LayerSpec
from ..models.layer_spec import LayerInfo
from ..models.layer_table import kind_of
from ..nn.normalization import local_response_norm
from ..ops import max_pool2d_switches
from . import rules as R
from .graph import CaptureError, Graph, capture
from .plan import Stage, compile_plan
from .windows import Windows, geometries

MODES = ("deconvnet", "guided", "gradient")

# A module's captured graphs, by input shape, dtype and device, while the module
# lives and keeps its structure (its submodules, their settings and parameter objects): capture
# (torch.export) costs about a second, and the analyses build engines often.
# Weights changed in place are read afresh (Deconvnet.consts).
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _settings(module: torch.nn.Module) -> tuple:
    """A module's plain settings (stride, alpha, eps, inplace, ...): what capture bakes in."""
    return tuple(sorted((k, v) for k, v in vars(module).items() if not k.startswith("_") and k != "training"
                        and isinstance(v, (int, float, bool, str, tuple, type(None)))))


def _structure(model: torch.nn.Module) -> tuple:
    return (tuple((name, type(m), id(m), _settings(m)) for name, m in model.named_modules()),
            tuple((name, id(t)) for name, t in (*model.named_parameters(), *model.named_buffers())))


def _captured(model, input_shape, example_inputs) -> Graph:
    if not isinstance(model, torch.nn.Module) or example_inputs is not None:
        return Graph(*capture(model, input_shape, example=example_inputs))
    tensor = next(model.parameters(), None)
    key = (input_shape, tensor.dtype if tensor is not None else None, tensor.device if tensor is not None else None)
    structure = _structure(model)
    cached = _GRAPHS.setdefault(model, {})
    if key not in cached or cached[key][0] != structure:
        cached[key] = (structure, Graph(*capture(model, input_shape)))
    return cached[key][1]


@dataclass
class Recording:
    """What one forward recorded for the way down, one row per image: per node,
    the records of ``Deconvnet``'s forward (switches; ReLU masks and the inputs
    of ops that go down by their gradient in the guided and gradient modes), and
    the requested layers' outputs. ``Deconvnet.record`` makes one,
    ``Deconvnet.project_recorded`` sends units down with it; ``select`` and
    ``cat`` keep rows of it apart (a store of images to project later) and put
    them back together."""

    mode: str
    records: dict[int, tuple[Tensor, ...]]
    outputs: dict[str, Tensor]
    rows: int

    def select(self, rows, outputs: bool = True) -> "Recording":
        """A copy of ``rows`` (a sequence or ``LongTensor`` of row indices); with
        ``outputs=False`` only the records (what the way down reads)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        pick = lambda t: t.index_select(0, rows.to(t.device)) if isinstance(t, Tensor) else t  # noqa: E731
        return Recording(self.mode, {i: tuple(pick(t) for t in ts) for i, ts in self.records.items()},
                         {name: pick(t) for name, t in self.outputs.items()} if outputs else {}, len(rows))

    @staticmethod
    def cat(parts: Sequence["Recording"]) -> "Recording":
        """The rows of ``parts``, in order: the records every part holds, the
        outputs every part holds."""
        if not parts or len({p.mode for p in parts}) != 1:
            raise ValueError("Recording.cat: parts must be recordings of one mode (got "
                             f"{sorted({p.mode for p in parts})})")
        if len(parts) == 1:
            return parts[0]
        nodes = set.intersection(*(set(p.records) for p in parts))
        names = set.intersection(*(set(p.outputs) for p in parts))
        join = lambda ts: torch.cat(ts) if isinstance(ts[0], Tensor) else ts[0]  # noqa: E731
        return Recording(parts[0].mode,
                         {i: tuple(join(ts) for ts in zip(*(p.records[i] for p in parts))) for i in sorted(nodes)},
                         {n: torch.cat([p.outputs[n] for p in parts]) for n in names}, sum(p.rows for p in parts))

    @property
    def nbytes(self) -> int:
        """Bytes held by the records and outputs."""
        tensors = [t for ts in self.records.values() for t in ts] + list(self.outputs.values())
        return sum(t.untyped_storage().nbytes() for t in tensors if isinstance(t, Tensor))


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
    """Deconvnet projections for any CNN that ``torch.export`` captures:
    torchvision-style VGG (with BatchNorm), ResNet, DenseNet, Inception and
    MobileNet blocks, zfcore's own models, or an ``ExportedProgram`` /
    ``fx.GraphModule`` handed in. Layers are ``named_modules()`` paths, leaves
    (``layer2.0.conv1``) or containers (``layer3``); a module called more than
    once has the call sites ``NAME#0``, ``NAME#1``, ...

    ReLU goes down by the mode's rule; every other nonlinearity (sigmoid,
    tanh, GELU, SiLU, hardswish, ReLU6/hardtanh, leaky ReLU, ...) goes down by
    its gradient, as Captum's ``NeuronDeconvolution`` and
    ``NeuronGuidedBackprop`` do. An op the table does not know is an error
    naming the node, its ATen op and its module.

    Args:
        model: an ``nn.Module`` (captured once in eval mode; its training flag is
            restored), an ``ExportedProgram`` or an ``fx.GraphModule``.
        input_shape: ``(C, H, W)`` (any per-example shape) of its inputs;
            optional for an ``ExportedProgram``.
        lrn: how deconvnet mode goes down through LocalResponseNorm layers:
            ``"skip"`` (the paper) or ``"gradient"`` (their vector-Jacobian
            product, as the guided and gradient modes always do, and as
            Captum's ``NeuronDeconvolution`` does).

    Example:
        >>> net = Deconvnet(resnet18(), (3, 224, 224))
        >>> net.project(images, "layer3.1", channel=5).shape   # each image's strongest unit
        torch.Size([8, 3, 224, 224])
    """

    def __init__(self, model, input_shape: Sequence[int] | None = None, lrn: str = "skip", *,
                 example_inputs: tuple | None = None):
        if lrn not in ("skip", "gradient"):
            raise ValueError(f"Deconvnet: lrn must be 'skip' or 'gradient' (got {lrn!r})")
        if example_inputs is not None:
            input_shape = tuple(example_inputs[0].shape[1:])
        if input_shape is None and isinstance(model, torch.nn.Module):
            raise ValueError("Deconvnet: input_shape (C, H, W) is required for a module")
        if input_shape is not None and (isinstance(input_shape, (str, bytes)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_shape)):
            raise ValueError(f"Deconvnet: input_shape must be positive ints, such as (3, 224, 224) "
                             f"(got {input_shape!r})")
        self.lrn = lrn
        self.model = model
        self.graph = _captured(model, tuple(input_shape) if input_shape is not None else None, example_inputs)
        shape = self.graph.nodes[self.graph.input].shape
        if input_shape is not None and tuple(input_shape) != shape:
            raise ValueError(f"Deconvnet: input_shape {tuple(input_shape)} differs from the program's input "
                             f"{shape}")
        self.input_shape = shape
        self._rules: dict[int, R.LayerRule] = {}
        self._plans: dict[tuple[int, str], list[Stage]] = {}
        self._consts_key = None
        self._consts: dict = {}

    # ---------------------------------------------------------------- layers

    @property
    def layers(self) -> list[str]:
        """Every layer (module call) name, in forward order."""
        return list(self.graph.layers)

    def _layer_index(self, layer: str) -> int:
        if not isinstance(layer, str):
            raise ValueError(f"Deconvnet: a layer is a module name (str), such as {self.layers[0]!r} "
                             f"(got {layer!r})")
        if layer in self.graph.layers:
            return self.graph.layers[layer]
        if layer in self.graph.call_sites:
            raise ValueError(f"Deconvnet: {layer!r} is called {len(self.graph.call_sites[layer])} times in one "
                             f"forward pass; name one call: {', '.join(self.graph.call_sites[layer])}")
        raise ValueError(f"Deconvnet: no layer named {layer!r}; layers are {', '.join(self.layers)}")

    def _rule(self, i: int) -> R.LayerRule:
        if i not in self._rules:
            self._rules[i] = R.rule_of(self.graph.nodes[i])
        return self._rules[i]

    def _window_of(self, node, geometry):
        rule = self._rule(node.index)
        if rule.window is None:
            return None
        if rule.window is R.pointwise and any(self.graph.nodes[j].shape != node.shape for j in node.inputs):
            return None  # a broadcast (an SE gate): its units see more than their window
        return rule.window(node, geometry)

    def receptive_field(self, layer: str) -> LayerInfo:
        """``layer``'s shape and its units' receptive field in input pixels (size,
        jump, offset: a ``zfcore.models.LayerInfo``): the union of the windows
        through every branch. ``self.layer_spec().box(layer, h, w)`` gives any
        unit's input box."""
        self._layer_index(layer)
        return self._spec[layer]

    def layer_spec(self) -> LayerSpec:
        """Shapes and receptive fields of every layer."""
        return self._spec

    @cached_property
    def _spec(self) -> LayerSpec:
        infos = []
        modules = dict(self.model.named_modules()) if isinstance(self.model, torch.nn.Module) else {}
        height, width = (self.input_shape[-2:] if len(self.input_shape) == 3 else (1, 1))
        for name, top in self.graph.layers.items():
            node = self.graph.nodes[top]
            geo = self._geometry(top)
            module = modules.get(name.partition("#")[0])
            kind = kind_of(module) if module is not None and kind_of(module) is not None else (
                self._rule(top).kind if node.op != "input" else "input")
            if geo is None or self.graph.input not in geo:
                infos.append(LayerInfo(name, kind, node.shape, (height, width), (1, 1),
                                       ((height - 1) / 2, (width - 1) / 2)))
                continue
            (jh, ah, bh), (jw, aw, bw) = geo[self.graph.input]
            size = (bh - ah, bw - aw)
            infos.append(LayerInfo(name, kind, node.shape, size, (jh, jw),
                                   (ah + (size[0] - 1) / 2, aw + (size[1] - 1) / 2)))
        return LayerSpec(self.input_shape, infos)

    def _geometry(self, top: int):
        if len(self.input_shape) != 3:
            return None
        try:
            return geometries(self.graph, self._window_of, top)
        except CaptureError:
            return None

    def plan(self, layer: str, mode: str = "deconvnet") -> list[Stage]:
        """The stages of the way down from ``layer`` in ``mode``, top first
        (``zfcore.deconv.plan``); compiled once and kept."""
        self._check_mode(mode)
        return self._plan(self._layer_index(layer), mode)

    def _plan(self, top: int, mode: str) -> list[Stage]:
        if (top, mode) not in self._plans:
            self._plans[(top, mode)] = compile_plan(self.graph, self._rule, top, mode, self.consts())
        return self._plans[(top, mode)]

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"Deconvnet: mode must be one of {', '.join(MODES)} (got {mode!r})")

    def consts(self) -> dict:
        """The program's constants: weights, buffers and what is computed from
        them alone (a weight's transpose), recomputed when a weight changed."""
        key = tuple(t._version for t in self.graph.params.values())
        if key != self._consts_key:
            with torch.no_grad():
                self._consts = self.graph.fold_constants()
            self._consts_key = key
        return self._consts

    # ------------------------------------------------------------------ forward

    def _forward(self, images: Tensor, tops, mode: str, keep: set[int]) -> tuple[dict, dict[int, Tensor]]:
        """One forward through every node ``tops`` read: each node's record (a
        tuple of tensors) and the outputs of the nodes in ``keep``."""
        graph, consts = self.graph, self.consts()
        needed = graph.ancestors(tops)
        inside = set(needed)
        left = {i: sum(1 for u in graph.nodes[i].users if u in inside) for i in needed}
        inputs = images if isinstance(images, tuple) else (images,)
        values: dict[int, Tensor] = dict(zip(graph.inputs, inputs))
        records: dict[int, tuple] = {}
        # memory an in-place ReLU must not overwrite: the caller's images, kept outputs, records
        held = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, Tensor)}
        with torch.no_grad():
            for i in needed:
                node = graph.nodes[i]
                if node.op == "input":
                    continue
                rule = self._rule(i)
                record = R.records_of(rule, mode, self.lrn)
                x = values[node.inputs[0]] if node.inputs else None
                if rule.kind == "pool":
                    k, s, p, ceil = R.pool_params(node)
                    y, switches = max_pool2d_switches(x, k, s, p, ceil)
                    records[i] = (switches,)
                elif rule.kind == "relu":
                    if record == "mask":
                        records[i] = (x > 0,)
                    ptr = x.untyped_storage().data_ptr()
                    # in place only where nothing else reads this memory: no other reader of the
                    # input, no record or kept output, no live view of it (a flatten read later)
                    inplace = left[node.inputs[0]] == 1 and node.inputs[0] not in keep and ptr not in held \
                        and sum(v.untyped_storage().data_ptr() == ptr for v in values.values()
                                if isinstance(v, Tensor)) == 1
                    y = torch.relu_(x) if inplace else torch.relu(x)
                else:
                    if record == "inputs":
                        records[i] = tuple(values[j] for j in node.inputs)
                        held.update(values[j].untyped_storage().data_ptr() for j in node.inputs)
                    if node.op == "lrn" and node.lrn is not None and x.dim() == 4:  # the same function, faster
                        y = local_response_norm(x, *node.lrn)
                    else:
                        y = R.apply(graph, consts, node, values)
                values[i] = y
                if i in keep:
                    held.add(y.untyped_storage().data_ptr())
                for j in node.inputs:
                    left[j] -= 1
                    if left[j] == 0 and j not in keep and j not in graph.inputs:
                        values.pop(j, None)
        return records, {i: values[i] for i in keep}

    def activations(self, images: Tensor, layer: str, *, layer_input: bool = False) -> Tensor:
        """``layer``'s output (or, with ``layer_input``, the input it reads) for
        ``images`` (``Tensor[N, *input_shape]``), by the captured graph."""
        if not isinstance(images, tuple):
            self._check_images(images)
        top = self._node(layer, layer_input)
        if top in self.graph.inputs:
            return (images if isinstance(images, tuple) else (images,))[self.graph.inputs.index(top)]
        return self._forward(images, [top], "deconvnet", {top})[1][top]

    def _node(self, layer: str, layer_input: bool = False) -> int:
        top = self._layer_index(layer)
        return self.graph.layer_input(layer) if layer_input else top

    # ---------------------------------------------------------------- way down

    def _down(self, signal: Tensor, records: dict, top: int, mode: str, windows: Windows | None = None,
              index: Tensor | None = None, every_input: bool = False) -> Tensor:
        """Run the plan from node ``top``: on whole maps (``index``: each signal
        row's image in ``records``), or on ``windows``. Returns the signal at the input."""
        graph = self.graph
        run = R.Run(graph, self.consts(), mode, self.lrn, records, windows, index)
        signals = {top: signal}
        for stage in self._plan(top, mode):
            s = signals.pop(stage.top, None)
            if s is None:
                continue
            if windows is not None and stage.top != top:
                # a transposed conv's window reaches past the map: that part is padding, drop it
                s = windows.inside(s, stage.top, graph.nodes[stage.top].shape[-2:])
            outs = stage.down(s, run)
            natural = self._window_of(graph.nodes[stage.bottom], windows.geo[stage.bottom]) \
                if windows is not None else None
            for k, (j, out) in enumerate(zip(stage.inputs, outs)):
                if windows is not None:
                    out = self._place(out, natural[k], windows, j)
                signals[j] = signals[j] + out if j in signals else out
        if every_input:  # a model of several inputs (on whole maps)
            return tuple(signals[i] if i in signals else signal.new_zeros((signal.shape[0], *graph.nodes[i].shape))
                         for i in graph.inputs)
        result = signals.get(graph.input)
        if result is None:  # nothing reached the input (a constant output)
            shape = self.input_shape if windows is None else (self.input_shape[0], *windows.size(graph.input))
            result = signal.new_zeros((signal.shape[0], *shape))
        return result

    @staticmethod
    def _place(out: Tensor, natural, windows: Windows, j: int) -> Tensor:
        """A branch's signal on its own window, placed in node ``j``'s (the union of its branches')."""
        geo = windows.geo[j]
        offsets = [n[1] - g[1] for n, g in zip(natural, geo)]
        size = windows.size(j)
        if offsets == [0, 0] and tuple(out.shape[-2:]) == size:
            return out
        placed = out.new_zeros((*out.shape[:-2], *size))
        placed[..., offsets[0]:offsets[0] + out.shape[-2], offsets[1]:offsets[1] + out.shape[-1]] = out
        return placed

    # -------------------------------------------------------------- projections

    @torch.no_grad()
    def project_signal(self, images: Tensor, layer: str, signal: Tensor, mode: str = "deconvnet") -> Tensor:
        """Send any ``signal`` at ``layer``'s output down to input space, each row
        with its own image's switches and masks: the general form of ``project``
        (which seeds one unit or map at its activation). In gradient mode this is
        the vector-Jacobian product of the network up to ``layer`` with ``signal``.

        Args:
            images: ``Tensor[N, *input_shape]``.
            layer: a layer name (``self.layers``).
            signal: ``Tensor[N, *shape]``, ``shape`` being ``layer``'s output's
                (``self.layer_spec()[layer].shape``).
            mode: as ``project``.

        Returns:
            ``Tensor[N, *input_shape]`` in input space.
        """
        self._check(images, [], mode)
        return self._signal_down(images, self._layer_index(layer), signal, mode)

    @torch.no_grad()
    def _signal_down(self, images: Tensor, top: int, signal: Tensor, mode: str) -> Tensor:
        """``project_signal`` from node ``top``; ``images`` may be a tuple (a model
        of several inputs: one signal per input comes back)."""
        n = (images[0] if isinstance(images, tuple) else images).shape[0]
        expected = (n, *self.graph.nodes[top].shape)
        if not isinstance(signal, Tensor) or tuple(signal.shape) != expected or not signal.is_floating_point():
            got = f"{signal.dtype} {list(signal.shape)}" if isinstance(signal, Tensor) else type(signal).__name__
            raise ValueError(f"Deconvnet: signal must be a float Tensor[{', '.join(map(str, expected))}] "
                             f"(got {got})")
        inputs = images if isinstance(images, tuple) else (images,)
        if top in self.graph.inputs:
            result = tuple(signal.to(t.dtype).clone() if i == top else
                           torch.zeros_like(t) if isinstance(t, Tensor) else None
                           for i, t in zip(self.graph.inputs, inputs))
            return result if isinstance(images, tuple) else result[0]
        records, _ = self._forward(images, [top], mode, set())
        index = torch.arange(inputs[0].shape[0], device=inputs[0].device)
        return self._down(signal.to(inputs[0].dtype), records, top, mode, index=index,
                          every_input=isinstance(images, tuple))

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
        layers = list(dict.fromkeys(r.layer for r in requests))
        distinct, inverse = torch.unique(torch.tensor([r.image for r in requests]), return_inverse=True)
        recording = self.record(images[distinct.to(images.device)], layers, mode)
        for layer in layers:
            chosen = [i for i, r in enumerate(requests) if r.layer == layer]
            group = [replace(requests[i], image=int(inverse[i])) for i in chosen]
            windows, corners = self._project_recorded(recording, layer, group, None, crop)
            if windows.shape[-2:] == result.shape[-2:] and not corners.any():
                result[chosen] = windows
            else:
                self._paste(result, chosen, windows, corners)
        return result

    @torch.no_grad()
    def record(self, images: Tensor, layers: Sequence[str], mode: str = "deconvnet") -> Recording:
        """One forward over ``images`` to the deepest of ``layers``: what the way
        down from units of ``layers`` reads in ``mode``, and the layers' outputs.

        Args:
            images: ``Tensor[N, *input_shape]``.
            layers: layer names (``self.layers``).
            mode: as ``project``.

        Returns:
            A ``Recording`` of ``N`` rows.
        """
        self._check_mode(mode)
        self._check_images(images)
        tops = {layer: self._layer_index(layer) for layer in dict.fromkeys(layers)}
        records, outputs = self._forward(images, list(tops.values()), mode, set(tops.values()))
        return Recording(mode, records, {layer: images if top == self.graph.input else outputs[top]
                                         for layer, top in tops.items()}, images.shape[0])

    @torch.no_grad()
    def project_recorded(self, recording: Recording, requests: Sequence[Request], values: Tensor | None = None,
                         crop: bool = True) -> tuple[Tensor, Tensor]:
        """Send units (or maps) of one layer down with the records of an earlier
        forward (``record``), in the recording's mode: no forward pass here.

        Args:
            recording: a ``Recording`` holding the records below the requests' layer.
            requests: ``Request`` items of one layer; ``image`` is a row of ``recording``.
            values: ``Tensor[len(requests)]``, each unit's activation (its seed);
                read from ``recording.outputs`` where None. Units with a given
                value need a position (``(h, w)``; a Linear layer's unit: None).
            crop: go down on receptive-field windows where that is exact.

        Returns:
            ``windows[R, C, h, w]`` and their top-left corners ``[R, 2]`` in input
            pixels: each unit's receptive-field window (zero outside the input)
            where it went down cropped, else the whole input at corner ``(0, 0)``.
        """
        requests = [r if isinstance(r, Request) else Request(*r) for r in requests]
        if not requests:
            raise ValueError("Deconvnet: project_recorded needs at least one request")
        layers = {r.layer for r in requests}
        if len(layers) != 1:
            raise ValueError(f"Deconvnet: project_recorded takes requests of one layer (got {sorted(layers)})")
        layer = requests[0].layer
        top = self._layer_index(layer)
        shape = self.graph.nodes[top].shape
        for r in requests:
            if not 0 <= r.image < recording.rows:
                raise ValueError(f"Deconvnet: a request's image index is outside the recording's {recording.rows} "
                                 "rows")
            if not 0 <= r.channel < shape[0]:
                raise ValueError(f"Deconvnet: channel {r.channel} is outside {layer!r}'s {shape[0]} channels")
        if values is None and layer not in recording.outputs:
            raise ValueError(f"Deconvnet: the recording has no output of {layer!r}; pass the units' values")
        if values is not None and (len(values) != len(requests) or any(
                r.position == "map" or (r.position is None and len(shape) == 3) for r in requests)):
            raise ValueError("Deconvnet: values need one unit per request, each with its position")
        return self._project_recorded(recording, layer, requests, values, crop)

    def _project_recorded(self, recording: Recording, layer: str, requests: list[Request], values: Tensor | None,
                          crop: bool) -> tuple[Tensor, Tensor]:
        """``project_recorded`` without the checks."""
        top = self._layer_index(layer)
        records, mode = recording.records, recording.mode
        index = torch.tensor([r.image for r in requests])
        activations = recording.outputs.get(layer)
        corners = torch.zeros((len(requests), 2), dtype=torch.long)
        if top == self.graph.input and values is None:
            return self._seed(activations[index.to(activations.device)], requests), corners
        if crop and all(r.position != "map" for r in requests) and len(self.graph.nodes[top].shape) == 3 \
                and self.crop_work_ratio(layer) > 1:
            if values is None:
                values, positions = self._units(activations, index, requests)
            else:
                positions = torch.tensor([r.position for r in requests], dtype=torch.long).reshape(-1, 2)
            channels = torch.tensor([r.channel for r in requests])
            return self._down_windows(values, positions, channels, index, records, top, mode)
        device = (activations if values is None else values).device
        if values is None:
            signal = self._seed(activations[index.to(activations.device)], requests)
        else:
            signal = values.new_zeros((len(requests), *self.graph.nodes[top].shape))
            at = [torch.arange(len(requests)), torch.tensor([r.channel for r in requests])]
            if signal.dim() == 4:
                at += list(torch.tensor([r.position for r in requests], dtype=torch.long).reshape(-1, 2).t())
            signal[tuple(t.to(signal.device) for t in at)] = values
        if top == self.graph.input:  # the seed is its own projection
            return signal, corners
        return self._down(signal, records, top, mode, index=index.to(device)), corners

    def _check(self, images: Tensor, requests: Sequence, mode: str) -> list[Request]:
        """Requests as ``Request`` items, each checked against the layer it names."""
        self._check_mode(mode)
        self._check_images(images)
        checked = []
        for r in requests:
            if not isinstance(r, Request):
                try:
                    r = Request(*r)
                except TypeError:
                    raise ValueError(f"Deconvnet: a request is Request(image, layer, channel, position) or such a "
                                     f"tuple (got {r!r})") from None
            shape = self.graph.nodes[self._layer_index(r.layer)].shape
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

    def _check_images(self, images: Tensor) -> None:
        if not isinstance(images, Tensor) or images.dim() != len(self.input_shape) + 1 or \
                tuple(images.shape[1:]) != self.input_shape or not images.is_floating_point():
            got = f"{images.dtype} {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"Deconvnet: images must be a Tensor[N, {', '.join(map(str, self.input_shape))}] "
                             f"of floats (got {got})")

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

    def crop_work_ratio(self, layer: str) -> float:
        """Elements the uncropped way down from one unit of ``layer`` touches,
        over those its receptive-field windows touch (summed over the nodes).
        1 where units see the whole map; below 1 (windows wider than the maps,
        deep units of small inputs) the engine goes down uncropped."""
        geo = self._geometry(self._layer_index(layer))
        if geo is None:
            return 1.0
        full = cropped = 0
        for i, g in geo.items():
            if i == self.graph.input:
                continue
            c, h, w = self.graph.nodes[i].shape
            full += c * h * w
            cropped += c * (g[0][2] - g[0][1]) * (g[1][2] - g[1][1])
        return full / cropped

    def _down_windows(self, values: Tensor, positions: Tensor, channels: Tensor, index: Tensor, records: dict,
                      top: int, mode: str) -> tuple[Tensor, Tensor]:
        """The way down on receptive-field windows from units of node ``top``:
        ``values[R]`` at ``positions[R, 2]`` of ``channels[R]`` (``index``: each
        unit's image in ``records``). Returns the input-space windows and their
        top-left corners."""
        windows = Windows(self._geometry(top), positions, index)
        x = values.new_zeros(len(values), self.graph.nodes[top].shape[0], 1, 1)
        x[torch.arange(len(values), device=x.device), channels.to(x.device), 0, 0] = values
        x = self._down(x, records, top, mode, windows)
        start = self.graph.input
        return windows.inside(x, start, self.input_shape[-2:]), windows.corners[start]

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
            plane = activations[row, r.channel]
            if activations.dim() != 4 or r.position == "map":
                signal[row, r.channel] = plane
                continue
            h, w = divmod(int(plane.argmax()), plane.shape[1]) if r.position is None else r.position
            signal[row, r.channel, h, w] = plane[h, w]
        return signal

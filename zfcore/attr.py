"""A Captum-shaped front door to the deconvnet engine, for libraries that
embed zfcore.

``NeuronDeconvolution``, ``NeuronGuidedBackprop`` and ``NeuronGradient`` take
``(model, layer)`` and ``attribute(inputs, neuron_selector)`` with Captum's
argument conventions and return what Captum's classes of the same names
return for plain CNNs, computed by ``zfcore.deconv.Deconvnet`` (switches of
one byte, fused kernels) instead of autograd hooks:

- ``layer``: a module of ``model`` (a leaf layer, or a container such as
  ``model.features``, whose output is its last layer's), or its name;
- ``neuron_selector``: an int (a layer with one dimension per example), a
  tuple of ints and slices indexing the layer's output without the batch
  dimension (slices select several neurons, whose sum is attributed), or a
  callable taking the layer's output and returning ``Tensor[N]``;
- ``inputs``: a float tensor of any rank (``Tensor[N, C, H, W]`` images, or
  ``Tensor[N, D]`` features of an MLP) or a tuple of several; the
  attributions come back in the same form, shaped as the inputs;
- ``attribute_to_neuron_input=True`` selects the neuron in the layer's input;
- ``multiplies_by_inputs`` is False and ``has_convergence_delta()`` is False,
  as for Captum's classes; the model's training flag is left as it was.

The attribution is the gradient of the selected neuron (1 at the neuron, not
its activation) with ReLU's backward replaced by ``relu(grad)``
(deconvolution), by ``relu(grad) * (input > 0)`` (guided backprop), or left
as it is (gradient), at every ReLU *call* of the captured graph (a reused,
functional or in-place ReLU included, where module hooks miss or break);
LocalResponseNorm layers and every other nonlinearity pass their gradient,
as under autograd. Only the graph up to the layer matters: an op above it
(a final Softmax) is never touched.

Several inputs (a tuple in, a tuple of attributions out) and
``additional_forward_args`` (passed to the forward, not attributed) are
captured for each call. A module called more than once in a forward is named
by its call site, ``"NAME#0"``; any model that ``zfcore.deconv.Deconvnet``
captures; ``device_ids`` is accepted and ignored.

Example:
    >>> from zfcore.attr import NeuronDeconvolution
    >>> deconv = NeuronDeconvolution(model, model.conv5)
    >>> attributions = deconv.attribute(images, neuron_selector=(12, 6, 6))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .deconv import Deconvnet

__all__ = ["NeuronDeconvolution", "NeuronGradient", "NeuronGuidedBackprop"]


class _NeuronAttribution:
    mode = ""
    multiplies_by_inputs = False

    def __init__(self, model: nn.Module, layer: nn.Module | str, device_ids=None):
        name = type(self).__name__
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name}: model must be a torch.nn.Module (got {type(model).__name__}); zfcore "
                            "captures the module's graph")
        names = {module: n for n, module in model.named_modules()}
        call = ""
        if isinstance(layer, str):
            path, hash_, call = layer.partition("#")
            modules = dict(model.named_modules())
            if path not in modules:
                raise ValueError(f"{name}: model has no module named {path!r}")
            layer = modules[path]
            call = hash_ + call
        if not isinstance(layer, nn.Module) or layer not in names:
            raise ValueError(f"{name}: layer must be a module of model or its name (got {layer!r})")
        self.forward_func = self.model = model
        self.layer = layer
        self.device_ids = device_ids
        self._layer_name = names[layer] + call
        self._engines: dict[tuple, Deconvnet] = {}

    def has_convergence_delta(self) -> bool:
        return False

    def _engine(self, x: Tensor) -> Deconvnet:
        key = tuple(x.shape[1:])
        if key not in self._engines:
            self._engines[key] = Deconvnet(self.model, key, lrn="gradient")
        return self._engines[key]

    def attribute(self, inputs, neuron_selector, additional_forward_args=None,
                  attribute_to_neuron_input: bool = False):
        """Attributions of the selected neuron to ``inputs`` (see the module's
        docstring for the conventions); the same form as ``inputs``."""
        name = type(self).__name__
        as_tuple = isinstance(inputs, tuple)
        tensors = inputs if as_tuple else (inputs,)
        if not tensors or not all(isinstance(t, Tensor) and t.dim() >= 1 and t.is_floating_point()
                                  for t in tensors):
            got = ", ".join(f"{t.dtype} {list(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                            for t in tensors)
            raise ValueError(f"{name}: inputs must be a float Tensor[N, ...] or a tuple of them (got {got})")
        if len({t.shape[0] for t in tensors}) != 1:
            raise ValueError(f"{name}: every input must have the same number of examples (got "
                             f"{[t.shape[0] for t in tensors]})")
        extra = () if additional_forward_args is None else (
            additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,))
        if not isinstance(attribute_to_neuron_input, bool):
            raise TypeError(f"{name}: attribute_to_neuron_input must be a bool (got {attribute_to_neuron_input!r})")
        args = tuple(t.detach() for t in tensors) + tuple(
            a.detach() if isinstance(a, Tensor) else a for a in extra)
        if len(args) == 1:
            net, x = self._engine(args[0]), args[0]
        else:  # several inputs, or extra arguments (a constant of the capture): captured for this call
            net = Deconvnet(self.model, lrn="gradient", example_inputs=args)
            x = args
        top = net._node(self._layer_name, attribute_to_neuron_input)
        seed = self._seed(net, x, attribute_to_neuron_input, neuron_selector)
        result = net._signal_down(x, top, seed, self.mode)
        results = result if isinstance(result, tuple) else (result,)
        results = tuple(r.to(t.dtype) for r, t in zip(results, tensors))
        return results if as_tuple else results[0]

    def _seed(self, net: Deconvnet, x: Tensor, layer_input: bool, selector) -> Tensor:
        """The gradient of the selected neuron (or of the callable's output)
        with respect to the layer's output (or input)."""
        name = type(self).__name__
        n = (x[0] if isinstance(x, tuple) else x).shape[0]
        with torch.no_grad():
            out = net.activations(x, self._layer_name, layer_input=layer_input)
        with torch.enable_grad():
            out = out.detach().clone().requires_grad_()
            if callable(selector):
                value = selector(out)
                if not isinstance(value, Tensor) or value.shape not in ((), (n,)):
                    got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(f"{name}: a callable neuron_selector must return a scalar Tensor or a "
                                     f"Tensor[{n}], one value per example (got {got})")
            else:
                value = self._select(out, selector)
            seed, = torch.autograd.grad(value.sum(), out, allow_unused=True)
        return seed if seed is not None else torch.zeros_like(out)

    def _select(self, view: Tensor, selector) -> Tensor:
        name = type(self).__name__
        shape = tuple(view.shape[1:])
        index = (selector,) if isinstance(selector, int) and not isinstance(selector, bool) else selector
        if not isinstance(index, tuple) or not all(
                isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool)) for i in index):
            raise ValueError(f"{name}: neuron_selector must be an int, a tuple of ints and slices, or a callable "
                             f"(got {selector!r})")
        if len(index) != len(shape):
            raise ValueError(f"{name}: neuron_selector {selector!r} must index all {len(shape)} dimensions of the "
                             f"layer's output {list(shape)} (the batch dimension excluded)")
        for i, n in zip(index, shape):
            if isinstance(i, int) and not -n <= i < n:
                raise ValueError(f"{name}: neuron_selector {selector!r} is outside the layer's output {list(shape)}")
        selected = view[(slice(None), *index)]
        if any(isinstance(i, slice) for i in index):
            return selected.reshape(selected.shape[0], -1).sum(1)
        return selected


class NeuronDeconvolution(_NeuronAttribution):
    """Captum's ``NeuronDeconvolution`` on the deconvnet engine: ReLU's backward
    replaced by ``relu(grad)`` (Zeiler & Fergus's rectification going down)."""

    mode = "deconvnet"


class NeuronGuidedBackprop(_NeuronAttribution):
    """Captum's ``NeuronGuidedBackprop`` on the deconvnet engine: ReLU's backward
    replaced by ``relu(grad) * (input > 0)``."""

    mode = "guided"


class NeuronGradient(_NeuronAttribution):
    """Captum's ``NeuronGradient`` on the deconvnet engine: the plain gradient of
    the selected neuron with respect to the inputs."""

    mode = "gradient"

    def __init__(self, forward_func: nn.Module, layer: nn.Module | str, device_ids=None):
        super().__init__(forward_func, layer, device_ids)


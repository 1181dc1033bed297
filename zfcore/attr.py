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
- ``inputs``: a ``Tensor[N, C, H, W]`` or a one-element tuple of it; the
  attributions come back in the same form, shaped as the inputs;
- ``attribute_to_neuron_input=True`` selects the neuron in the layer's input.

The attribution is the gradient of the selected neuron (1 at the neuron, not
its activation) with ReLU's backward replaced by ``relu(grad)``
(deconvolution), by ``relu(grad) * (input > 0)`` (guided backprop), or left
as it is (gradient); LocalResponseNorm layers pass their gradient in every
mode, as under autograd.

Limits: plain chains of Conv2d, ReLU, MaxPool2d, LocalResponseNorm, Dropout,
Flatten, Linear and AdaptiveAvgPool2d (``zfcore.deconv.walk``); any other
model is refused with the walk's error naming the module. One input tensor,
no ``additional_forward_args``; ``device_ids`` is accepted and ignored.

Example:
    >>> from zfcore.attr import NeuronDeconvolution
    >>> deconv = NeuronDeconvolution(model, model.conv5)
    >>> attributions = deconv.attribute(images, neuron_selector=(12, 6, 6))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .deconv import Deconvnet
from .deconv.walk import replay

__all__ = ["NeuronDeconvolution", "NeuronGradient", "NeuronGuidedBackprop"]


class _NeuronAttribution:
    mode = ""

    def __init__(self, model: nn.Module, layer: nn.Module | str, device_ids=None):
        name = type(self).__name__
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name}: model must be a torch.nn.Module, a plain CNN (got {type(model).__name__}); "
                            "zfcore cannot walk a plain function")
        names = {module: n for n, module in model.named_modules()}
        if isinstance(layer, str):
            modules = dict(model.named_modules())
            if layer not in modules:
                raise ValueError(f"{name}: model has no module named {layer!r}")
            layer = modules[layer]
        if not isinstance(layer, nn.Module) or layer not in names:
            raise ValueError(f"{name}: layer must be a module of model or its name (got {layer!r})")
        self.forward_func = self.model = model
        self.layer = layer
        self.device_ids = device_ids
        self._layer_name = names[layer]
        self._members = {module for module in layer.modules()}
        self._engines: dict[tuple, Deconvnet] = {}

    def _engine(self, x: Tensor) -> Deconvnet:
        key = tuple(x.shape[1:])
        if key not in self._engines:
            self._engines[key] = Deconvnet(self.model, key, lrn="gradient")
        return self._engines[key]

    def _top(self, net: Deconvnet) -> int:
        """The step whose output is the layer's: the layer itself, or a
        container's last walked layer."""
        inside = [i for i, step in enumerate(net.steps) if step.module in self._members]
        if not inside:
            raise ValueError(f"{type(self).__name__}: layer {self._layer_name!r} is not on the model's forward "
                             f"path; its layers are {', '.join(net.layers)}")
        return inside[-1]

    def attribute(self, inputs, neuron_selector, additional_forward_args=None,
                  attribute_to_neuron_input: bool = False):
        """Attributions of the selected neuron to ``inputs`` (see the module's
        docstring for the conventions); the same form as ``inputs``."""
        name = type(self).__name__
        as_tuple = isinstance(inputs, tuple)
        if as_tuple:
            if len(inputs) != 1:
                raise ValueError(f"{name}: zfcore attributes one input tensor (got a tuple of {len(inputs)})")
            inputs = inputs[0]
        if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
            got = f"{inputs.dtype} {list(inputs.shape)}" if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"{name}: inputs must be a float Tensor[N, C, H, W] or a tuple of one (got {got})")
        if additional_forward_args is not None:
            raise ValueError(f"{name}: additional_forward_args are not supported: a plain CNN takes its images "
                             "only")
        if not isinstance(attribute_to_neuron_input, bool):
            raise TypeError(f"{name}: attribute_to_neuron_input must be a bool (got {attribute_to_neuron_input!r})")
        x = inputs.detach()
        net = self._engine(x)
        top = self._top(net)
        if attribute_to_neuron_input:  # the layer's input: the previous step's output
            flatten = net.steps[top].flatten_before
            top -= 1
        seed = self._seed(net, x, top, neuron_selector, flatten=attribute_to_neuron_input and flatten)
        if top < 0:  # the input of the first layer is the image itself
            result = seed
        else:
            result = net.project_signal(x, net.layers[top], seed, self.mode)
        result = result.to(inputs.dtype)
        return (result,) if as_tuple else result

    def _seed(self, net: Deconvnet, x: Tensor, top: int, selector, flatten: bool) -> Tensor:
        """The gradient of the selected neuron (or of the callable's output)
        with respect to step ``top``'s output."""
        name = type(self).__name__
        with torch.enable_grad():
            out = replay(net.steps[: top + 1], x) if top >= 0 else x.clone()
            out = out.detach().requires_grad_()
            view = torch.flatten(out, 1) if flatten else out
            if callable(selector):
                value = selector(view)
                if not isinstance(value, Tensor) or value.shape != (x.shape[0],):
                    got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(f"{name}: a callable neuron_selector must return a Tensor[{x.shape[0]}], one "
                                     f"value per example (got {got})")
            else:
                value = self._select(view, selector)
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


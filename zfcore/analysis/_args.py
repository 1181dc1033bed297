"""What the analyses share, written once: argument checks with one wording,
``eval_mode``, the forward-hook capture ``LayerTap`` (from ``_stream``), the
forwards built on it, and the layers an analysis picks on a model it knows
nothing about (``main_path``).

Every check raises ``ValueError("{caller}: {name} must be ... (got ...)")``
(``check_model``: a ``TypeError``, the wrong kind of object):
the function the user called, the argument and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._stream import LayerTap, call_site, check_layers, model_device

__all__ = ["LayerTap", "PathLayer", "check_choice", "check_class_range", "check_dataset", "check_images",
           "check_labels", "check_layers", "check_logits", "check_model", "check_positive_float",
           "check_positive_int", "check_seed", "describe", "eval_mode", "first_per_class", "forward_with_layers",
           "in_sequence", "last_maps", "layer_features", "main_path", "model_device"]


def describe(value) -> str:
    """A short description of an argument for an error message."""
    if isinstance(value, Tensor):
        return f"{value.dtype} {list(value.shape)}"
    return repr(value) if isinstance(value, int | float | str | bool | type(None)) else type(value).__name__


def check_positive_int(value, name: str, caller: str, *, minimum: int = 1) -> int:
    """``value`` itself, an int (not a bool) of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{caller}: {name} must be {wanted} (got {value!r})")
    return value


def check_positive_float(value, name: str, caller: str, *, allow_zero: bool = False) -> float:
    """``float(value)``, a finite real number above 0 (at least 0 with ``allow_zero``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    if not ok:
        wanted = "a non-negative number" if allow_zero else "a positive number"
        raise ValueError(f"{caller}: {name} must be {wanted} (got {value!r})")
    return float(value)


def check_seed(seed, caller: str) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 31:
        raise ValueError(f"{caller}: seed must be a non-negative int below 2**31 (got {seed!r})")
    return seed


def check_choice(value, choices, name: str, caller: str):
    if value not in choices:
        names = [repr(c) for c in choices]
        wanted = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ValueError(f"{caller}: {name} must be {wanted} (got {value!r})")
    return value


def check_model(model, caller: str) -> nn.Module:
    """``model`` itself, an ``nn.Module`` (else a ``TypeError``: the wrong kind of object)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller}: model must be a torch.nn.Module (got {type(model).__name__})")
    return model


def check_images(images, caller: str, name: str = "images", *, allow_empty: bool = False) -> Tensor:
    """The one contract of an image batch handed to an analysis: a float
    ``Tensor[N, C, H, W]`` in the model's input space, finite, with ``N >= 1``
    (``N == 0`` too with ``allow_empty``)."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point() \
            or (not allow_empty and images.shape[0] < 1) or images.shape[-1] < 1 or images.shape[-2] < 1:
        count = "" if allow_empty else " with N >= 1"
        raise ValueError(f"{caller}: {name} must be a float Tensor[N, C, H, W]{count} in the model's input space "
                         f"(got {describe(images)})")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{caller}: {name} hold NaN or infinite values")
    return images


def check_labels(labels, n: int, caller: str, name: str = "labels", *, classes: int | None = None) -> Tensor:
    """An integer ``Tensor[n]`` of non-negative class indices (below ``classes`` when given)."""
    integer = isinstance(labels, Tensor) and not labels.is_floating_point() and not labels.is_complex() \
        and labels.dtype != torch.bool
    if not integer or labels.shape != (n,):
        raise ValueError(f"{caller}: {name} must be an integer Tensor[{n}] (got {describe(labels)})")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"{caller}: {name} must be non-negative class indices (got {int(labels.min())})")
    if classes is not None and len(labels) and int(labels.max()) >= classes:
        raise ValueError(f"{caller}: {name} must be class indices in 0..{classes - 1} (got {int(labels.max())})")
    return labels


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` the model (and every submodule) in eval mode;
    each module's own training flag is restored afterwards, also when the body
    raises."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def layer_features(model: nn.Module, images: Tensor, layer: str, batch_size: int, progress: bool,
                    caller: str) -> Tensor:
    """``layer``'s output for each image, flattened: ``Tensor[N, D]`` on the
    model's device, ``batch_size`` images per forward, the model in eval mode."""
    device = model_device(model)
    chunks = []
    with eval_mode(model), LayerTap(model, [layer]) as tap:
        for start in tqdm(range(0, len(images), batch_size), desc=f"{caller}: {layer}", unit="batch",
                          disable=not progress):
            chunks.append(tap(images[start:start + batch_size].to(device))[layer].flatten(1))
    return torch.cat(chunks)


def check_logits(logits, n: int, caller: str) -> Tensor:
    """What the model returned for ``n`` inputs: logits ``Tensor[n, classes]``."""
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != n:
        raise ValueError(f"{caller}: the model must return logits Tensor[N, classes] (got {describe(logits)})")
    return logits


def check_class_range(values: Tensor, classes: int, caller: str, name: str = "labels") -> Tensor:
    """Class indices ``values`` (any shape), each one of the model's ``classes`` outputs."""
    bad = (values < 0) | (values >= classes)
    if bad.any():
        raise ValueError(f"{caller}: {name} holds class {int(values[bad][0])}, outside the model's {classes} "
                         f"classes [0, {classes})")
    return values


def check_dataset(dataset, caller: str) -> int:
    """The length of ``dataset``, a map-style Dataset of ``(image, label)``
    items with a length of at least 1."""
    try:
        size = len(dataset)
    except TypeError:
        raise ValueError(f"{caller}: dataset must be a map-style Dataset with a length "
                         f"(got {type(dataset).__name__})") from None
    if size == 0:
        raise ValueError(f"{caller}: the dataset is empty")
    return size


def forward_with_layers(model: nn.Module, x: Tensor, layers, caller: str, reduce=None) -> tuple:
    """``(model(x), {layer: output})``: the whole forward runs (its output is
    wanted too, unlike ``LayerTap``'s, which stops after the last layer), and
    the outputs of ``layers`` are caught by forward hooks, detached, as
    ``reduce(output)`` where ``reduce`` is given (a copy made there is safe from
    a later in-place layer); a layer called twice keeps its last output, and
    ``NAME#i`` names its ``i``-th call."""
    modules = dict(model.named_modules())
    outputs: dict[str, Tensor] = {}

    def hook_of(name: str):
        call, calls = call_site(name)[1], [0]

        def hook(_module, _inputs, output):
            index, calls[0] = calls[0], calls[0] + 1
            if call is not None and index != call:
                return
            if not isinstance(output, Tensor):
                raise ValueError(f"{caller}: layer {name!r} returns {type(output).__name__}, not a Tensor")
            output = output.detach()
            outputs[name] = output if reduce is None else reduce(output)
        return hook

    handles = [modules[call_site(name)[0]].register_forward_hook(hook_of(name)) for name in layers]
    try:
        result = model(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in outputs]
    if missing:
        raise ValueError(f"{caller}: layers {', '.join(missing)} did not run in the model's forward")
    return result, outputs


def first_per_class(labels: Tensor, per_class: int, classes: int, keep: Tensor | None = None) -> Tensor:
    """Indices (ascending) of the first ``per_class`` images of each class
    ``0 .. classes - 1`` in ``labels``, among those where ``keep`` (bool) is
    true when given; fewer where a class has fewer."""
    keep = torch.ones(len(labels), dtype=torch.bool) if keep is None else keep
    chosen = []
    for label in range(classes):
        chosen += torch.nonzero(keep & (labels == label)).flatten()[:per_class].tolist()
    return torch.tensor(sorted(chosen), dtype=torch.long)


# ------------------------------------------------------------ which layers

def in_sequence(model: nn.Module, name: str) -> bool:
    """Whether module ``name`` runs in a chain of layers, known without running
    the model: it sits in an ``nn.Sequential`` whose ancestors are
    ``nn.Sequential`` too, up to the model's own children (taken to run one
    after another, as in every torchvision classifier), or the model itself is
    an ``nn.Sequential``. True for the paper's ``relu5`` and a VGG's or
    AlexNet's ``features.N``; False for a convolution inside a ResNet's
    residual block (``layer4.1`` is a block) and for a child of a model that is
    not an ``nn.Sequential`` (it may run twice: a ResNet's ``relu``)."""
    modules = dict(model.named_modules())
    parts = name.split(".")
    if not name or name not in modules or (len(parts) == 1 and not isinstance(model, nn.Sequential)):
        return False
    return all(isinstance(modules[".".join(parts[:i])], nn.Sequential) for i in range(1, len(parts)))


@dataclass(frozen=True)
class PathLayer:
    """One layer on a model's main path (``main_path``): its name for
    ``LayerTap`` (``NAME#i`` for the ``i``-th call of a module run more than
    once), its output's shape per image, whether that output is a ReLU's, and
    whether it is the model's own output."""

    name: str
    shape: tuple[int, ...]
    relu: bool
    output: bool = False


def main_path(model: nn.Module, input_shape: Sequence[int]) -> list[PathLayer]:
    """The module calls every path from the model's input to its output goes
    through, in forward order, each output under one name: the layers whose
    output is all the layers above them see (a residual block or a stage as a
    whole, not a convolution inside it; ``ResNet``: ``conv1``, ``bn1``,
    ``relu``, ``maxpool``, ``layer1.0``, ..., ``layer4``, ``avgpool``, ``fc``).

    Found from one forward of one random image of ``input_shape`` (the global
    RNG untouched) with forward hooks on every module and its autograd graph: a
    call is on the main path when no edge of the graph between the input and
    the output skips over it in topological order. Where several calls give
    the same output (a block, its stage and the block's last ReLU; a ReLU and
    an eval-mode Dropout after it), the outermost module names it, the first
    among equals. Works on any ``nn.Module`` with hookable submodules (the
    ``InterpreterModule`` layers of ``torch.export.unflatten`` too); the
    model's output is the last entry (``output=True``) when a module returns it."""
    modules = [(name, module) for name, module in model.named_modules() if name]
    counts: dict[str, int] = {}
    calls: list[tuple[str, int, object, tuple[int, ...]]] = []  # (module, call index, autograd node, shape)

    def hook_of(name: str):
        def hook(_module, _inputs, output):
            index = counts.get(name, 0)
            counts[name] = index + 1
            if isinstance(output, Tensor) and output.grad_fn is not None:
                calls.append((name, index, output.grad_fn, tuple(output.shape[1:])))
        return hook

    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = parameter.dtype if parameter is not None else torch.get_default_dtype()
    x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
    x = x.to(model_device(model), dtype).requires_grad_()
    handles = [module.register_forward_hook(hook_of(name)) for name, module in modules]
    try:
        with eval_mode(model), torch.enable_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, Tensor) or output.grad_fn is None:
        return []
    order, edges = _graph_to_input(output.grad_fn, x)
    position = {node: i for i, node in enumerate(order)}
    cover = [0] * (len(order) + 1)                         # how many edges skip over each position
    for a, b in edges:
        lo, hi = sorted((position[a], position[b]))
        cover[lo + 1] += 1
        cover[hi] -= 1
    skipped, running = [], 0
    for value in cover[:-1]:
        running += value
        skipped.append(running)
    named: dict[object, tuple[str, tuple[int, ...]]] = {}
    for name, index, node, shape in calls:
        if node not in position or skipped[position[node]]:
            continue
        label = name if counts[name] == 1 else f"{name}#{index}"
        best = named.get(node)
        if best is None or name.count(".") < call_site(best[0])[0].count("."):
            named[node] = (label, shape)
    layers = [(position[node], PathLayer(label, shape, type(node).__name__.startswith("Relu"), position[node] == 0))
              for node, (label, shape) in named.items()]
    return [layer for _, layer in sorted(layers, key=lambda item: -item[0])]


def last_maps(model: nn.Module, input_shape: Sequence[int]) -> str | None:
    """The deepest maps on the model's main path (``main_path``): its last
    rectified layer with maps ``[C, h, w]`` of more than one position (a
    ResNet's ``layer4``), else its last layer with such maps; None if it has
    none."""
    maps = [layer for layer in main_path(model, input_shape)
            if len(layer.shape) == 3 and layer.shape[1] * layer.shape[2] > 1 and not layer.output]
    rectified = [layer for layer in maps if layer.relu]
    return (rectified or maps)[-1].name if maps else None


def _graph_to_input(top, x: Tensor) -> tuple[list, list]:
    """The autograd nodes between ``top`` and the leaf ``x``, top first in a
    topological order, and the edges between them (nodes that do not lead to
    ``x``, a parameter's, are left out)."""
    children = {}
    postorder, stack, seen = [], [(top, False)], set()
    while stack:                                           # iterative depth-first search: deep models
        node, done = stack.pop()
        if done:
            postorder.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        children[node] = [child for child, _ in node.next_functions if child is not None]
        stack.append((node, True))
        stack.extend((child, False) for child in children[node] if child not in seen)
    leads: dict[object, bool] = {}
    for node in postorder:                                 # children first
        leads[node] = getattr(node, "variable", None) is x or any(
            leads[child] for child in children[node])
    order = [node for node in reversed(postorder) if leads[node]]
    edges = [(node, child) for node in order for child in children[node] if leads[child]]
    return order, edges

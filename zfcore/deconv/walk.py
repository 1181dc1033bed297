"""Walking a plain CNN in forward order, faithfully or not at all.

The walk runs the model once with hooks on its leaf modules to learn the order
in which they are called, then replays that order by itself (flattening where
a map meets a Linear layer, as ``torch.flatten(x, 1)`` does in torchvision's
models) and requires the replay to give the model's own output bit for bit.
Anything the replay cannot reproduce (a functional ReLU, a residual addition,
a module called twice, an unknown layer type) is an error that names the
module, never a silently different answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.layer_table import SUPPORTED, kind_of


@dataclass(frozen=True)
class Step:
    """One layer of the walk: its ``named_modules`` name and module, and whether
    a flatten precedes it (a map entering a Linear layer)."""

    name: str
    module: nn.Module
    flatten_before: bool = False


class WalkError(ValueError):
    """The model cannot be walked faithfully; the message names the module."""


def walk(model: nn.Module, example: torch.Tensor) -> list[Step]:
    """The layers of ``model`` in forward order, checked by replaying them on
    ``example`` (``Tensor[N, C, H, W]``)."""
    names = {module: name for name, module in model.named_modules()}
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    for module in leaves:
        if kind_of(module) is None:
            raise WalkError(f"Deconvnet: cannot walk {names[module]!r} ({type(module).__name__}); supported layers "
                            f"are {', '.join(t.__name__ for t in SUPPORTED)}")
        if isinstance(module, nn.MaxPool2d) and (module.dilation not in (1, (1, 1)) or module.return_indices):
            raise WalkError(f"Deconvnet: cannot walk {names[module]!r}: max pooling with dilation or "
                            "return_indices is not supported")
    hooks = [m.register_forward_pre_hook(lambda m, args: order.append(m)) for m in leaves]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(example)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    seen: set[nn.Module] = set()
    for module in order:
        if module in seen:
            raise WalkError(f"Deconvnet: {names[module]!r} is called twice in one forward pass; "
                            "each layer must be used once")
        seen.add(module)
    steps, rank = [], 4
    for module in order:
        kind = kind_of(module)
        flatten = kind == "linear" and rank == 4
        steps.append(Step(names[module], module, flatten))
        if kind in ("flatten", "linear"):
            rank = 2
    with torch.no_grad():
        replayed = replay(steps, example)
    if replayed.shape != expected.shape or not torch.equal(replayed, expected):
        raise WalkError("Deconvnet: the model's forward is not the plain chain of its layers "
                        f"({', '.join(s.name for s in steps)}): it uses functional operations, residual "
                        "additions or another order; write those as modules in one sequence")
    return steps


def replay(steps: list[Step], x: torch.Tensor, record=None) -> torch.Tensor:
    """Run ``steps`` on ``x``; ``record(step, input, output)`` sees each layer."""
    for step in steps:
        if step.flatten_before:
            x = torch.flatten(x, 1)
        module = step.module
        inplace = getattr(module, "inplace", False)
        y = module(x.clone() if inplace else x)
        if record is not None:
            record(step, x, y)
        x = y
    return x

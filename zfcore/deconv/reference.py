"""The pure-PyTorch reference deconvnet: autograd through the real model with
the ReLU backward replaced (what attribution libraries do, one backward per
call). The oracle of the engine's tests and the baseline of its benchmark."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def autograd_projection(model: nn.Module, images: Tensor, layer: str, channel: int, position=None,
                        mode: str = "deconvnet") -> Tensor:
    """Projection of ``layer``'s unit or map by autograd with hooks: deconvnet
    mode replaces each ReLU's backward by the ReLU of the incoming gradient and
    passes LRN through; guided mode also keeps the forward mask; gradient mode is
    plain autograd. ``position`` as ``Deconvnet.project``."""
    modules = dict(model.named_modules())
    hooks, captured = [], {}
    for module in model.modules():
        if isinstance(module, nn.ReLU) and mode != "gradient":
            hooks.append(module.register_full_backward_hook(
                (lambda m, gi, go: (F.relu(go[0]),)) if mode == "deconvnet"
                else (lambda m, gi, go: (gi[0].clamp(min=0),))))
        if isinstance(module, nn.LocalResponseNorm) and mode == "deconvnet":
            hooks.append(module.register_full_backward_hook(lambda m, gi, go: (go[0],)))
    hooks.append(modules[layer].register_forward_hook(lambda m, i, o: captured.__setitem__("a", o)))
    inplace = [m for m in model.modules() if getattr(m, "inplace", False)]
    for m in inplace:  # full backward hooks do not allow in-place outputs
        m.inplace = False
    was_training = model.training
    try:
        model.eval()
        x = images.clone().requires_grad_()
        model(x)
        a = captured["a"]
        seed = torch.zeros_like(a)
        for n in range(a.shape[0]):
            if a.dim() == 2 or position == "map":
                seed[n, channel] = a[n, channel]
            else:
                h, w = position if position is not None else divmod(int(a[n, channel].argmax()), a.shape[-1])
                seed[n, channel, h, w] = a[n, channel, h, w]
        return torch.autograd.grad(a, x, seed.detach())[0]
    finally:
        for h in hooks:
            h.remove()
        for m in inplace:
            m.inplace = True
        model.train(was_training)

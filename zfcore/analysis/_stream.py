"""Shared machinery of the streaming analyses: layer outputs by forward hooks
(one forward per batch for every requested layer, stopped after the deepest),
the shard of a dataset a process takes under ``torchrun``, and atomic state
files for resumable runs."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _Stop(Exception):
    """Raised by the deepest layer's hook: nothing above it is computed."""


def check_layers(model: nn.Module, layers: Sequence[str] | str, caller: str) -> list[str]:
    """The requested layer names, validated against ``model.named_modules()``."""
    if isinstance(layers, str):
        layers = [layers]
    layers = list(dict.fromkeys(layers))
    if not layers:
        raise ValueError(f"{caller}: layers is empty; name at least one layer")
    modules = dict(model.named_modules())
    for name in layers:
        path, call = call_site(name) if isinstance(name, str) else (None, None)
        if not isinstance(name, str) or path == "" or path not in modules or call == -1:
            known = ", ".join(n for n in modules if n)
            raise ValueError(f"{caller}: no layer named {name!r} in the model; layers are {known} (a module "
                             "called more than once: NAME#0, NAME#1, ...)")
    return layers


def call_site(name: str) -> tuple[str, int | None]:
    """``"NAME#i"`` -> ``("NAME", i)`` (the module's i-th call in a forward);
    ``"NAME"`` -> ``("NAME", None)``; a malformed call index gives -1."""
    path, sep, call = name.partition("#")
    if not sep:
        return path, None
    return path, int(call) if call.isdigit() else -1


def module_order(model: nn.Module) -> dict[str, int]:
    return {name: i for i, (name, _) in enumerate(model.named_modules())}


class LayerTap:
    """Context manager: during ``tap(x)`` the outputs of ``layers`` are captured
    (detached) and the forward stops after the last of them has run.

    With ``reduce`` (a function, or a dict of one per layer), what is kept of a
    layer's output is ``reduce(output)``, computed in the hook: the output
    itself can then be freed as soon as the next layer has read it (a streaming
    pass holds no layer's maps).

    With ``graph``, the outputs keep their autograd graph to the input (for
    gradients with respect to it; the caller's grad mode holds) and the forward
    stops after the last layer from the first call on."""

    def __init__(self, model: nn.Module, layers: Sequence[str], reduce=None, *, graph: bool = False):
        self.model, self.layers, self.reduce, self.graph = model, list(layers), reduce, graph
        self.outputs: dict[str, Tensor] = {}
        self._handles = []
        self._calls: dict[str, int] = {}
        self._checked = False  # the first pass runs the whole forward: a module called twice is found

    def __enter__(self):
        modules = dict(self.model.named_modules())
        for name in self.layers:
            self._handles.append(modules[call_site(name)[0]].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    def _hook(self, name: str):
        path, call = call_site(name)

        def hook(_module, _inputs, output):
            index = self._calls.get(name, 0)
            self._calls[name] = index + 1
            if call is None and index == 1:
                raise ValueError(f"layer {path!r} runs more than once in one forward; name one call: "
                                 f"{path}#0, {path}#1, ...")
            if index != (call or 0):
                return
            if not isinstance(output, Tensor):
                raise ValueError(f"layer {name!r} returns {type(output).__name__}, not a Tensor")
            output = output if self.graph else output.detach()
            reduce = self.reduce.get(name) if isinstance(self.reduce, dict) else self.reduce
            self.outputs[name] = output if reduce is None else reduce(output)
            if len(self.outputs) == len(self.layers) and (self._checked or self.graph):
                raise _Stop
        return hook

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        self.outputs, self._calls = {}, {}
        try:
            with torch.set_grad_enabled(self.graph and torch.is_grad_enabled()):
                self.model(x)
        except _Stop:
            pass
        self._checked = True
        missing = [n for n in self.layers if n not in self.outputs]
        if missing:
            raise ValueError(f"layers {', '.join(missing)} did not run in the model's forward")
        return self.outputs


def model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def ensure_process_group() -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1), join the process group if nobody has."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def batches(dataset, indices: list[int], batch_size: int, num_workers: int = 0):
    """Batches ``(images, labels, dataset indices)`` of ``dataset[indices]`` in order."""
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    start = 0
    for item in loader:
        if not isinstance(item, list | tuple) or len(item) < 1:
            raise ValueError("dataset items must be (image, label) pairs")
        images = item[0]
        n = len(images)
        yield images, (item[1] if len(item) > 1 else None), torch.tensor(indices[start:start + n])
        start += n


def save_state(state: dict, path: Path) -> None:
    """Atomic: a reader sees the old file or the new one, whole."""
    from ..train.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path, fingerprint: dict, caller: str) -> dict | None:
    """The state saved at ``path`` if it belongs to the same job, else None
    (a state of another job is an error, never silently mixed in)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged state file only costs recomputation
        raise ValueError(f"{caller}: the state file {os.fspath(path)!r} is unreadable ({type(error).__name__}); "
                         f"delete it to start over") from None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        raise ValueError(f"{caller}: the state file {os.fspath(path)!r} belongs to another job "
                         f"(other layers, k, dataset size or model); delete it or pass resume=False")
    return state


def model_fingerprint(model: nn.Module) -> list:
    """A cheap identity of a model's weights: names, shapes and float64 sums."""
    with torch.no_grad():
        return [[name, list(p.shape), float(p.detach().double().sum()), float(p.detach().double().abs().sum())]
                for name, p in model.state_dict().items() if isinstance(p, Tensor) and p.is_floating_point()]

"""The captured graph the deconvnet engine works on.

``capture(source, input_shape)`` runs ``torch.export.export`` on the eval-mode
forward of an ``nn.Module`` (or takes an ``ExportedProgram`` or an
``fx.GraphModule``) and decomposes it to core ATen ops
(``run_decompositions``). ``Graph`` then keeps only what the engine needs:

- the nodes that compute from the input, in forward (topological) order,
  each with its ATen op, its activation inputs and its output shape; the
  rest (weights, their transposes, BatchNorm statistics) is folded to
  constants, and dead nodes (shape asserts, unused index arithmetic) are gone;
- multi-output ops read through ``getitem`` as one node (max pooling and
  BatchNorm give their first output; a ``split`` becomes slices);
- the ops of one ``nn.LocalResponseNorm`` call as one node (PyTorch writes
  it as a dozen element-wise ops; the paper treats it as one layer);
- every module call site, from the nodes' ``nn_module_stack``: a layer is a
  ``named_modules()`` path and its output is the last node of its call that
  is read outside it. A module called twice has the call sites
  ``NAME#0``, ``NAME#1``, ...

Every call site of ``F.relu``, ``torch.relu``, ``x.relu_()`` or a reused
``nn.ReLU`` is its own ``aten.relu`` node, so the engine needs no hooks.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

__all__ = ["CaptureError", "Graph", "GraphNode", "capture"]


class CaptureError(ValueError):
    """The model cannot be captured, or its graph holds an op the engine cannot
    send a signal through; the message names the node, its op and its module."""


LRN_TYPES = ("torch.nn.modules.normalization.LocalResponseNorm", "zfcore.nn.normalization.LocalResponseNorm")


def _export(module: nn.Module, example: tuple) -> ExportedProgram:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecation notes
        return torch.export.export(module, tuple(example), strict=False)


def capture(source, input_shape, dtype=None, device=None, example: tuple | None = None
            ) -> tuple[ExportedProgram, nn.Module | None]:
    """``source``'s eval-mode forward on ``Tensor[2, *input_shape]`` (or on the
    arguments ``example``) as a core-ATen ``ExportedProgram``, and the
    ``nn.Module`` it came from (None for an ``ExportedProgram``). The module's
    training flag is restored afterwards."""
    if isinstance(source, ExportedProgram):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return source.run_decompositions(), None
    if not isinstance(source, nn.Module):
        raise TypeError(f"Deconvnet: model must be an nn.Module, a torch.export.ExportedProgram or an "
                        f"fx.GraphModule (got {type(source).__name__})")
    if dtype is None or device is None:
        tensor = next(source.parameters(), None)
        if tensor is None:
            tensor = next(source.buffers(), None)
        dtype = dtype or (tensor.dtype if tensor is not None and tensor.is_floating_point() else torch.float32)
        device = device or (tensor.device if tensor is not None else torch.device("cpu"))
    example = example if example is not None else (torch.randn(2, *input_shape, dtype=dtype, device=device),)
    was_training = source.training
    source.eval()
    try:
        try:
            ep = _export(source, example)
        except Exception as error:  # noqa: BLE001 - every failure of export becomes one clear error
            ep = _fallback(source, example, error)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return ep.run_decompositions(), source
    finally:
        source.train(was_training)


def _fallback(model: nn.Module, example: tuple, error: Exception) -> ExportedProgram:
    """``torch.fx.symbolic_trace``, then export of the traced module, where the
    trace computes what the model computes; else the export's error."""
    reason = "\n".join(str(error).strip().splitlines()[:12])
    with torch.no_grad():
        model(*example)  # a model whose own forward fails raises its own error, unchanged
    try:
        traced = fx.symbolic_trace(model)
        with torch.no_grad():
            same = torch.equal(traced(*example), model(*example))
        if not same:
            raise CaptureError("the symbolic trace computes another function")
        return _export(traced, example)
    except Exception:  # noqa: BLE001
        raise CaptureError(f"Deconvnet: torch.export cannot capture {type(model).__name__}'s forward "
                           f"({type(error).__name__}): {reason}\nThe engine needs one graph for every input "
                           "(no data-dependent control flow); torch.fx.symbolic_trace could not trace it "
                           "either.") from error


@dataclass
class GraphNode:
    """One activation node: ``op`` is its ATen op (``"input"`` for an input,
    ``"lrn"`` for a LocalResponseNorm call), ``inputs`` the indices of the
    activation nodes it reads, in argument order."""

    index: int
    name: str
    op: object
    fx: fx.Node | None
    inputs: tuple[int, ...]
    shape: tuple[int, ...]           # the output's shape, batch dimension excluded
    module: str                      # the nearest named module ('' for the model itself)
    calls: tuple[str, ...] = ()      # the module call sites it belongs to, outermost first
    users: list[int] = field(default_factory=list)
    sub: list[fx.Node] | None = None  # an LRN call's own nodes
    lrn: tuple | None = None          # (size, alpha, beta, k) of an nn.LocalResponseNorm
    attrs: tuple = ()                 # a split's slice: (dim, start, end)

    def where(self) -> str:
        return f"node {self.name!r} ({_op_name(self.op)}) in module {self.module or '<model>'!r}"


def _lrn_parameters(sub: list[fx.Node]) -> tuple | None:
    """``(size, alpha, beta, k)`` read back from F.local_response_norm's ops
    (an ExportedProgram keeps no module to ask)."""
    aten = torch.ops.aten
    size = alpha = beta = k = None
    for n in sub:
        if n.target in (aten.avg_pool3d.default, aten.avg_pool2d.default) and size is None:
            size = int(n.args[1][0])
        elif size is not None and n.target == aten.mul.Tensor and isinstance(n.args[1], (int, float)):
            alpha = float(n.args[1])
        elif size is not None and n.target == aten.add.Tensor and isinstance(n.args[1], (int, float)):
            k = float(n.args[1])
        elif n.target == aten.pow.Tensor_Scalar:
            beta = float(n.args[1])
    return (size, alpha, beta, k) if None not in (size, alpha, beta, k) else None


def _op_name(op) -> str:
    return op if isinstance(op, str) else str(op)


def _shape(node: fx.Node) -> tuple[int, ...]:
    value = node.meta.get("val")
    if isinstance(value, (tuple, list)):
        value = value[0]
    return tuple(int(s) for s in value.shape[1:]) if isinstance(value, Tensor) else ()


class Graph:
    """The activation nodes of a captured program (see the module docstring)."""

    def __init__(self, ep: ExportedProgram, model: nn.Module | None = None):
        self.ep = ep
        graph = ep.graph
        signature = ep.graph_signature
        state = {**ep.state_dict, **ep.constants}
        self.params: dict[str, Tensor] = {}  # constant placeholders by node name
        users_inputs = []
        for spec in signature.input_specs:
            if spec.kind == InputKind.USER_INPUT:
                users_inputs.append(spec.arg.name)
            elif spec.target in state:
                self.params[spec.arg.name] = state[spec.target]
        if not users_inputs:
            raise CaptureError("Deconvnet: the model's graph takes no input tensor")
        fx_nodes = {n.name: n for n in graph.nodes}
        output = next(n for n in graph.nodes if n.op == "output")
        # live nodes: what the output needs
        live: set[str] = set()
        stack = list(output.all_input_nodes)
        while stack:
            n = stack.pop()
            if n.name not in live:
                live.add(n.name)
                stack.extend(n.all_input_nodes)
        # which fx nodes depend on the input (the rest is constant)
        dynamic: set[str] = set()
        for n in graph.nodes:
            if n.name in users_inputs or any(a.name in dynamic for a in n.all_input_nodes):
                dynamic.add(n.name)
        self.constants: list[fx.Node] = [n for n in graph.nodes if n.op == "call_function"
                                         and n.name in live and n.name not in dynamic]
        modules = dict(model.named_modules()) if model is not None else {}
        self.nodes: list[GraphNode] = []
        self.alias: dict[str, int] = {}     # fx node name -> activation node index
        lrn_open: dict[str, GraphNode] = {}
        splits: dict[str, tuple] = {}  # call key -> its LRN node while its ops are read
        for n in graph.nodes:
            if n.op == "placeholder" and n.name in users_inputs:
                if not self.nodes:
                    self.batch = int(n.meta["val"].shape[0])
                self._add(n, "input", (), "", ())
                continue
            if n.name not in dynamic or n.name not in live or n.op == "output":
                continue
            stack_meta = n.meta.get("nn_module_stack") or {}
            calls = tuple(stack_meta)
            paths = [v[0] for v in stack_meta.values()]
            module = paths[-1] if paths else ""
            lrn_key = next((k for k, v in stack_meta.items() if v[1] in LRN_TYPES or (
                isinstance(modules.get(v[0]), nn.LocalResponseNorm))), None)
            inputs = tuple(dict.fromkeys(self.alias[a.name] for a in n.all_input_nodes if a.name in dynamic))
            if lrn_key is not None:
                node = lrn_open.get(lrn_key)
                if node is None:
                    path = stack_meta[lrn_key][0]
                    node = self._add(n, "lrn", inputs, path, calls[:list(calls).index(lrn_key) + 1])
                    node.sub = []
                    lrn = modules.get(path)
                    if isinstance(lrn, nn.LocalResponseNorm):
                        node.lrn = (lrn.size, lrn.alpha, lrn.beta, lrn.k)
                    lrn_open[lrn_key] = node
                elif any(i != node.index and i not in node.inputs for i in inputs):
                    raise CaptureError(f"Deconvnet: the LocalResponseNorm call {node.module!r} reads two inputs")
                node.sub.append(n)
                node.shape = _shape(n)
                self.alias[n.name] = node.index
                continue
            if n.target in (torch.ops.aten.split_with_sizes.default, torch.ops.aten.split.Tensor):
                x, sizes, *rest = n.args
                dim = rest[0] if rest else n.kwargs.get("dim", 0)
                total = _shape(x)[dim - 1 if dim > 0 else dim] if dim != 0 else None
                if dim == 0 or total is None:
                    raise CaptureError(f"Deconvnet: node {n.name!r} splits the batch dimension")
                if isinstance(sizes, int):
                    sizes = [min(sizes, total - s) for s in range(0, total, sizes)]
                bounds, start = [], 0
                for size in sizes:
                    bounds.append((start, start + size))
                    start += size
                splits[n.name] = (inputs, dim, bounds)
                continue
            if n.target is operator.getitem and n.args[0].name in splits:
                parent_inputs, dim, bounds = splits[n.args[0].name]
                node = self._add(n, "slice", parent_inputs, module, calls)
                node.attrs = (dim, *bounds[n.args[1]])
                continue
            if n.target is operator.getitem:
                source, item = n.args
                parent = self.nodes[self.alias[source.name]]
                if item != 0:
                    raise CaptureError(f"Deconvnet: output {item} of {parent.where()} is used by the model "
                                       "(max pooling's indices, BatchNorm's statistics); the engine reads only "
                                       "their first output")
                self.alias[n.name] = parent.index
                continue
            self._add(n, n.target, inputs, module, calls)
        self.inputs = [self.alias[name] for name in users_inputs]
        self.input = self.inputs[0]
        self.output = self.alias[output.args[0][0].name] if isinstance(output.args[0], (tuple, list)) \
            else self.alias[output.args[0].name]
        for node in self.nodes:
            if node.op == "lrn" and node.lrn is None:
                node.lrn = _lrn_parameters(node.sub)
            for i in node.inputs:
                self.nodes[i].users.append(node.index)
        self.users_inputs = users_inputs
        self.layers, self.call_sites = self._layers()

    def _add(self, n: fx.Node, op, inputs, module, calls) -> GraphNode:
        value = n.meta.get("val")
        value = value[0] if isinstance(value, (tuple, list)) else value
        if isinstance(value, Tensor) and op != "input" and (value.dim() == 0 or value.shape[0] != self.batch):
            raise CaptureError(f"Deconvnet: node {n.name!r} ({_op_name(op)}) in module {module or '<model>'!r} "
                               f"mixes the examples of a batch (output {list(value.shape)} from a batch of "
                               f"{self.batch}); the engine needs every example computed on its own")
        node = GraphNode(len(self.nodes), n.name, op, n, inputs, _shape(n), module, calls)
        self.nodes.append(node)
        self.alias[n.name] = node.index
        return node

    def _layers(self) -> tuple[dict[str, int], dict[str, list[str]]]:
        """Every module call's output node: ``{layer name: node}`` in forward
        order, and each module path's call-site names."""
        members: dict[str, list[int]] = {}
        paths: dict[str, str] = {}
        for node in self.nodes:
            stack = node.fx.meta.get("nn_module_stack") or {} if node.fx is not None else {}
            for key in node.calls:
                path = stack[key][0] if key in stack else key
                if not path:
                    continue
                members.setdefault(key, []).append(node.index)
                paths[key] = path
        outputs: dict[str, int] = {}
        for key, indices in members.items():
            inside = set(indices)
            leaving = [i for i in indices if i == self.output or any(u not in inside for u in self.nodes[i].users)]
            if leaving:
                outputs[key] = leaving[-1]
        by_path: dict[str, list[str]] = {}
        for key in outputs:
            by_path.setdefault(paths[key], []).append(key)
        named: list[tuple[int, str]] = []
        sites: dict[str, list[str]] = {}
        self.members: dict[str, set[int]] = {}
        for path, keys in by_path.items():
            names = [path] if len(keys) == 1 else [f"{path}#{i}" for i in range(len(keys))]
            if len(keys) > 1:
                sites[path] = names
            for key, name in zip(keys, names):
                named.append((outputs[key], name))
                self.members[name] = set(members[key])
        # forward order; a container after the inner module whose output it returns
        named.sort(key=lambda item: (item[0], -item[1].partition("#")[0].count(".")))
        return {name: index for index, name in named}, sites

    def layer_input(self, name: str) -> int:
        """The node a layer (module call) reads its input from."""
        inside = self.members[name]
        return min(j for i in inside for j in self.nodes[i].inputs if j not in inside)

    def ancestors(self, tops) -> list[int]:
        """The nodes ``tops`` read, directly or not (themselves included), in forward order."""
        seen: set[int] = set()
        stack = list(tops)
        while stack:
            i = stack.pop()
            if i not in seen:
                seen.add(i)
                stack.extend(self.nodes[i].inputs)
        return sorted(seen)

    def fold_constants(self) -> dict[str, Tensor]:
        """The values of the constant nodes (weights' transposes and the like)."""
        env = dict(self.params)
        for n in self.constants:
            env[n.name] = n.target(*fx.node.map_arg(n.args, lambda a: env[a.name]),
                                   **fx.node.map_arg(n.kwargs, lambda a: env[a.name]))
        return env

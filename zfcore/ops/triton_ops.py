"""The Triton backend as PyTorch ops: ``torch.ops.zfcore_triton.*``.

``define()`` (called by ``zfcore.ops.registry.register``) defines one op per
schema of zfcore/ops/schemas.py over its launcher in zfcore/kernels, with
``torch.library.triton_op``: the kernels are launched through ``wrap_triton``,
so ``torch.compile`` sees the Triton kernels themselves (and ``opcheck`` the
op). Under TRITON_INTERPRET=1 they are plain custom ops (``wrap_triton`` hands
back the plain kernel there, which tracing cannot run), with the fake kernels
of the registry. The schemas are the ``zfcore::`` ones: each op's Python
signature is generated from its schema string, which is what ``triton_op``
reads its schema from. Importing this module defines nothing; without Triton
``define()`` defines nothing and returns why.
"""

from __future__ import annotations

import inspect
import re

import torch
from torch import Tensor

from . import checks
from .schemas import SCHEMAS

ERROR: str | None = None
try:
    import triton  # noqa: F401
    from torch.library import triton_op, wrap_triton

    from ..kernels import deconv_step as _deconv
    from ..kernels import interpreted
    from ..kernels import max_pool_switches as _pool
    from ..kernels import relu_conv_transpose as _conv
    from ..kernels import unpool as _unpool
except Exception as error:  # noqa: BLE001  (any failure to import Triton means: no Triton backend)
    ERROR = f"{type(error).__name__}: {error}"

AVAILABLE = ERROR is None
NAMESPACE = "zfcore_triton"

if AVAILABLE:
    LAUNCHERS = {
        "max_pool2d_switches": _pool.max_pool2d_switches,
        "unpool2d": _unpool.unpool2d,
        "gather_switches": _unpool.gather_switches,
        "relu_conv_transpose2d": _conv.relu_conv_transpose2d,
        "deconv_step": _deconv.deconv_step,
    }

    def _eager(name, launcher):
        def kernel(*args):
            checks.registered(name, *args)
            return launcher(*args)
        return kernel

    # Plain launchers (no wrap_triton): the zfcore:: ops' CUDA kernels when the
    # native library has none of its own.
    EAGER = {name: _eager(name, launcher) for name, launcher in LAUNCHERS.items()}

# Schema types -> the annotations torch.library infers them back from.
_TYPES = {"Tensor": Tensor, "Tensor?": Tensor | None, "int": int, "bool": bool,
          "int[2]": list[int], "SymInt[2]": list[int]}
_RETURNS = {"Tensor": Tensor, "(Tensor, Tensor)": tuple[Tensor, Tensor]}
_SCHEMA = re.compile(r"^(\w+)\((.*)\) -> (.+)$")


def signature(schema: str) -> tuple[str, inspect.Signature]:
    """The op name and the annotated Python signature of a schema string."""
    name, arguments, returns = _SCHEMA.match(schema).groups()
    parameters = []
    for argument in arguments.split(", "):
        kind, arg_name = argument.rsplit(" ", 1)
        parameters.append(inspect.Parameter(arg_name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            annotation=_TYPES[kind]))
    return name, inspect.Signature(parameters, return_annotation=_RETURNS[returns])


def _op_function(name: str, sig: inspect.Signature):
    launcher = LAUNCHERS[name]

    def op(*args, **kwargs):
        args = sig.bind(*args, **kwargs).args
        checks.registered(name, *args)
        return launcher(*args, launch=wrap_triton)

    op.__name__ = op.__qualname__ = name
    op.__signature__ = sig
    return op


_DEFINED = False
ops = torch.ops.zfcore_triton


def define() -> str | None:
    """Define ``torch.ops.zfcore_triton.*`` (once); None, or why Triton is not usable."""
    global _DEFINED
    if not AVAILABLE:
        return ERROR
    if not _DEFINED:
        define_op = torch.library.custom_op if interpreted() else triton_op
        schema = None
        try:
            for schema in SCHEMAS.values():
                name, sig = signature(schema)
                define_op(f"{NAMESPACE}::{name}", _op_function(name, sig), mutates_args=())
        except Exception as error:  # noqa: BLE001  (this torch cannot define them: no Triton backend)
            return f"defining {NAMESPACE} from {schema!r} failed: {type(error).__name__}: {error}"
        _DEFINED = True
    return None

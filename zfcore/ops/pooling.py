"""Max pooling with switches, and its exact transpose."""

from __future__ import annotations

from torch import Tensor

from . import checks, reference
from .backend_choice import run


def max_pool2d_switches(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False, *,
                        backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Max pooling that records its switches (Zeiler & Fergus, section 2.1).

    Args:
        x: ``Tensor[N, C, H, W]``, float32/float64/float16/bfloat16, any layout.
        kernel_size, stride, padding, ceil_mode: as ``F.max_pool2d`` (stride
            defaults to kernel_size); the window may hold at most 256 elements.
        backend: ``"cpu"``, ``"reference"``, ... (see ``zfcore.backends()``).

    Returns:
        ``(out, switches)``: ``out`` equals ``F.max_pool2d`` bit for bit (NaN wins,
        the first maximum wins ties); ``switches`` is uint8 ``Tensor[N, C, OH, OW]``,
        the row-major offset of each window's maximum inside its kh x kw window.

    Example:
        >>> out, switches = zfcore.ops.max_pool2d_switches(x, 3, 2, ceil_mode=True)
        >>> x_back = zfcore.ops.unpool2d(out, switches, 3, 2, output_size=x.shape)
    """
    k, s, p = checks.max_pool2d_switches(x, kernel_size, stride, padding, ceil_mode)
    return run("max_pool2d_switches", x, backend, x, list(k), list(s), list(p), ceil_mode)


def unpool2d(y: Tensor, switches: Tensor, kernel_size, stride=None, padding=0, output_size=None, *,
             backend: str | None = None) -> Tensor:
    """The exact transpose (adjoint) of max pooling: each value goes back to the
    position its switch records, and positions chosen by several overlapping
    windows receive the sum (unlike ``F.max_unpool2d``, which overwrites).

    Args:
        y: ``Tensor[N, C, OH, OW]``, the signal at the pooled layer.
        switches: uint8 ``Tensor[N, C, OH, OW]`` from ``max_pool2d_switches``.
        kernel_size, stride, padding: those of the pooling.
        output_size: the pooled input's ``(H, W)`` (or its full shape); ``None``
            means the smallest size that pools to ``y`` in floor mode.

    Returns:
        ``Tensor[N, C, H, W]``; equal bit for bit (float32) to PyTorch's max-pool
        backward, deterministic run to run.

    Example:
        >>> x_back = zfcore.ops.unpool2d(out, switches, 3, 2, output_size=(110, 110))
    """
    k, s, p, size = checks.unpool2d(y, switches, kernel_size, stride, padding, output_size)
    return run("unpool2d", y, backend, y, switches, list(k), list(s), list(p), list(size))


def switches_to_indices(switches: Tensor, input_size, kernel_size, stride=None, padding=0) -> Tensor:
    """PyTorch's int64 flat indices (``F.max_pool2d(..., return_indices=True)[1]``)
    from uint8 switches; ``input_size`` is the pooled input's ``(H, W)`` or shape."""
    op = "switches_to_indices"
    k, s, p = checks.pool_geometry(op, kernel_size, stride, padding)
    checks.tensor_4d(op, "switches", switches, floating=False)
    if len(input_size) == 4:
        input_size = tuple(input_size[-2:])
    size = checks.pair(op, "input_size", input_size, minimum=1)
    return reference.switches_to_indices(switches, size, k, s, p)

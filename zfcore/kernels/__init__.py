"""Triton kernels of the zfcore ops, one file per op.

Importing this package needs no Triton; ``zfcore.ops.triton_ops`` defines the
``torch.ops.zfcore_triton.*`` ops (``torch.library.triton_op``) when Triton is
installed. They run on CUDA tensors, and on CPU tensors under
``TRITON_INTERPRET=1`` (Triton's interpreter: slow, for tests on small shapes).
"""

from __future__ import annotations

import os


def interpreted() -> bool:
    """Whether Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

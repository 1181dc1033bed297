"""Triton kernels of the zfcore ops, one file per op.

Importing this package needs no Triton; ``zfcore.kernels.registry`` defines the
``torch.ops.zfcore_triton.*`` ops (``torch.library.triton_op``) when Triton is
installed. They run on CUDA tensors, and on CPU tensors under
``TRITON_INTERPRET=1`` (Triton's interpreter: slow, for tests on small shapes).
"""

from __future__ import annotations

import os


def interpreted() -> bool:
    """Whether Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def patch_interpreter() -> None:
    """Let Triton 3.6's interpreter run loops with run-time bounds under NumPy >= 2.4.

    The interpreter keeps scalars as one-element arrays and converts them with
    ``int(array)``, which NumPy 2.4 refuses for arrays of one dimension; the
    patch converts through ``.item()``. Only the interpreter is touched, and only
    when TRITON_INTERPRET=1.
    """
    if not interpreted():
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_zfcore_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._zfcore_patched = True
    interpreter._patch_lang_tensor = patched

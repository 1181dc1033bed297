"""A fix for Triton 3.6's CPU interpreter, for the tests and the interpreter
smoke runs of the benchmarks (it is not part of zfcore's runtime).

Under TRITON_INTERPRET=1, Triton 3.6 keeps scalars as one-element arrays and
converts them with ``int(array)``, which NumPy >= 2.4 refuses for arrays of one
dimension, so kernels with loops of run-time bounds fail there. ``patch()``
makes the interpreter's tensors convert through their single element instead.
Only the interpreter is touched, and only when TRITON_INTERPRET=1.

    import triton_interpreter; triton_interpreter.patch()   # tools/ on sys.path
"""

from __future__ import annotations

import os


def patch() -> bool:
    """Patch the interpreter (once); whether it is patched."""
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return False
    try:
        from triton.runtime import interpreter
    except Exception:  # noqa: BLE001  (no usable Triton: nothing to patch)
        return False
    original = interpreter._patch_lang_tensor
    if getattr(original, "_zfcore_patched", False):
        return True

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._zfcore_patched = True
    interpreter._patch_lang_tensor = patched
    return True

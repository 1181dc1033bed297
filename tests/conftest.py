"""Test-session set-up: without a GPU, the Triton kernels run in Triton's CPU
interpreter, so the triton backend is tested on every machine (small shapes).
This must happen before zfcore (and Triton) are imported."""

import os

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

"""Compile every Triton kernel for a GPU target without a GPU, exactly as the
launchers would launch it, and report its resources.

Each launcher of zfcore/kernels runs on small CPU tensors with its kernel
launch captured instead of executed; the captured arguments give the kernel's
signature and constants, which ``triton.compile`` turns into PTX and a cubin
for the target (default sm_90, the H100/H200). Triton's bundled cuobjdump then
reads registers, spills and shared memory off the cubin. A kernel that does not
compile for the GPU fails here, on any machine (CI runs it: tests/test_gpu_backends.py).
A developer's tool: it is not part of zfcore's runtime package.

    python tools/compile_check.py            # every variant, sm_90
    python tools/compile_check.py --arch 80 --only deconv

Must run without TRITON_INTERPRET (the interpreter replaces the kernels).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch


@dataclass
class Launch:
    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict


class _Capture:
    """Stands in for ``wrap_triton``: records launches instead of running them."""

    def __init__(self):
        self.launches: list[Launch] = []

    def __call__(self, kernel):
        capture = self

        class _Indexed:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    capture.launches.append(Launch(kernel, grid, args, kwargs))

                return launch

        return _Indexed()


_TRITON_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.uint8: "u8", torch.int32: "i32", torch.int64: "i64"}
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas")


def compile_launch(launch: Launch, arch: int):
    """triton.compile of one captured launch for ``cuda:arch``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = launch.kernel
    names = kernel.arg_names
    values = dict(zip(names, launch.args))
    values.update({k: v for k, v in launch.kwargs.items() if k not in _LAUNCH_OPTIONS})
    signature, constants = {}, {}
    for index, name in enumerate(names):
        value = values[name]
        if kernel.params[index].is_constexpr:
            signature[name] = "constexpr"
            constants[(index,)] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        else:
            raise TypeError(f"{kernel.fn.__name__}: argument {name} of type {type(value).__name__}")
    options = {k: v for k, v in launch.kwargs.items() if k in _LAUNCH_OPTIONS}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def resources(cubin: bytes) -> dict:
    """Registers, spills, stack and shared memory of a cubin (Triton's cuobjdump)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = {}
    for key, pattern in (("regs", r"REG:(\d+)"), ("stack", r"STACK:(\d+)"), ("shared", r"SHARED:(\d+)"),
                         ("local", r"LOCAL:(\d+)")):
        match = re.search(pattern, text)
        found[key] = int(match.group(1)) if match else None
    return found


def cases():
    """(name, call) for every kernel variant the launchers can produce: each op in
    each dtype and layout, the GEMM ops with and without bias, tf32 on and off."""
    from zfcore.kernels import deconv_step, max_pool_switches, relu_conv_transpose, unpool

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        short = _TRITON_TYPES[dtype]
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(2, 8, 13, 13, generator=g).to(dtype).contiguous(memory_format=fmt)
            # Inputs of the pooled shape; nothing is computed, only launches captured.
            out = torch.randn(2, 8, 6, 6, generator=g).to(dtype).contiguous(memory_format=fmt)
            switches = torch.randint(0, 9, (2, 8, 6, 6), generator=g, dtype=torch.uint8).contiguous(memory_format=fmt)
            yield (f"max_pool2d_switches {short} {layout}",
                   lambda launch, x=x: max_pool_switches.max_pool2d_switches(x, [3, 3], [2, 2], [0, 0], True,
                                                                            launch=launch))
            yield (f"unpool2d {short} {layout}",
                   lambda launch, y=out, s=switches: unpool.unpool2d(y, s, [3, 3], [2, 2], [0, 0], [13, 13],
                                                                     launch=launch))
            yield (f"gather_switches {short} {layout}",
                   lambda launch, x=x, s=switches: unpool.gather_switches(x, s, [3, 3], [2, 2], [0, 0],
                                                                          launch=launch))
            a = torch.randn(2, 8, 13, 13, generator=g).to(dtype).contiguous(memory_format=fmt)
            weight = torch.randn(8, 3, 7, 7, generator=g).to(dtype)
            bias = torch.randn(3, generator=g).to(dtype)
            for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
                tag = " tf32" if tf32 else ""
                yield (f"relu_conv_transpose2d {short} {layout}{tag}",
                       lambda launch, a=a, w=weight, b=bias, tf32=tf32: _with_tf32(
                           tf32, relu_conv_transpose.relu_conv_transpose2d, a, w, b, [2, 2], [1, 1], [1, 1], 1,
                           [1, 1], launch=launch))
                yield (f"deconv_step {short} {layout}{tag}",
                       lambda launch, y=out, s=switches, w=weight, tf32=tf32: _with_tf32(
                           tf32, deconv_step.deconv_step, y, s, w, None, [3, 3], [2, 2], [0, 0], [13, 13], [2, 2],
                           [1, 1], [1, 1], 1, [1, 1], launch=launch))


def _with_tf32(enabled, fn, *args, **kwargs):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        return fn(*args, **kwargs)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100/H200), 80")
    parser.add_argument("--only", default="", help="compile only the variants whose name contains this")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("compile_check: unset TRITON_INTERPRET (the interpreter replaces the kernels)", file=sys.stderr)
        return 2
    failures = 0
    print(f"{'variant':44s} {'kernel':26s} {'regs':>5s} {'spill':>6s} {'smem':>6s} {'s':>5s}")
    for name, call in cases():
        if args.only not in name:
            continue
        capture = _Capture()
        call(capture)
        for launch in capture.launches:
            start = time.perf_counter()
            try:
                compiled = compile_launch(launch, args.arch)
            except Exception as error:  # noqa: BLE001  (report every failing variant, then fail)
                failures += 1
                print(f"{name:44s} FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
                continue
            used = resources(compiled.asm["cubin"])
            spill = (used["stack"] or 0) + (used["local"] or 0)
            print(f"{name:44s} {launch.kernel.fn.__name__:26s} {used['regs']!s:>5s} {spill:6d} "
                  f"{compiled.metadata.shared:6d} {time.perf_counter() - start:5.1f}")
    print("all variants compiled" if not failures else f"{failures} variant(s) failed to compile")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

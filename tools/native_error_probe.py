"""Whether an error raised inside zfcore._C reaches Python as an exception.

Each probe calls a registered op with bad input in a fresh process and expects a
ValueError. A process that dies instead (a signal) means exceptions cannot
cross from the extension into PyTorch in this build: on the first GPU run (an
H200 image whose ``c++`` is a GCC of its own in /opt/gcc) every such call
ended in a segmentation fault. benchmarks/gpu.sh runs this after the build and,
on a crash, rebuilds with the system compiler and probes again.

    python tools/native_error_probe.py          # exit 0: every probe raised
"""

from __future__ import annotations

import subprocess
import sys

PROBES = {
    "argument check (max_pool2d_switches, 3-D x)":
        "torch.ops.zfcore.max_pool2d_switches(torch.randn(2, 9, 9), [3, 3], [2, 2], [0, 0], False)",
    "kernel check (unpool2d, switch outside its window)":
        "torch.ops.zfcore.unpool2d(torch.randn(1, 1, 3, 3), torch.full((1, 1, 3, 3), 9, dtype=torch.uint8), "
        "[2, 2], [2, 2], [0, 0], [6, 6])",
}


def probe(code: str) -> tuple[bool, str]:
    script = ("import torch, zfcore\n"
              "try:\n"
              f"    {code}\n"
              "    print('returned')\n"
              "except ValueError as e:\n"
              "    print('raised')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    if result.returncode < 0:
        return False, f"killed by signal {-result.returncode}"
    if result.returncode != 0:
        return False, f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}"
    out = result.stdout.strip()
    return out == "raised", out


def main() -> int:
    ok = True
    for name, code in PROBES.items():
        raised, what = probe(code)
        ok &= raised
        print(f"{'ok   ' if raised else 'FAIL '} {name}: {what}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Timing and result files shared by the benchmark scripts.

Every row carries the command that reproduces it, the device, the library
versions and the commit. CPU timing: torch.utils.benchmark at a fixed thread
count, median with 20th/80th percentiles.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where results go unless --results-dir says otherwise: a git-ignored folder, so
# that a run never overwrites the committed tables. Those are refreshed on
# purpose: --results-dir benchmarks/results.
RESULTS = os.path.join(ROOT, "build", "bench-results")
RESULTS_HELP = ("folder of the results (default: build/bench-results, git-ignored; "
                "--results-dir benchmarks/results refreshes the committed ones)")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def commit() -> str:
    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "csrc", "zfcore"], cwd=ROOT).returncode
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(threads: int) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "device": f"{cpu_name()} ({os.cpu_count()} cores visible, {threads} threads)",
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": commit(),
    }


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    runs: int  # how many timed measurements the quantiles are of

    @classmethod
    def of(cls, times_ms) -> "Timing":
        t = np.asarray(times_ms, dtype=float)
        return cls(float(np.median(t)), float(np.percentile(t, 20)), float(np.percentile(t, 80)), len(t))


MIN_MEASUREMENTS = 5


def time_cpu(fn, threads: int, min_run_time: float) -> Timing:
    """Median and 20th/80th percentiles of at least MIN_MEASUREMENTS timed blocks
    (blocked_autorange alone takes one block of a call longer than min_run_time,
    and its quantiles would then all be that one time)."""
    fn()  # warm-up (and first-touch of anything cached)
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = list(m.times)
    while len(times) < MIN_MEASUREMENTS:
        times.append(timer.timeit(number=m.number_per_run).median)
    return Timing.of(np.array(times) * 1e3)


def repeated(sides: dict, repeats: int, warmups: dict | None = None) -> dict[str, list[float]]:
    """Run each side ``repeats`` times, interleaved (a b a b ...), after one
    untimed warm-up each (the side itself, or ``warmups[side]`` where given: a
    shorter call that pays the same first-call costs); the wall times in ms,
    per side."""
    for name, fn in sides.items():
        (warmups or {}).get(name, fn)()
    samples = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


@dataclass
class Row:
    op: str
    case: str
    shape: str
    dtype: str
    layout: str
    baseline: str
    zfcore: Timing
    pytorch: Timing

    @property
    def ratio(self) -> float:
        return self.pytorch.median_ms / self.zfcore.median_ms

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


def write(name: str, rows: list[Row], env: dict, notes: list[str], directory: str | None = None,
          baseline: str = "PyTorch", extra: dict | None = None, tables: list[str] | None = None) -> None:
    """``name``.json and ``name``.md in ``directory``. ``baseline`` names the other
    side in the table's headings; ``extra`` adds top-level keys to the JSON and
    ``tables`` markdown lines (more tables) before the notes."""
    directory = directory or RESULTS
    os.makedirs(directory, exist_ok=True)
    print(f"results: {os.path.join(directory, name)}.json and .md", file=sys.stderr)
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump({"environment": env, "notes": notes, "rows": [r.as_dict() for r in rows], **(extra or {})},
                  f, indent=1)
    title = "pure PyTorch" if baseline == "PyTorch" else baseline
    lines = [f"# zfcore vs {title}: {name}", "",
             f"Command: `{env['command']}`  ", f"Device: {env['device']}  ",
             f"torch {env['torch']}, triton {env['triton']}, Python {env['python']}, commit {env['commit']}", "",
             f"Ratio = {baseline} median / zfcore median (higher is better for zfcore); times in ms, "
             "median [p20, p80].", "",
             f"| op | case | shape | dtype | layout | {baseline} baseline | {baseline} ms | zfcore ms | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda t: f"{t.median_ms:.2f} [{t.p20_ms:.2f}, {t.p80_ms:.2f}]"  # noqa: E731
        lines.append(f"| {r.op} | {r.case} | {r.shape} | {r.dtype} | {r.layout} | {r.baseline} | "
                     f"{fmt(r.pytorch)} | {fmt(r.zfcore)} | **{r.ratio:.2f}x** |")
    lines += [""] + (tables or []) + [f"- {n}" for n in notes]
    with open(os.path.join(directory, f"{name}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

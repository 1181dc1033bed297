"""``zfcore bench``: the op and pipeline benchmarks in one command.

Runs the scripts of ``benchmarks/`` (each measures zfcore and pure PyTorch
side by side in one process, repeated, with real quantiles) into a folder of
the user's choosing, then prints one ratio table and writes it as
``summary.json`` and ``summary.md`` beside the scripts' own results. Every
row carries its command, the versions, the commit and the device. The
committed results (``benchmarks/results``) are never written by this
command; refresh them with the scripts' ``--results-dir`` on purpose.

Suites (all of those that run on the device when none is named):

=============  ================================  ======================
suite          script                            device
=============  ================================  ======================
``--ops``      bench_ops.py / bench_gpu.py       cpu / cuda
``--topk``     bench_topk.py                     cpu
``--occlusion`` bench_occlusion.py               cpu
``--any-cnn``  bench_any_cnn.py                  cpu (needs Captum)
=============  ================================  ======================

``--any-cnn`` measures the deconvnet on a ResNet-18 against Captum's
``NeuronDeconvolution``; Captum is an optional benchmark dependency (``pip
install captum``). Without it the suite is left out of a run that names no
suite, and naming it is an error.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
COMMITTED = BENCHMARKS / "results"

# suite -> device -> (script, extra arguments, --quick arguments)
SUITES = {
    "ops": {"cpu": ("bench_ops.py", [], ["--quick"]), "cuda": ("bench_gpu.py", [], ["--smoke"])},
    "topk": {"cpu": ("bench_topk.py", [], ["--quick"])},
    "occlusion": {"cpu": ("bench_occlusion.py", [], ["--quick"])},
    "any-cnn": {"cpu": ("bench_any_cnn.py", [], ["--quick"])},
}
# suite -> the optional package its baseline needs
NEEDS = {"any-cnn": "captum"}


def _missing(suite: str) -> str | None:
    """The optional package ``suite`` needs and this Python lacks, if any."""
    package = NEEDS.get(suite)
    return package if package and importlib.util.find_spec(package) is None else None


def plan(suites: list[str], device: str, quick: bool) -> list[tuple[str, list[str]]]:
    """The suites to run as ``(suite, argv)``; all that run on ``device`` when
    ``suites`` is empty. Errors name what cannot run and why."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"bench: --device must be cpu or cuda (got {device!r})")
    if not BENCHMARKS.is_dir() or not (BENCHMARKS / "common.py").is_file():
        raise FileNotFoundError(f"bench: the benchmark scripts are not here ({BENCHMARKS}); zfcore bench runs "
                                "them from a source checkout (git clone, then make setup)")
    chosen = suites or [s for s in SUITES if device in SUITES[s] and not _missing(s)]
    runs = []
    for suite in chosen:
        if device not in SUITES[suite]:
            raise ValueError(f"bench: --{suite} runs on the CPU only (asked for --device {device})")
        if _missing(suite):
            raise ValueError(f"bench: --{suite} needs {_missing(suite)}, an optional benchmark dependency that is "
                             f"not installed (pip install {_missing(suite)})")
        script, extra, quick_args = SUITES[suite][device]
        runs.append((suite, [sys.executable, str(BENCHMARKS / script), *extra, *(quick_args if quick else [])]))
    return runs


def check_out(out: str | Path) -> Path:
    """The results folder, refused if it is (or is inside) the committed results."""
    path = Path(out).expanduser().resolve()
    if path == COMMITTED.resolve() or COMMITTED.resolve() in path.parents:
        raise ValueError(f"bench: --out {out} is the committed results folder; choose another folder (the "
                         "scripts' --results-dir refreshes the committed results on purpose)")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"bench: --out {out} exists and is not a folder")
    return path


def run(suites: list[str], device: str, quick: bool, out: str | Path) -> list[dict]:
    """Run the suites into ``out``; returns the summary rows (also written to
    ``out/summary.json`` and ``out/summary.md``)."""
    runs = plan(suites, device, quick)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("bench: --device cuda, but no CUDA device is visible")
    path = check_out(out)
    path.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for suite, argv in runs:
        before = {p: p.stat().st_mtime_ns for p in path.glob("*.json")}
        print(f"zfcore bench: {suite}: {' '.join(Path(a).name if i < 2 else a for i, a in enumerate(argv))}",
              file=sys.stderr, flush=True)
        done = subprocess.run([*argv, "--results-dir", str(path)], cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"bench: the {suite} benchmark failed (exit status {done.returncode}); the suites "
                               f"before it are in {path}")
        for result in sorted(path.glob("*.json")):
            if result.name == "summary.json" or before.get(result) == result.stat().st_mtime_ns:
                continue
            data = json.loads(result.read_text())
            env = data["environment"]
            for row in data["rows"]:
                rows.append({"suite": suite, "results": result.name, **row, **{k: env[k] for k in
                             ("command", "device", "torch", "triton", "python", "commit")}})
        write_summary(path, rows)
    print(table(rows))
    print(f"zfcore bench: results in {path}", file=sys.stderr)
    return rows


def _ratio(row: dict) -> str:
    return f"{row['ratio']:.2f}x" if isinstance(row.get("ratio"), int | float) else str(row.get("ratio"))


def table(rows: list[dict]) -> str:
    """The ratio table as markdown."""
    lines = ["| suite | op | case | dtype | layout | PyTorch baseline | ratio |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['suite']} | {r.get('op', '')} | {r.get('case', '')} | {r.get('dtype', '')} | "
                     f"{r.get('layout', '')} | {r.get('baseline', '')} | **{_ratio(r)}** |")
    return "\n".join(lines)


def write_summary(path: Path, rows: list[dict]) -> None:
    (path / "summary.json").write_text(json.dumps(rows, indent=1))
    envs = sorted({(r["command"], r["device"], r["torch"], str(r["triton"]), r["python"], r["commit"]) for r in rows})
    lines = ["# zfcore bench", "", "Ratio = PyTorch median / zfcore median (higher is better for zfcore).", "",
             table(rows), "", "Runs:", ""]
    lines += [f"- `{c}` on {d}; torch {t}, triton {tr}, Python {p}, commit {m}" for c, d, t, tr, p, m in envs]
    (path / "summary.md").write_text("\n".join(lines) + "\n")

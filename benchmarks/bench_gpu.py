"""zfcore's GPU backends (triton, cuda) against eager PyTorch and torch.compile
at ZFNet's layer shapes, batch 128, float32 and bfloat16.

Side by side in one process on the same inputs; times are
``triton.testing.do_bench`` medians with a cold L2 (do_bench clears the cache
before every run), p20/p80 beside them. Memory-bound ops report achieved GB/s
(the fewest bytes the op must move: each input read once, each output written
once) against the copy bandwidth measured here (a large device-to-device copy,
bytes read + written); the GEMM ops report TFLOP/s of the dense transposed
convolution. torch.compile baselines: pooling and unpooling everywhere, the
deconvnet stage at layer 1 (a lone transposed convolution compiles to the same
cuDNN call as eager). About 3 minutes on an H100, most of it compiling. The backend that measures fastest per op is written to
gpu_preference.json (copy it to zfcore/ops/ to make it the automatic choice); for
the two ops that end in a transposed convolution the candidates include the
"torch" path (zfcore's unpooling, then PyTorch's own transposed convolution),
which the automatic choice can take (zfcore/ops/backend_choice.py).

    python benchmarks/bench_gpu.py                      # on a GPU: writes build/bench-results/<device>.{json,md}
    python benchmarks/bench_gpu.py --results-dir $OUT   # elsewhere (benchmarks/results: the committed ones)
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --smoke   # no GPU: tiny shapes, CPU timer, plumbing only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import traceback
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from common import RESULTS, RESULTS_HELP, Timing, environment, time_cpu

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tools"))
import triton_interpreter  # noqa: E402

triton_interpreter.patch()  # only under TRITON_INTERPRET=1 (the --smoke run without a GPU)

import zfcore
from zfcore.ops import backend_choice, deconv_step, max_pool2d_switches, relu_conv_transpose2d, unpool2d

POOLS = {"pool1": (96, 110, 110), "pool2": (256, 26, 26), "pool5": (256, 13, 13)}
CONVS = {  # below each pool: forward weight shape, stride, padding, output_padding
    "pool1": ("conv1", (96, 3, 7, 7), 2, 1, 1),
    "pool2": ("conv2", (256, 96, 5, 5), 2, 0, 0),
    "pool5": ("conv5", (256, 384, 3, 3), 1, 1, 0),
}
K, S = [3, 3], [2, 2]
SMOKE_POOLS = {"pool1": (4, 13, 13), "pool5": (8, 7, 7)}
SMOKE_CONVS = {"pool1": ("conv1", (4, 3, 7, 7), 2, 1, 1), "pool5": ("conv5", (8, 6, 3, 3), 1, 1, 0)}


@dataclass
class GpuRow:
    op: str
    case: str
    shape: str
    dtype: str
    layout: str
    backend: str
    zfcore: Timing
    eager: Timing
    compiled: Timing | None
    eager_baseline: str
    bytes_moved: int
    flops: int

    def gbps(self, t: Timing) -> float:
        return self.bytes_moved / (t.median_ms * 1e-3) / 1e9

    def as_dict(self, copy_gbps: float) -> dict:
        d = asdict(self)
        d["vs_eager"] = round(self.eager.median_ms / self.zfcore.median_ms, 3)
        d["vs_compile"] = round(self.compiled.median_ms / self.zfcore.median_ms, 3) if self.compiled else None
        d["zfcore_gbps"] = round(self.gbps(self.zfcore), 1)
        d["zfcore_pct_copy_bw"] = round(100 * self.gbps(self.zfcore) / copy_gbps, 1)
        d["zfcore_tflops"] = round(self.flops / (self.zfcore.median_ms * 1e-3) / 1e12, 2) if self.flops else None
        return d


def make_timer(smoke: bool):
    if smoke:
        return lambda fn: time_cpu(fn, torch.get_num_threads(), 0.05)
    from triton.testing import do_bench

    def timed(fn) -> Timing:
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        # do_bench times as many runs as fit in `rep` ms: at least 5 for slow calls.
        rep = max(100.0, 6 * start.elapsed_time(end))
        return Timing.of(do_bench(fn, warmup=25, rep=rep, return_mode="all"))  # every timed run

    return timed


def copy_bandwidth(device: str, timed, smoke: bool) -> float:
    """GB/s of a large device-to-device copy, counting bytes read and written."""
    n = (1 << 20) if smoke else (1 << 30)  # 1 GiB on the GPU
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src))
    return 2 * n / (t.median_ms * 1e-3) / 1e9


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return "CPU (Triton interpreter smoke run)"


def results_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def maybe_compile(fn, enabled: bool):
    if not enabled:
        return None
    return torch.compile(fn, fullgraph=True, dynamic=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--backends", default="triton,cuda")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--cases", default=None,
                        help="comma-separated pooling layers to measure (default: all; pool1,pool2,pool5)")
    parser.add_argument("--ops", default="pool,conv",
                        help="pool (max_pool2d_switches, unpool2d), conv (relu_conv_transpose2d, deconv_step)")
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU needed: tiny shapes on CPU tensors (triton under TRITON_INTERPRET=1)")
    parser.add_argument("--output", default=None, help="results name (default: the device's name)")
    parser.add_argument("--results-dir", default=None, help=RESULTS_HELP)
    args = parser.parse_args()

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device; --smoke runs the plumbing on the CPU", file=sys.stderr)
        return 2
    info = zfcore.backends()
    backends = [b for b in args.backends.split(",") if info[b].available and info[b].device == device]
    if not backends:
        print(f"bench_gpu.py: none of {args.backends} is available on {device}: "
              + "; ".join(f"{b}: {info[b].reason}" for b in args.backends.split(",")), file=sys.stderr)
        return 2
    if not args.smoke:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    pools, convs = (SMOKE_POOLS, SMOKE_CONVS) if args.smoke else (POOLS, CONVS)
    if args.cases is not None:
        unknown = set(args.cases.split(",")) - set(pools)
        if unknown:
            parser.error(f"--cases: {', '.join(sorted(unknown))} not among {', '.join(pools)}")
        pools = {name: pools[name] for name in args.cases.split(",")}
    op_groups = set(args.ops.split(","))
    if not op_groups or not op_groups <= {"pool", "conv"}:
        parser.error(f"--ops must name pool and/or conv (got {args.ops!r})")
    n = 2 if args.smoke else args.batch
    compile_baselines = not args.no_compile and not args.smoke
    timed = make_timer(args.smoke)
    torch.manual_seed(0)
    copy_gbps = copy_bandwidth(device, timed, args.smoke)
    print(f"copy bandwidth: {copy_gbps:.0f} GB/s (read + write)")
    rows: list[GpuRow] = []
    checks: list[dict] = []
    errors: list[dict] = []
    env = environment(torch.get_num_threads())
    env["device"] = device_name(device)
    env["copy_gbps"] = round(copy_gbps, 1)
    name = args.output or results_name(env["device"])
    directory = args.results_dir or RESULTS
    os.makedirs(directory, exist_ok=True)

    def guarded(what: str, fn) -> None:
        """One backend's rows of one case; a failure is recorded in the results
        (and printed), not fatal, so one broken kernel loses no other rows."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 (reported, see above)
            errors.append({"case": what, "error": f"{type(e).__name__}: {e}"[:2000]})
            traceback.print_exc()

    def check(what: str, got: torch.Tensor, expected: torch.Tensor, exact: bool, reference=None) -> None:
        """Whether a timed output equals PyTorch's at the benchmark's shape: bit for
        bit where the op is exact, else its error against a float64 reference
        beside PyTorch's own."""
        entry = {"case": what, "exact_required": exact}
        if exact:
            entry["equal"] = bool(torch.equal(got, expected))
        else:
            ref = reference()
            entry["max_error"] = (got.double() - ref).abs().max().item()
            entry["torch_max_error"] = (expected.double() - ref).abs().max().item()
            entry["equal"] = entry["max_error"] <= 2 * entry["torch_max_error"] + 1e-6 * ref.abs().max().item()
        checks.append(entry)
        if not entry["equal"]:
            print(f"MISMATCH {entry}", flush=True)

    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for pool, (c, h, w) in pools.items():
            for layout in ("nchw", "channels_last"):
                # The baselines below are re-created per case but share code objects:
                # start each case with a fresh Dynamo cache (else the 9th recompile fails).
                torch._dynamo.reset()
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                x = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
                out, indices = F.max_pool2d(x, K, S, ceil_mode=True, return_indices=True)
                y = torch.randn(out.shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
                shape = f"[{n},{c},{h},{w}]"
                case = f"{dtype_name} {pool} {layout}"

                def pool_eager(x=x):
                    return F.max_pool2d(x, K, S, ceil_mode=True, return_indices=True)

                def unpool_eager(y=y, x=x, indices=indices):
                    return torch.ops.aten.max_pool2d_with_indices_backward(y, x, K, S, [0, 0], [1, 1], True, indices)

                pool_compiled = maybe_compile(pool_eager, compile_baselines)
                unpool_compiled = maybe_compile(unpool_eager, compile_baselines)
                eager_pool_t, eager_unpool_t = timed(pool_eager), timed(unpool_eager)
                comp_pool_t = timed(pool_compiled) if pool_compiled else None
                comp_unpool_t = timed(unpool_compiled) if unpool_compiled else None
                unpooled = unpool_eager()

                def pool_rows(backend, x=x, y=y, out=out, indices=indices, unpooled=unpooled, shape=shape, h=h,
                              w=w, case=case, pool=pool, layout=layout, eager_pool_t=eager_pool_t,
                              comp_pool_t=comp_pool_t, eager_unpool_t=eager_unpool_t, comp_unpool_t=comp_unpool_t):
                    got, switches = max_pool2d_switches(x, K, S, ceil_mode=True, backend=backend)
                    check(f"{case} max_pool2d_switches {backend}", got, out, True)
                    check(f"{case} switches {backend}",
                          zfcore.ops.switches_to_indices(switches, x.shape, K, S), indices, True)
                    check(f"{case} unpool2d {backend}",
                          unpool2d(y, switches, K, S, output_size=(h, w), backend=backend), unpooled,
                          dtype_name == "float32", lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                              y.double(), x.double(), K, S, [0, 0], [1, 1], True, indices))
                    rows.append(GpuRow(
                        "max_pool2d_switches", pool, shape, dtype_name, layout, backend,
                        timed(lambda: max_pool2d_switches(x, K, S, ceil_mode=True, backend=backend)),
                        eager_pool_t, comp_pool_t, "F.max_pool2d(return_indices=True)",
                        nbytes(x, out) + switches.numel(), 0))
                    rows.append(GpuRow(
                        "unpool2d", pool, f"[{n},{c},{out.shape[2]},{out.shape[3]}]", dtype_name, layout, backend,
                        timed(lambda: unpool2d(y, switches, K, S, output_size=(h, w), backend=backend)),
                        eager_unpool_t, comp_unpool_t, "aten max_pool2d backward (the exact transpose)",
                        nbytes(y, x) + switches.numel(), 0))

                for backend in backends if "pool" in op_groups else ():
                    guarded(f"{case} pooling {backend}", lambda backend=backend: pool_rows(backend))
                if layout != "nchw" or "conv" not in op_groups:
                    print(f"{case}: done", flush=True)
                    write_results(directory, name, env, rows, checks, errors, backends, copy_gbps, final=False)
                    continue
                # The deconvnet stage below this pooling, and its ReLU + transposed conv alone.
                conv, wshape, cs, cp, cop = convs[pool]
                weight = (torch.randn(wshape, device=device) * 0.01).to(dtype)
                a = torch.randn(n, c, h, w, device=device, dtype=dtype)
                rec = F.conv_transpose2d(a, weight, None, cs, cp, cop)
                flops = 2 * a.numel() * wshape[1] * wshape[2] * wshape[3]

                def conv_eager(a=a, weight=weight, cs=cs, cp=cp, cop=cop):
                    return F.conv_transpose2d(F.relu(a), weight, None, cs, cp, cop)

                def step_eager(y=y, x=x, indices=indices, weight=weight, cs=cs, cp=cp, cop=cop):
                    unpooled = torch.ops.aten.max_pool2d_with_indices_backward(y, x, K, S, [0, 0], [1, 1], True,
                                                                                 indices)
                    return F.conv_transpose2d(F.relu(unpooled), weight, None, cs, cp, cop)

                # torch.compile hands a lone transposed convolution to cuDNN as eager does:
                # it is compared on the pooling ops and the whole deconvnet stage of layer 1.
                conv_compiled = None
                step_compiled = maybe_compile(step_eager, compile_baselines and pool == "pool1")
                eager_conv_t, eager_step_t = timed(conv_eager), timed(step_eager)
                comp_conv_t = timed(conv_compiled) if conv_compiled else None
                comp_step_t = timed(step_compiled) if step_compiled else None

                def conv_rows(backend, a=a, y=y, x=x, unpooled=unpooled, weight=weight, rec=rec, cs=cs, cp=cp,
                              cop=cop, h=h, w=w, case=case, pool=pool, conv=conv, shape=shape, flops=flops,
                              out=out, eager_conv_t=eager_conv_t, comp_conv_t=comp_conv_t,
                              eager_step_t=eager_step_t, comp_step_t=comp_step_t, conv_eager=conv_eager,
                              step_eager=step_eager):
                    # "torch": the automatic choice's PyTorch path (zfcore's unpooling on its
                    # fastest backend, then PyTorch's transposed convolution).
                    _, switches = max_pool2d_switches(x, K, S, ceil_mode=True,
                                                      backend=None if backend == "torch" else backend)
                    conv_args = ([cs, cs], [cp, cp], [cop, cop], 1, [1, 1])

                    def run_conv():
                        if backend == "torch":
                            return backend_choice.torch_path("relu_conv_transpose2d", a, a, weight, None, *conv_args)
                        return relu_conv_transpose2d(a, weight, None, cs, cp, cop, backend=backend)

                    def run_step():
                        if backend == "torch":
                            return backend_choice.torch_path("deconv_step", y, y, switches, weight, None, K, S, [0, 0],
                                                             [h, w], *conv_args)
                        return deconv_step(y, switches, weight, pool_kernel_size=K, pool_stride=S,
                                           unpooled_size=(h, w), stride=cs, padding=cp, output_padding=cop,
                                           backend=backend)

                    check(f"{case} relu_conv_transpose2d {backend}", run_conv(), conv_eager(), False,
                          lambda: F.conv_transpose2d(F.relu(a.double()), weight.double(), None, cs, cp, cop))
                    check(f"{case} deconv_step {backend}", run_step(), step_eager(), False,
                          lambda: F.conv_transpose2d(F.relu(unpooled.double()), weight.double(), None, cs, cp, cop))
                    rows.append(GpuRow(
                        "relu_conv_transpose2d", conv, shape, dtype_name, layout, backend, timed(run_conv),
                        eager_conv_t, comp_conv_t, "F.conv_transpose2d(F.relu(y))",
                        nbytes(a, weight, rec), flops))
                    rows.append(GpuRow(
                        "deconv_step", f"{pool}->{conv}", f"[{n},{c},{out.shape[2]},{out.shape[3]}]", dtype_name,
                        layout, backend, timed(run_step),
                        eager_step_t, comp_step_t, "aten max_pool2d backward + relu + conv_transpose2d",
                        nbytes(y, weight, rec) + switches.numel(), flops))

                for backend in backends + ["torch"]:
                    guarded(f"{case} deconv {backend}", lambda backend=backend: conv_rows(backend))
                print(f"{case}: done", flush=True)
                # Written after every case: a run cut short keeps what it measured.
                write_results(directory, name, env, rows, checks, errors, backends, copy_gbps, final=False)

    env["cases"], env["ops"] = list(pools), sorted(op_groups)
    write_results(directory, name, env, rows, checks, errors, backends, copy_gbps, final=True)
    bad = [c for c in checks if not c["equal"]]
    print(f"{len(checks) - len(bad)} of {len(checks)} outputs equal PyTorch's; {len(errors)} errors")
    return 1 if bad or errors else 0


def write_results(directory: str, name: str, env: dict, rows: list[GpuRow], checks: list[dict], errors: list[dict],
                  backends: list[str], copy_gbps: float, final: bool) -> None:
    fastest = choose_fastest(rows, backends + ["torch"], checks, errors)
    data = {"environment": env, "complete": final, "fastest": fastest, "errors": errors, "checks": checks,
            "rows": [r.as_dict(copy_gbps) for r in rows]}
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(directory, "gpu_preference.json"), "w") as f:
        json.dump({"device": env["device"], "commit": env["commit"], "complete": final, "fastest": fastest}, f,
                  indent=1)
    table = markdown(name, env, rows, copy_gbps, fastest, checks, errors, final)
    with open(os.path.join(directory, f"{name}.md"), "w") as f:
        f.write(table)
    if final:
        print(table)

def choose_fastest(rows: list[GpuRow], backends: list[str], checks: list[dict] = (),
                   errors: list[dict] = ()) -> dict[str, str]:
    """Per op, the backend (or the PyTorch path "torch", measured for the ops that
    end in a transposed convolution) with the smallest geometric-mean time over
    its rows. A backend is not a candidate for an op where one of its outputs
    that must be exact differed from PyTorch's, or where one of its cases failed
    (its remaining rows would be a different set from the others')."""
    fastest = {}
    for op in ("max_pool2d_switches", "unpool2d", "relu_conv_transpose2d", "deconv_step"):
        group = "pooling" if op in ("max_pool2d_switches", "unpool2d") else "deconv"
        scores = {}
        for backend in backends:
            names = [f" {op} {backend}"] + ([f" switches {backend}"] if op == "max_pool2d_switches" else [])
            wrong = any(c["exact_required"] and not c["equal"] and c["case"].endswith(tuple(names)) for c in checks)
            failed = any(e["case"].endswith(f" {group} {backend}") for e in errors)
            times = [r.zfcore.median_ms for r in rows if r.op == op and r.backend == backend]
            if times and not wrong and not failed:
                scores[backend] = math.exp(sum(math.log(t) for t in times) / len(times))
        if scores:
            fastest[op] = min(scores, key=scores.get)
    if "unpool2d" in fastest:
        fastest["gather_switches"] = fastest["unpool2d"]  # the same access pattern, transposed
    return fastest


def markdown(name: str, env: dict, rows: list[GpuRow], copy_gbps: float, fastest: dict, checks: list[dict],
             errors: list[dict], final: bool) -> str:
    fmt = lambda t: f"{t.median_ms:.3f} [{t.p20_ms:.3f}, {t.p80_ms:.3f}]" if t else "-"  # noqa: E731
    lines = [f"# zfcore GPU backends vs PyTorch: {name}", "",
             f"Command: `{env['command']}`  ", f"Device: {env['device']}  ",
             f"torch {env['torch']}, triton {env['triton']}, Python {env['python']}, commit {env['commit']}  ",
             f"Copy bandwidth (device-to-device, read + write): {copy_gbps:.0f} GB/s", "",
             "Times in ms, do_bench median [p20, p80], cold L2. vs eager / vs compile = PyTorch time / zfcore time "
             "(higher is better for zfcore). GB/s counts the fewest bytes the op must move. float32 is IEEE on "
             "both sides (tf32 off for matmul and cuDNN).", "",
             "| op | case | shape | dtype | layout | backend | zfcore ms | eager ms | compile ms | vs eager | "
             "vs compile | GB/s | % copy BW | TFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r.as_dict(copy_gbps)
        vs_compile = f"{d['vs_compile']:.2f}x" if d["vs_compile"] else "-"
        lines.append(f"| {r.op} | {r.case} | {r.shape} | {r.dtype} | {r.layout} | {r.backend} | {fmt(r.zfcore)} | "
                     f"{fmt(r.eager)} | {fmt(r.compiled)} | **{d['vs_eager']:.2f}x** | {vs_compile} | "
                     f"{d['zfcore_gbps']:.0f} | {d['zfcore_pct_copy_bw']:.0f}% | {d['zfcore_tflops'] or '-'} |")
    lines += ["", "Eager baselines: " + "; ".join(sorted({f"{r.op}: {r.eager_baseline}" for r in rows})) + ".",
              "", "Fastest backend per op (written to gpu_preference.json): "
              + ", ".join(f"{op} {b}" for op, b in fastest.items()) + "."]
    bad = [c for c in checks if not c["equal"]]
    lines += ["", f"Outputs checked against PyTorch at these shapes: {len(checks) - len(bad)} of {len(checks)} equal "
              "(pooling, switches and float32 unpooling bit for bit; the others within twice PyTorch's own error "
              "against float64)."]
    lines += [f"- MISMATCH {c}" for c in bad]
    lines += [f"- ERROR {e['case']}: {e['error'][:300]}" for e in errors]
    if not final:
        lines += ["", "**Incomplete: the run stopped before every case was measured.**"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

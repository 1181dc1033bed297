"""The deconvnet on a CNN it captures (not one of the paper's): top-9
projections of a ResNet-18 (the common checkpoints' module layout,
``zfcore.models.resnet18``), zfcore against Captum's ``NeuronDeconvolution``,
on the same work, repeated and interleaved, with real quantiles; and the
memory the forward keeps for the way down, against what autograd saves.

1. Top-9 projections. ResNet-18 at 224 px, random weights (seed 0, eval mode,
   BatchNorm statistics and affine parameters randomised a little), a pool of
   24 random images. For ``--channels`` maps of each of layer1..layer4, the 9
   images of the pool with the strongest maximum activation of the map (from
   ``Deconvnet.activations``), each projected at the map's strongest unit in
   that image: 4 x 8 x 9 = 288 projections.
   zfcore: ``Deconvnet(model, (3, 224, 224)).project_many(pool, requests)``,
   per layer and the whole job in one call (one forward for every layer).
   Captum: ``NeuronDeconvolution(model, model.layerN).attribute(image,
   neuron_selector=(c, h, w))``, one call per projection (a batch of one
   image): its neuron selector takes one (c, h, w) for a whole batch, and each
   image has its own strongest unit, so one call per projection is the same
   work. Captum runs the whole model forward (to ``fc``) in every call.
   Captum's attribution is the gradient of the unit (seed 1); zfcore seeds the
   unit at its activation value, so zfcore's projection divided by that value
   is compared with Captum's: the largest difference, relative to the largest
   magnitude of Captum's projection, is reported per layer.
2. Memory (a ResNet-50 at 224 px, one image, to layer4): the bytes zfcore's
   forward records for the way down (deconvnet mode: max-pooling switches,
   one byte each; guided mode: also one-byte ReLU masks) plus the layer's kept
   output, against the bytes of the tensors autograd saves for the backward of
   the same forward (input requiring grad; each storage counted once; the
   model's weights, which autograd also saves, counted apart).

Per-stage times of zfcore (forward, way down, the rest: seeding, argmax,
pasting windows) come from timers around ``Deconvnet._forward`` and
``Deconvnet._down`` in the timed runs. Each side's warm-up is one projection
per layer (the first call's costs: zfcore's plans and folded constants,
Captum's hooks), not a whole job.

Captum is an optional benchmark dependency (``pip install captum``), not one
of zfcore's; without it the script says so and exits with status 2.

    python benchmarks/bench_any_cnn.py --results-dir DIR            # 224 px, 2 threads (several minutes)
    python benchmarks/bench_any_cnn.py --quick --results-dir DIR    # 64 px, 8 images, 2 maps: seconds
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import defaultdict

import torch
from torch import nn

from common import RESULTS_HELP, Row, Timing, environment, repeated, write

from zfcore.deconv import Deconvnet, Request
from zfcore.models import resnet18, resnet50

LAYERS = ("layer1", "layer2", "layer3", "layer4")


def randomised(model: nn.Module) -> nn.Module:
    """Eval mode, with BatchNorm statistics and affine parameters moved off
    their initial values (1, 0) a little, so that folding them matters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _nbytes(tensors, exclude=frozenset()) -> int:
    """Bytes of ``tensors``, each storage once (its largest view), leaving out
    the storages in ``exclude``."""
    sizes: dict[int, int] = {}
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            sizes[ptr] = max(sizes.get(ptr, 0), t.numel() * t.element_size())
    return sum(sizes.values())


def memory_rows(size: int) -> tuple[list[dict], list[str]]:
    """zfcore's forward records against autograd's saved tensors, ResNet-50 to layer4."""
    torch.manual_seed(0)
    model = randomised(resnet50())
    image = torch.randn(1, 3, size, size)
    net = Deconvnet(model, (3, size, size))
    top = net.graph.layers["layer4"]
    rows = []
    for mode in ("deconvnet", "guided"):
        records, outputs = net._forward(image, [top], mode, {top})
        kept = [t for record in records.values() for t in record if isinstance(t, torch.Tensor)]
        rows.append({"mode": mode, "records_bytes": _nbytes(kept),
                     "zfcore_bytes": _nbytes(kept + list(outputs.values())), "tensors": len(kept)})
    # the same forward (conv1 .. layer4) through autograd
    upto = nn.Sequential(*[m for name, m in model.named_children() if name not in ("avgpool", "fc")])
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    x = image.clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = upto(x)
    activations = _nbytes(saved, exclude=weights)
    with_weights = _nbytes(saved)
    del y
    for row in rows:
        row.update(autograd_saved_bytes=activations, autograd_saved_with_weights_bytes=with_weights,
                   ratio=round(activations / row["zfcore_bytes"], 1))
    lines = [f"Memory kept for the way down: ResNet-50 at {size} px, 1 image, forward to layer4", "",
             "| mode | zfcore records + layer4 output | autograd saved (activations) | ratio | "
             "autograd saved incl. weights |", "|---|---|---|---|---|"]
    for row in rows:
        mib = {key: row[key] / 2**20 for key in ("zfcore_bytes", "records_bytes")}
        lines.append(f"| {row['mode']} | {mib['zfcore_bytes']:.2f} MiB ({mib['records_bytes']:.2f} MiB records) | "
                     f"{activations / 2**20:.1f} MiB | **{row['ratio']:.0f}x** | {with_weights / 2**20:.1f} MiB |")
    return rows, lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool", type=int, default=None, help="images the top-9 are drawn from (24; quick: 8)")
    parser.add_argument("--channels", type=int, default=None, help="maps projected per layer (8; quick: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    parser.add_argument("--quick", action="store_true", help="64 px, 8 images, 2 maps per layer")
    parser.add_argument("--results-dir", default=None, help=RESULTS_HELP)
    args = parser.parse_args()
    try:
        import captum
        from captum.attr import NeuronDeconvolution
    except ImportError as error:
        print(f"bench_any_cnn.py: Captum is not importable ({error}); it is the baseline of this benchmark, an "
              "optional dependency: pip install captum", file=sys.stderr)
        return 2
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    warnings.filterwarnings("ignore", message=r"(Input Tensor \d+ did not already require gradients|"
                                              r"Setting backward hooks on ReLU)")
    torch.set_num_threads(args.threads)
    size = 64 if args.quick else 224
    pool_size = args.pool or (8 if args.quick else 24)
    per_layer = args.channels or (2 if args.quick else 8)
    k = min(9, pool_size)

    torch.manual_seed(0)
    model = randomised(resnet18())
    pool = torch.randn(pool_size, 3, size, size)
    start = time.perf_counter()
    net = Deconvnet(model, (3, size, size))
    capture_s = time.perf_counter() - start
    modules = dict(model.named_modules())

    # the job: per layer, per chosen map, the k strongest images and each one's strongest unit
    requests: dict[str, list[Request]] = {}
    units: dict[str, list[tuple[int, int, int, int, float]]] = {}  # image, channel, h, w, value
    for layer in LAYERS:
        acts = net.activations(pool, layer)
        channels = acts.shape[1]
        chosen = list(range(0, channels, max(1, channels // per_layer)))[:per_layer]
        topk = acts.flatten(2).amax(2).topk(k, dim=0).indices.T  # [C, k]
        requests[layer] = [Request(int(i), layer, c) for c in chosen for i in topk[c]]
        units[layer] = []
        for r in requests[layer]:
            plane = acts[r.image, r.channel]
            h, w = divmod(int(plane.argmax()), plane.shape[1])
            units[layer].append((r.image, r.channel, h, w, float(plane[h, w])))
    total = sum(len(r) for r in requests.values())

    last: dict[tuple[str, str], object] = {}  # each side's output of its latest run, for the comparison
    # where zfcore's time goes: timers around its forward and its way down, in every timed run (two clock
    # readings per call of each, against calls of tens of ms and more)
    spent: dict[str, float] = defaultdict(float)
    stages: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # job -> (forward, down, total) per run
    for name in ("_forward", "_down"):
        setattr(net, name, _timed(getattr(net, name), spent, name))

    def zfcore_job(job, requests_):
        def run():
            spent.clear()
            start = time.perf_counter()
            last["zfcore", job] = net.project_many(pool, requests_)
            stages[job].append((spent["_forward"], spent["_down"], (time.perf_counter() - start) * 1e3))
        return run

    def captum_layer(layer):
        def run():
            deconv = NeuronDeconvolution(model, modules[layer])
            last["captum", layer] = [deconv.attribute(pool[i:i + 1], neuron_selector=(c, h, w))
                                     for i, c, h, w, _ in units[layer]]
        return run

    def captum_warmup(layer):  # one call pays Captum's first-call costs
        i, c, h, w, _ = units[layer][0]
        return lambda: NeuronDeconvolution(model, modules[layer]).attribute(pool[i:i + 1], neuron_selector=(c, h, w))

    def zfcore_warmup(requests_):  # one projection per layer compiles the plans, folds the constants
        firsts = list({r.layer: r for r in requests_}.values())
        return lambda: net.project_many(pool, firsts)

    rows, notes, samples, checks = [], [], {}, {}
    shape = f"[{pool_size},3,{size},{size}]"
    baseline = f"Captum {captum.__version__} NeuronDeconvolution, 1 call per projection (batch of 1)"
    for layer in LAYERS:
        print(f"bench_any_cnn.py: {layer} ...", file=sys.stderr, flush=True)
        samples[layer] = repeated({"zfcore": zfcore_job(layer, requests[layer]), "pytorch": captum_layer(layer)},
                                  args.repeats, {"zfcore": zfcore_warmup(requests[layer]),
                                                 "pytorch": captum_warmup(layer)})
        t = {side: Timing.of(v) for side, v in samples[layer].items()}
        worst, dead = compare(last["zfcore", layer], torch.cat(last["captum", layer]).detach(), units[layer])
        checks[layer] = {"max_relative_difference": worst, "projections": len(units[layer]),
                         "zero_units_left_out": dead}
        rows.append(Row("top-9 projections", f"{layer}: {len(requests[layer]) // k} maps x {k}", shape, "float32",
                        "nchw", baseline, t["zfcore"], t["pytorch"]))
        notes.append(f"{layer}: {len(requests[layer])} projections; crop work ratio "
                     f"{net.crop_work_ratio(layer):.1f}x; zfcore/value vs Captum: max relative difference "
                     f"{worst:.1e}" + (f" ({dead} units of value 0 left out)" if dead else ""))
        print(f"  zfcore {t['zfcore'].median_ms / 1e3:.2f} s, captum {t['pytorch'].median_ms / 1e3:.2f} s, "
              f"max relative difference {worst:.1e}", file=sys.stderr, flush=True)
    whole = {side: Timing.of([sum(samples[l][side][i] for l in LAYERS) for i in range(args.repeats)])
             for side in ("zfcore", "pytorch")}
    rows.append(Row("top-9 projections", f"layer1-4, whole job ({total} projections)", shape, "float32", "nchw",
                    baseline + " (each repeat: the sum of the layers' runs)", whole["zfcore"], whole["pytorch"]))
    everything = [r for layer in LAYERS for r in requests[layer]]
    one_call = Timing.of(repeated({"zfcore": zfcore_job("one call", everything)}, args.repeats,
                                  {"zfcore": zfcore_warmup(everything)})["zfcore"])
    rows.append(Row("top-9 projections", f"layer1-4, whole job in one call ({total} projections)", shape,
                    "float32", "nchw", baseline + " (each repeat: the sum of the layers' runs, as above)",
                    one_call, whole["pytorch"]))
    stage_rows = {}
    for job in (*LAYERS, "one call"):
        runs = sorted(stages[job][-args.repeats:], key=lambda p: p[2])  # the timed runs (the warm-up came first)
        forward, down, total_ms = runs[len(runs) // 2]
        stage_rows[job] = {"forward_ms": forward, "down_ms": down, "total_ms": total_ms}
        notes.append(f"zfcore stages, {job}: forward {forward:.0f} ms ({100 * forward / total_ms:.0f}%), way down "
                     f"{down:.0f} ms ({100 * down / total_ms:.0f}%), rest (seeding, argmax, pasting) "
                     f"{total_ms - forward - down:.0f} ms of {total_ms:.0f} ms (the timed run of median time)")

    memory, tables = memory_rows(size)
    for row in memory:
        notes.append(f"memory, {row['mode']} mode: zfcore keeps {row['zfcore_bytes']:,} bytes ({row['tensors']} "
                     f"record tensors, {row['records_bytes']:,} bytes, + layer4's output); autograd saves "
                     f"{row['autograd_saved_bytes']:,} bytes of activations "
                     f"({row['autograd_saved_with_weights_bytes']:,} with the weights it also saves): {row['ratio']}x")
    worst = max(c["max_relative_difference"] for c in checks.values())
    notes.insert(0, f"ResNet-18 (zfcore.models.resnet18, the common checkpoints' layout) with random weights "
                    f"(seed 0, BatchNorm randomised), {pool_size} random images at {size} px, {args.threads} "
                    f"threads, capture (torch.export) {capture_s:.1f} s, not timed; each side run {args.repeats} "
                    "times interleaved after a warm-up (one projection per layer); median [p20, p80] of those runs")
    notes.insert(1, f"agreement: zfcore's projection / the unit's value vs Captum's gradient, max relative "
                    f"difference over all {total} projections {worst:.1e} (float32)")
    env = environment(args.threads)
    env["captum"] = captum.__version__
    write("any_cnn_quick" if args.quick else "any_cnn_cpu", rows, env, notes, args.results_dir, baseline="Captum",
          extra={"memory": memory, "checks": checks, "zfcore_stages": stage_rows}, tables=tables)
    for r in rows:
        print(f"{r.case:48s} zfcore {r.zfcore.median_ms / 1e3:8.3f} s   captum "
              f"{r.pytorch.median_ms / 1e3:8.3f} s   {r.ratio:6.2f}x")
    print("\n".join(notes))
    if not worst <= 1e-4:  # NaN included
        print(f"bench_any_cnn.py: zfcore and Captum differ by {worst:.1e} (relative), more than 1e-4",
              file=sys.stderr)
        return 1
    return 0


def compare(got: torch.Tensor, expected: torch.Tensor, units: list) -> tuple[float, int]:
    """The largest difference between zfcore's projections divided by their
    units' values and Captum's (the gradient of each unit), relative to the
    largest magnitude of Captum's, over the projections; and how many units of
    value 0 were left out (zfcore's projection of such a unit is 0, the
    gradient is not)."""
    values = torch.tensor([u[4] for u in units])
    live = values != 0
    if not live.any():
        return 0.0, len(units)
    got, expected, values = got[live], expected[live], values[live].view(-1, 1, 1, 1)
    diff = (got / values - expected).abs().amax(dim=(1, 2, 3))
    scale = expected.abs().amax(dim=(1, 2, 3)).clamp_min(torch.finfo(expected.dtype).tiny)
    return float((diff / scale).max()), int((~live).sum())


def _timed(fn, spent: dict, name: str):
    """``fn``, adding its wall time (ms) to ``spent[name]`` at each call."""
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += (time.perf_counter() - start) * 1e3
    return run


if __name__ == "__main__":
    sys.exit(main())

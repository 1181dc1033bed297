"""The top-9 job of the paper's Fig. 2 on the CPU, in two parts, each side by
side with pure PyTorch on the same work, repeated, with real quantiles.

1. Streaming top-k (``zfcore.analysis.top_k``): images/s over a dataset for the
   maps of conv1..conv5, against a plain forward over the same batches through
   the same layers (the forward it cannot avoid). The difference is what the
   running top-k costs (hooks, per-map maxima, merges).
2. Top-9 projections: for ``--channels`` maps of each of conv1..conv5, the 9
   strongest images of a pool, each projected at its strongest unit. zfcore:
   ``Deconvnet.project_many`` over all of them (one forward per distinct image,
   switches, receptive-field crops, fused kernels). Baseline: the autograd-hook
   deconvnet of ``zfcore.deconv.reference`` (what attribution libraries do:
   ReLU backward replaced by the ReLU of the gradient), one forward and one
   backward per map over its 9 images. Both sides do every projection, forward
   passes included; nothing is extrapolated. The projections are compared.
   The whole job is timed twice on zfcore's side: as the sum of the layers'
   calls, and as one call (one forward for every layer).
   Per-stage times of a job: ``benchmarks/profile_deconv.py``.

    python benchmarks/bench_topk.py --results-dir DIR            # ZFNet at 224 px, 2 threads
    python benchmarks/bench_topk.py --quick --results-dir DIR    # zfnet_small at 64 px, seconds
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset

from common import RESULTS_HELP, Row, Timing, environment, write

from zfcore.analysis import top_k
from zfcore.analysis._stream import LayerTap, batches
from zfcore.deconv import Deconvnet, Request
from zfcore.deconv.reference import autograd_projection
from zfcore.data import SyntheticShapes
from zfcore.models import zfnet, zfnet_small

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def repeated(sides: dict, repeats: int) -> dict[str, list[float]]:
    """Run each side ``repeats`` times, interleaved (a b a b ...), after one
    untimed warm-up each; the wall times in ms, per side."""
    for fn in sides.values():
        fn()
    samples = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=256, help="images streamed by the top-k part")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward in the top-k part")
    parser.add_argument("--pool", type=int, default=24, help="images the projected top-9 are drawn from")
    parser.add_argument("--channels", type=int, default=12, help="maps projected per layer")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side")
    parser.add_argument("--quick", action="store_true", help="zfnet_small at 64 px")
    parser.add_argument("--results-dir", default=None, help=RESULTS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = 64 if args.quick else 224
    scale = 1 / 64 if args.quick else 1.0
    model = (zfnet_small(input_size=size) if args.quick else zfnet()).eval()
    rows, notes = [], []

    # 1. streaming top-k against the plain forward over the same batches
    data = SyntheticShapes("test", size=size, per_class=max(1, args.images // 10))
    images = (data.images[: args.images].float() - 128) * scale
    dataset = TensorDataset(images, data.labels[: args.images])
    n = len(dataset)

    def plain_forward():  # the same batches from the same loader, through the same layers (stopping after conv5),
        with LayerTap(model, LAYERS, reduce=lambda output: None) as tap:  # keeping nothing
            for batch, _labels, _indices in batches(dataset, list(range(n)), args.batch_size):
                tap(batch)

    def streaming():
        top_k(model, dataset, LAYERS, k=9, batch_size=args.batch_size, progress=False)

    t = {side: Timing.of(v) for side, v in repeated({"zfcore": streaming, "pytorch": plain_forward},
                                                       args.repeats).items()}
    rows.append(Row("streaming top-k", f"conv1-5, k=9, {n} images, batch {args.batch_size}",
                    f"[{n},3,{size},{size}]", "float32", "nchw",
                    "plain forward to conv5 over the same batches (no top-k)", t["zfcore"], t["pytorch"]))
    overhead = t["zfcore"].median_ms / t["pytorch"].median_ms - 1
    notes.append(f"streaming top-k: {n / t['zfcore'].median_ms * 1e3:.1f} images/s against "
                 f"{n / t['pytorch'].median_ms * 1e3:.1f} images/s for the forward alone: overhead "
                 f"{100 * overhead:.1f}% of the forward")

    # 2. top-9 projections, every projection on both sides
    pool = images[: args.pool]
    net = Deconvnet(model, (3, size, size))
    requests: dict[str, list[Request]] = {}
    picked: dict[tuple[str, int], list[int]] = {}
    with torch.no_grad(), LayerTap(model, LAYERS) as tap:
        acts = tap(pool)
    for layer in LAYERS:
        channels = acts[layer].shape[1]
        chosen = list(range(0, channels, max(1, channels // args.channels)))[: args.channels]
        strongest = acts[layer].flatten(2).amax(2)
        top9 = strongest.topk(min(9, len(pool)), dim=0).indices.T
        requests[layer] = [Request(int(i), layer, c) for c in chosen for i in top9[c]]
        for c in chosen:
            picked[(layer, c)] = [int(i) for i in top9[c]]
    total = sum(len(r) for r in requests.values())

    def zfcore_layer(layer):
        return lambda: net.project_many(pool, requests[layer])

    def baseline_layer(layer):
        def run():
            return [autograd_projection(model, pool[picked[key]], layer, key[1], None, "deconvnet")
                    for key in picked if key[0] == layer]
        return run

    times, samples = {}, {}
    for layer in LAYERS:
        samples[layer] = repeated({"zfcore": zfcore_layer(layer), "pytorch": baseline_layer(layer)}, args.repeats)
        times[layer] = t = {side: Timing.of(v) for side, v in samples[layer].items()}
        got = net.project_many(pool, requests[layer])
        expected = torch.cat(baseline_layer(layer)())
        worst = ((got - expected).abs().amax(dim=(1, 2, 3)) / expected.abs().amax(dim=(1, 2, 3)).clamp_min(1e-30)).max()
        rows.append(Row("top-9 projections", f"{layer}: {len(requests[layer]) // 9} maps x 9",
                        f"[{len(pool)},3,{size},{size}]", "float32", "nchw",
                        "autograd-hook deconvnet, 1 forward + 1 backward per map", t["zfcore"], t["pytorch"]))
        notes.append(f"{layer}: crop work ratio {net.crop_work_ratio(layer):.1f}x; max relative difference from "
                     f"the baseline {float(worst):.1e}")
    # The whole job's time in repeat i: the sum of every layer's i-th run.
    whole = {side: Timing.of([sum(samples[l][side][i] for l in LAYERS) for i in range(args.repeats)])
             for side in ("zfcore", "pytorch")}
    rows.append(Row("top-9 projections", f"conv1-5, whole job ({total} projections)",
                    f"[{len(pool)},3,{size},{size}]", "float32", "nchw",
                    "autograd-hook deconvnet (each repeat: the sum of the layers' runs)",
                    whole["zfcore"], whole["pytorch"]))
    # The same job as one project_many call: one forward shared by every layer.
    everything = [r for layer in LAYERS for r in requests[layer]]
    one_call = Timing.of(repeated({"zfcore": lambda: net.project_many(pool, everything)}, args.repeats)["zfcore"])
    rows.append(Row("top-9 projections", f"conv1-5, whole job in one call ({total} projections)",
                    f"[{len(pool)},3,{size},{size}]", "float32", "nchw",
                    "autograd-hook deconvnet (each repeat: the sum of the layers' runs, as above)",
                    one_call, whole["pytorch"]))
    share = {l: times[l]["zfcore"].median_ms / whole["zfcore"].median_ms for l in LAYERS}
    notes.insert(0, f"{'zfnet_small' if args.quick else 'ZFNet (paper Fig. 3)'} with its initial weights, embedded "
                    f"images at {size} px, {args.threads} threads; each side run {args.repeats} times interleaved "
                    "after a warm-up; median [p20, p80] of those runs")
    notes.append("share of zfcore's projection time per layer: "
                 + ", ".join(f"{l} {100 * s:.0f}%" for l, s in share.items()))
    write("topk_quick" if args.quick else "topk_cpu", rows, environment(args.threads), notes, args.results_dir)
    for r in rows:
        print(f"{r.op:18s} {r.case:44s} zfcore {r.zfcore.median_ms / 1e3:8.3f} s   pytorch "
              f"{r.pytorch.median_ms / 1e3:8.3f} s   {r.ratio:6.2f}x")
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

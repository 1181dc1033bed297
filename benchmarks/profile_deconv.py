"""Where the time of a top-9 projection job goes, per stage of the deconvnet's
plan: the forward, each stage's ``down`` (summed over the call), and the rest
(seeding, pasting the windows into the output).

    python benchmarks/profile_deconv.py conv5            # ZFNet at 224 px, 12 maps x 9 of conv5
    python benchmarks/profile_deconv.py conv1,conv2,conv3,conv4,conv5

The job is the one of ``bench_topk.py`` (its initial weights, 24 embedded images).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import torch

from zfcore.analysis._stream import LayerTap
from zfcore.data import SyntheticShapes
from zfcore.deconv import Deconvnet, Request
from zfcore.deconv import plan as stages
from zfcore.models import zfnet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layers", help="comma-separated conv layers of ZFNet, all projected in one call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = zfnet().eval()
    pool = SyntheticShapes("test", size=224, per_class=3).images[:24].float() - 128
    net = Deconvnet(model, (3, 224, 224))
    layers = args.layers.split(",")
    with torch.no_grad(), LayerTap(model, layers) as tap:
        acts = tap(pool)
    requests = []
    for layer in layers:
        channels = acts[layer].shape[1]
        chosen = list(range(0, channels, channels // 12))[:12]
        top9 = acts[layer].flatten(2).amax(2).topk(9, dim=0).indices.T
        requests += [Request(int(i), layer, c) for c in chosen for i in top9[c]]

    times: dict[str, list[float]] = defaultdict(float)

    def timed(cls):
        down = cls.down

        def run(self, *a, **k):
            start = time.perf_counter()
            result = down(self, *a, **k)
            nodes = net.graph.nodes
            key = f"{type(self).__name__} {nodes[self.top].module}..{nodes[self.bottom].module}"
            times[key] += time.perf_counter() - start
            return result
        cls.down = run

    for cls in (stages.DeconvStep, stages.ReluConvTranspose, stages.ConvTranspose, stages.OpStage):
        timed(cls)
    forward = net._forward

    def timed_forward(*a):
        start = time.perf_counter()
        result = forward(*a)
        times["forward (records, switches)"] += time.perf_counter() - start
        return result
    net._forward = timed_forward
    net.project_many(pool, requests)  # warm-up
    runs = []
    for _ in range(args.repeats):
        times.clear()
        start = time.perf_counter()
        net.project_many(pool, requests)
        total = time.perf_counter() - start
        times["other (seeds, crops, paste, output)"] = total - sum(times.values())
        runs.append((total, dict(times)))
    total, split = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median run
    print(f"{len(requests)} projections of {args.layers}, {args.threads} threads: {total * 1e3:.0f} ms (median run)")
    for key, seconds in split.items():
        print(f"  {key:48s} {seconds * 1e3:8.1f} ms  {100 * seconds / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

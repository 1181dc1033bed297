"""The top-9 pipeline of the paper's Fig. 2 at ZFNet scale, on the CPU: for every
feature map of layers 1-5 (96 + 256 + 384 + 384 + 256 = 1,376 maps), project its
9 strongest images, each at its own strongest unit.

zfcore: one forward over the image pool per layer, then all the layer's
9 x channels projections through ``Deconvnet.project_many`` (switches,
receptive-field crops, fused kernels). Baseline: the autograd-hook deconvnet of
``zfcore.deconv.reference`` (what attribution libraries do), one backward per
channel over its 9 images; it is timed on a sample of channels per layer and
multiplied by the layer's channel count (the full baseline would take about
20 minutes here). The sampled channels' projections are also compared.

    python benchmarks/bench_topk.py                  # ZFNet at 224 px, 2 threads
    python benchmarks/bench_topk.py --quick          # a small model, seconds
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from tqdm import tqdm

from common import Row, Timing, environment, write

from zfcore.data import SyntheticShapes
from zfcore.deconv import Deconvnet, Request
from zfcore.deconv.reference import autograd_projection
from zfcore.models import zfnet, zfnet_small

LAYERS = ("relu1", "relu2", "relu3", "relu4", "relu5")


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool", type=int, default=20, help="images the top-9 are drawn from")
    parser.add_argument("--sample", type=int, default=3, help="baseline channels timed per layer")
    parser.add_argument("--chunk", type=int, default=576, help="projections per project_many call")
    parser.add_argument("--quick", action="store_true", help="zfnet_small at 64 px")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = 64 if args.quick else 224
    model = (zfnet_small(input_size=size) if args.quick else zfnet()).eval()
    data = SyntheticShapes("test", size=size, per_class=max(1, args.pool // 10))
    images = (data.images[: args.pool].float() - data.images[: args.pool].float().mean(0)) * (
        1 / 64 if args.quick else 1.0)
    net = Deconvnet(model, (3, size, size))
    rows, notes, total_zf, total_base = [], [], 0.0, 0.0
    for layer in tqdm(LAYERS, desc="layers", unit="layer"):
        channels = dict(model.named_modules())[f"conv{layer[-1]}"].out_channels
        requests: list[Request] = []

        def zfcore_layer():
            with torch.no_grad():  # the top-9 selection: one forward over the pool
                acts = images
                for name, module in model.named_children():
                    acts = module(acts)
                    if name == layer:
                        break
            strongest = acts.flatten(2).amax(2)  # [pool, channels]
            top9 = strongest.topk(min(9, len(images)), dim=0).indices.T  # [channels, 9]
            requests.clear()
            requests.extend(Request(int(i), layer, c) for c in range(channels) for i in top9[c])
            for start in range(0, len(requests), args.chunk):
                net.project_many(images, requests[start:start + args.chunk])

        zf_seconds = _seconds(zfcore_layer)
        sample = list(range(0, channels, max(1, channels // args.sample)))[: args.sample]
        autograd_projection(model, images[:9], layer, 0, None, "deconvnet")  # warm-up, not timed
        base_seconds, worst = 0.0, 0.0
        for c in sample:
            picked = [r.image for r in requests if r.channel == c]
            batch = images[picked]
            started = time.perf_counter()
            expected = autograd_projection(model, batch, layer, c, None, "deconvnet")
            base_seconds += time.perf_counter() - started
            got = net.project(batch, layer, c)
            scale = expected.abs().max().clamp_min(1e-30)
            worst = max(worst, ((got - expected).abs().max() / scale).item())
        per_channel = base_seconds / len(sample)
        total_zf += zf_seconds
        total_base += per_channel * channels
        rows.append(Row("top-9 projections", f"{layer}: {channels} maps x 9", f"[{len(images)},3,{size},{size}]",
                        "float32", "nchw", f"autograd-hook deconvnet, 1 backward/channel "
                        f"({per_channel:.3f} s/channel on {len(sample)} channels, x{channels})",
                        Timing(zf_seconds * 1e3, zf_seconds * 1e3, zf_seconds * 1e3),
                        Timing(per_channel * channels * 1e3, per_channel * channels * 1e3,
                               per_channel * channels * 1e3)))
        notes.append(f"{layer}: crop work ratio {net.crop_work_ratio(layer):.1f}x (elements the uncropped way down "
                     f"touches / those of the receptive-field windows); sampled channels' max relative difference "
                     f"from the baseline {worst:.1e}")
    rows.append(Row("top-9 projections", "layers 1-5, whole job", f"[{len(images)},3,{size},{size}]", "float32",
                    "nchw", "autograd-hook deconvnet (sum of the layers)",
                    Timing(total_zf * 1e3, total_zf * 1e3, total_zf * 1e3),
                    Timing(total_base * 1e3, total_base * 1e3, total_base * 1e3)))
    notes.insert(0, f"{'zfnet_small' if args.quick else 'ZFNet (paper Fig. 3)'} with its initial weights, "
                    f"{len(images)} embedded images at {size} px; times are single wall-clock runs (seconds of "
                    "work each), the baseline's extrapolated from its sampled channels")
    write("topk_quick" if args.quick else "topk_cpu", rows, environment(args.threads), notes, args.results_dir)
    for r in rows:
        print(f"{r.case:32s} zfcore {r.zfcore.median_ms / 1e3:8.2f} s   baseline {r.pytorch.median_ms / 1e3:8.2f} s"
              f"   {r.ratio:6.1f}x")
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

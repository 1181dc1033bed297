"""Occlusion maps (the paper's Fig. 7) on the CPU, zfcore against pure PyTorch on
the same work, side by side in one run, repeated, with real quantiles; then the
wall time of the invariance (Fig. 5) and linear-probe (Table 7) drivers on the
embedded data.

1. Occlusion: for ``--images`` images, a ``--patch`` square slid with
   ``--stride`` over the image; per position the strongest conv5 map's total
   activation, the true-class probability and the top class. zfcore:
   ``occlusion(method="incremental")``, exact incremental inference (each
   spatial layer recomputes only the window the square reaches, the rest comes
   from the unoccluded forward). Baseline: the plain loop batched, the fastest
   pure-PyTorch way (``--batch-size`` occluded copies per full forward, softmax),
   ``occlusion(method="plain")``. Both produce every position of every image;
   the results are compared. The FLOP ratio the incremental plan can reach at
   this geometry (multiply-adds of the full forward over those of the windows)
   is printed beside the measured ratio: it bounds what exact reuse can give.
2. Drivers: ``invariance`` (the default sweeps over ``--invariance-images``
   validation images) and ``linear_probes`` (relu1..relu7, 100 training and
   100 validation images per class) on zfnet_small at 64 px, one timed run each.

    python benchmarks/bench_occlusion.py --results-dir DIR              # ZFNet at 224 px, patch 48, stride 16
    python benchmarks/bench_occlusion.py --quick --results-dir DIR      # zfnet_small at 64 px, seconds
    python benchmarks/bench_occlusion.py --checkpoint runs/demo/run/model.pt   # drivers on a trained model
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from common import RESULTS_HELP, Row, Timing, environment, write

from zfcore.analysis.occlusion import _plan, grid_size, occlusion
from zfcore.data import SyntheticShapes
from zfcore.models import zfnet, zfnet_small


def repeated(sides: dict, repeats: int) -> dict[str, list[float]]:
    """Each side ``repeats`` times, interleaved, after one untimed warm-up each: wall times in ms."""
    for fn in sides.values():
        fn()
    samples = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def _macs(module: nn.Module, out_h: int, out_w: int) -> int:
    if isinstance(module, nn.Conv2d):
        return module.weight.numel() * out_h * out_w
    return 0


def flop_bound(model: nn.Sequential, size: int, patch: int, stride: int) -> float:
    """Multiply-adds of one full forward over the mean multiply-adds the
    incremental plan spends per occluded position (the windows each conv
    recomputes, the layers after the spatial prefix in full)."""
    from zfcore.analysis.occlusion import _affected, _place, _window_rule

    spatial, rest, _ = _plan(model, "conv5")
    x = torch.zeros(1, 3, size, size)
    shapes, full = [], 0
    with torch.no_grad():
        for _, module in spatial:
            y = module(x)
            shapes.append((x.shape[-2:], y.shape[-2:]))
            full += _macs(module, *y.shape[-2:])
            x = y
        tail = sum(m.weight.numel() for m in rest if isinstance(m, nn.Linear))
    gh, gw = grid_size(size, size, patch, stride)
    total = 0.0
    for i in range(gh):
        for j in range(gw):
            top, left, h, w = torch.tensor([i * stride]), torch.tensor([j * stride]), patch, patch
            for (_, module), (_, (oh, ow)) in zip(spatial, shapes):
                rule = _window_rule(module)
                if rule is None:
                    continue
                (kh, kw), (sh, sw), (ph, pw), (dh, dw) = rule
                r0, r1 = _affected(top, top + h, kh, sh, ph, dh, oh)
                c0, c1 = _affected(left, left + w, kw, sw, pw, dw, ow)
                top, h = _place(r0, r1, oh)
                left, w = _place(c0, c1, ow)
                total += _macs(module, h, w)
    return (full + tail) / (total / (gh * gw) + tail)


def bench_occlusion(args, rows, notes) -> None:
    size = 64 if args.quick else 224
    torch.manual_seed(0)
    model = (zfnet_small(10, input_size=size) if args.quick else zfnet(1000, input_size=size)).eval()
    data = SyntheticShapes("val", size=size, per_class=1)
    images = (data.images[:args.images].float() - 128.0) / 64.0
    labels = data.labels[:args.images]
    patch, stride = (16, 4) if args.quick and args.patch is None else (args.patch or 48, args.stride or 16)
    gh, gw = grid_size(size, size, patch, stride)

    def run(method):
        return lambda: occlusion(model, images, labels, layer="conv5", patch_size=patch, stride=stride,
                                 batch_size=args.batch_size, method=method, progress=False)

    samples = repeated({"zfcore": run("incremental"), "pytorch": run("plain")}, args.repeats)
    got, expected = run("incremental")(), run("plain")()
    prob_diff = float((got.true_prob - expected.true_prob).abs().max())
    act_diff = float(((got.activation - expected.activation).abs()
                      / expected.activation.abs().clamp_min(1e-6)).max())
    same_class = float((got.top_class == expected.top_class).double().mean())
    name = "zfnet_small" if args.quick else "ZFNet"
    rows.append(Row("occlusion maps", f"{name}, patch {patch}, stride {stride}, {gh}x{gw} positions",
                    f"[{len(images)},3,{size},{size}]", "float32", "nchw",
                    f"plain loop batched ({args.batch_size} occluded copies per forward)",
                    Timing.of(samples["zfcore"]), Timing.of(samples["pytorch"])))
    bound = flop_bound(model, size, patch, stride)
    notes.append(f"occlusion: {name} with its initial weights, {len(images)} embedded images at {size} px, "
                 f"{len(images) * gh * gw} occluded forwards per side per run; {args.threads} threads; each side "
                 f"run {args.repeats} times interleaved after a warm-up; median [p20, p80] of those runs")
    notes.append(f"occlusion: exact reuse can save at most {bound:.2f}x of the multiply-adds at this geometry "
                 f"(full forward / incremental per position): a square's window grows with depth until the "
                 f"deep convolutions are recomputed almost whole; smaller squares leave more to reuse")
    notes.append(f"occlusion: largest difference from the plain loop: true-class probability {prob_diff:.1e}, "
                 f"map activation {act_diff:.1e} (relative); top class equal at {100 * same_class:.1f}% of positions")


def bench_drivers(args, notes) -> list[str]:
    import zfcore
    from zfcore.analysis.invariance import EMBEDDED_ROTATION_SYMMETRIC, invariance
    from zfcore.analysis.probes import depth_layers, linear_probes, probe_splits
    from zfcore.load import Loaded, embedded_dataset

    if args.checkpoint:
        loaded = zfcore.load(args.checkpoint)
        what = f"the trained model {args.checkpoint}"
    else:
        torch.manual_seed(0)
        loaded = Loaded(model=zfnet_small(10).eval(), classes=list(SyntheticShapes.classes), input_shape=(3, 64, 64),
                        mean=torch.full((3, 64, 64), 128.0), scale=1 / 64, resize=None,
                        config={"seed": 0, "image_size": 64, "per_class": 500})
        what = "zfnet_small with its initial weights (pass --checkpoint for a trained one)"
    lines = []
    val = SyntheticShapes("val", size=loaded.input_shape[-1], per_class=100)
    pick = torch.arange(args.invariance_images) * (len(val.labels) // args.invariance_images)
    start = time.perf_counter()
    result = invariance(loaded.model, val.images[pick], val.labels[pick], preprocess=loaded.preprocess,
                        classes=loaded.classes, rotation_symmetric=EMBEDDED_ROTATION_SYMMETRIC, progress=False)
    seconds = time.perf_counter() - start
    sweeps = sum(len(v) for v in result.values.values())
    lines.append(f"invariance: {args.invariance_images} images x {sweeps} transforms, layers "
                 f"{', '.join(result.layers)}: {seconds:.1f} s")
    start = time.perf_counter()
    train, test = probe_splits(loaded, embedded_dataset(loaded, train_per_class=100))
    probes = linear_probes(loaded.model, train, test, depth_layers(loaded.model), progress=False)
    seconds = time.perf_counter() - start
    lines.append(f"linear probes: {len(probes.layers)} layers, {probes.train_images} training + {probes.test_images} "
                 f"held-out images: {seconds:.1f} s (features {probes.feature_seconds:.1f} s, fits "
                 f"{sum(probes.fit_seconds):.1f} s)")
    notes.append(f"drivers on {what}, {args.threads} threads, one run each: " + "; ".join(lines))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=2, help="images whose occlusion maps are computed")
    parser.add_argument("--patch", type=int, default=None, help="square side in pixels (default 48; quick: 16)")
    parser.add_argument("--stride", type=int, default=None, help="square stride in pixels (default 16; quick: 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="occluded positions per forward, both sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    parser.add_argument("--invariance-images", type=int, default=10)
    parser.add_argument("--checkpoint", default=None, help="a model.pt for the driver timings")
    parser.add_argument("--no-drivers", action="store_true", help="time the occlusion maps only")
    parser.add_argument("--quick", action="store_true", help="zfnet_small at 64 px")
    parser.add_argument("--results-dir", default=None, help=RESULTS_HELP)
    args = parser.parse_args()
    for flag in ("threads", "images", "batch_size", "repeats", "invariance_images"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    torch.set_num_threads(args.threads)
    rows, notes = [], []
    bench_occlusion(args, rows, notes)
    if not args.no_drivers:
        bench_drivers(args, notes)
    write("occlusion_quick" if args.quick else "occlusion_cpu", rows, environment(args.threads), notes,
          args.results_dir)
    for r in rows:
        print(f"{r.op}  {r.case}: zfcore {r.zfcore.median_ms / 1e3:.3f} s, pytorch {r.pytorch.median_ms / 1e3:.3f} s, "
              f"{r.ratio:.2f}x")
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

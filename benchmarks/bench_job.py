"""The whole top-9 job of the paper's Fig. 2 (streaming top-k, then every
unit's projection) against one plain forward over the same images, on the
CPU, side by side in one process, repeated, with quantiles.

1. ZFNet at 224 px (its initial weights), 512 images held in memory: one plain
   forward (batches of 64, no_grad, to fc8) against the whole job: ``top_k`` of
   conv2 and conv5 (k=9), then the projections of all 4,608 units
   (deconvnet mode): the top-k pass keeps the records (``ForwardRecords``) and
   the projections run no second forward. The same job without kept records
   (each distinct image run forward once more, for all its units of both
   layers) is a second row. Reported: whole job / forward, the top-k and
   projection shares, images per second, the data loading's share.
2. ResNet-18 (``zfcore.load("resnet18", preprocess="imagenet")``, its
   initial weights), top-9 of ``layer4`` over a folder of 256 JPEGs of varied
   sizes (crops of scikit-learn's sample photographs), read as ``zfcore
   visualize --data`` reads it (``zfcore.load.open_dataset``: decoded once in a
   DataLoader, resized and centre-cropped; normalized per item). Each side
   decodes the folder and then works: the plain forward over the decoded
   images against the whole job; the decoding's share of each is shown.

Each side runs once untimed (a short warm-up for a job), then the sides run
interleaved; times are median [p20, p80] of the runs. Beside the wall-clock
ratio: the ratio of the fastest runs and of process CPU times (on a shared
machine the other processes' load moves single runs a lot).

    python benchmarks/bench_job.py --results-dir DIR            # the issue's cases, 2 threads
    python benchmarks/bench_job.py --quick --results-dir DIR    # small models and images, a minute or two
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common import RESULTS_HELP, Row, Timing, environment, repeated, write

from zfcore.analysis import top_k
from zfcore.analysis._stream import batches
from zfcore.analysis.projections import ForwardRecords, top_k_projections
from zfcore.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from zfcore.deconv import Deconvnet
from zfcore.load import load, open_dataset
from zfcore.visualize import strongest_maps
from zfcore.models import zfnet, zfnet_small


class Timed(Dataset):
    """A dataset whose ``__getitem__`` time is added up (the job's data loading)."""

    def __init__(self, base):
        self.base, self.seconds = base, 0.0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        start = time.perf_counter()
        item = self.base[i]
        self.seconds += time.perf_counter() - start
        return item


class Tensors(Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random images with some spatial structure (noise at 1/4 resolution, upsampled)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, 3, max(1, size // 4), max(1, size // 4), generator=g), size=size,
                         mode="bilinear", align_corners=False)


def write_folder(root: str, n: int, seed: int = 0) -> None:
    """``n`` JPEGs of varied sizes and aspect ratios, crops of scikit-learn's two
    sample photographs, one class folder per photograph."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(seed)
    for i in range(n):
        which = i % len(photos.images)
        photo = photos.images[which]
        h, w = photo.shape[:2]
        ch, cw = int(rng.integers(h // 4, h + 1)), int(rng.integers(w // 4, w + 1))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        folder = os.path.join(root, os.path.splitext(os.path.basename(photos.filenames[which]))[0])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(photo[top:top + ch, left:left + cw]).save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)


class Side:
    """One side of the comparison: its process CPU time per run and (for a
    job) the split into top-k, projections and data loading."""

    def __init__(self, fn, dataset: Timed | None = None):
        self.fn, self.dataset = fn, dataset  # without a dataset, fn reports its own "loading"
        self.cpu_ms, self.parts = [], {}

    def __call__(self):
        if self.dataset is not None:
            self.dataset.seconds = 0.0
        cpu = time.process_time()
        parts = self.fn() or {}
        self.cpu_ms.append((time.process_time() - cpu) * 1e3)
        loading = {} if self.dataset is None else {"loading": self.dataset.seconds * 1e3}
        for name, ms in {**parts, **loading}.items():
            self.parts.setdefault(name, []).append(ms)

    def last(self, name: str, runs: int) -> np.ndarray:
        """The timed runs' values (the warm-up, where it ran this side, left out)."""
        return np.array((self.cpu_ms if name == "cpu" else self.parts[name])[-runs:])


def plain_forward(model, dataset, batch_size: int):
    """One forward of the whole model over the dataset, in order, through the same loader as ``top_k``."""
    def run():
        with torch.no_grad():
            for images, _labels, _indices in batches(dataset, list(range(len(dataset))), batch_size):
                model(images)
    return run


def whole_job(model, net, dataset, layers, k: int, batch_size: int, kept: bool, facts: dict, maps: int | None = None):
    """``top_k`` then ``top_k_projections`` as ``visualize`` calls them (``maps``:
    its ``--maps``, the strongest maps only); returns the parts' times (ms)."""
    def run():
        records = ForwardRecords(net) if kept else None
        start = time.perf_counter()
        found = top_k(model, dataset, layers, k=k, batch_size=batch_size, progress=False, records=records)
        middle = time.perf_counter()
        chosen = {name: strongest_maps(t, maps) for name, t in found.items()}
        projected = top_k_projections(model, dataset, {name: t for name, (t, _) in chosen.items()},
                                      batch_size=4 * batch_size, net=net, progress=False, records=records,
                                      channels={name: numbers for name, (_, numbers) in chosen.items()})
        end = time.perf_counter()
        facts["units"] = sum(p.boxes.shape[0] * p.boxes.shape[1] for p in projected.values())
        facts["distinct"] = len({int(i) for t, _ in chosen.values() for i in t.images.flatten()})
        return {"top-k": (middle - start) * 1e3, "projections": (end - middle) * 1e3}
    return run


def loading_of(dataset):
    def run():
        for i in range(len(dataset)):
            dataset[i]
    return run


def fmt(t: Timing) -> str:
    return f"{t.median_ms / 1e3:.2f} s [{t.p20_ms / 1e3:.2f}, {t.p80_ms / 1e3:.2f}]"


def compare(name: str, samples: dict, sides: dict, job: str, n: int) -> tuple[str, dict]:
    """One job side against the forward: a note and the per-run numbers."""
    runs = len(samples[job])
    wall, forward = np.array(samples[job]), np.array(samples["forward"])
    per_run = wall / forward
    cpu = sides[job].last("cpu", runs) / sides["forward"].last("cpu", runs)
    parts = {p: np.median(sides[job].last(p, runs) / forward) for p in ("top-k", "projections")}
    loading = np.median(sides[job].last("loading", runs) / wall)
    note = (f"{name}: whole job {np.median(per_run):.2f}x one forward (median of the per-run ratios, "
            f"{per_run.min():.2f}-{per_run.max():.2f}x; fastest job / fastest forward "
            f"{wall.min() / forward.min():.2f}x; process CPU time {np.median(cpu):.2f}x): top-k "
            f"{parts['top-k']:.2f}x, projections {parts['projections']:.2f}x; {n / np.median(wall) * 1e3:.1f} "
            f"images/s against {n / np.median(forward) * 1e3:.1f} images/s for the forward; data loading "
            f"{100 * loading:.1f}% of the job")
    data = {"job_over_forward": per_run.tolist(), "cpu_job_over_forward": cpu.tolist(), "job_ms": wall.tolist(),
            "forward_ms": forward.tolist(), **{f"{p}_ms": sides[job].last(p, runs).tolist()
                                               for p in ("top-k", "projections", "loading")}}
    return note, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=512, help="ZFNet: images in the dataset")
    parser.add_argument("--folder-images", type=int, default=256, help="ResNet-18: JPEGs in the folder")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward (the projections: 4x)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    parser.add_argument("--resnet-repeats", type=int, default=None,
                        help="timed runs per side of the ResNet-18 case (default: --repeats)")
    parser.add_argument("--resnet-maps", type=int, default=None,
                        help="ResNet-18: project the strongest N of layer4's 512 maps (visualize --maps; default all; "
                             "--quick: 32)")
    parser.add_argument("--kept-only", action="store_true",
                        help="ZFNet: leave out the job without kept records (each distinct image forwarded once more)")
    parser.add_argument("--skip", choices=["zfnet", "resnet"], action="append", default=[],
                        help="leave a case out")
    parser.add_argument("--quick", action="store_true", help="zfnet_small and ResNet-18 at 64 px, few images")
    parser.add_argument("--results-dir", default=None, help=RESULTS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.quick:
        args.images, args.folder_images = min(args.images, 64), min(args.folder_images, 32)
        args.resnet_maps = args.resnet_maps or 32
    rows, notes, extra = [], [], {}
    notes.append(f"initial weights, {args.threads} threads; the sides run interleaved after a warm-up; median "
                 "[p20, p80] of the runs; ratio column = forward / job (the job's cost in forwards is its inverse)")

    if "zfnet" not in args.skip:
        size = 64 if args.quick else 224
        model = (zfnet_small(input_size=size) if args.quick else zfnet(1000)).eval()
        net = Deconvnet(model, (3, size, size))
        dataset = Timed(Tensors(smooth_images(args.images, size)))
        warm = Timed(Tensors(dataset.base.images[:2]))  # the job's first calls, briefly
        layers, facts = ["conv2", "conv5"], {}
        sides = {"forward": Side(plain_forward(model, dataset, args.batch_size), dataset),
                 "job": Side(whole_job(model, net, dataset, layers, 9, args.batch_size, True, facts), dataset),
                 "job, no kept records": Side(whole_job(model, net, dataset, layers, 9, args.batch_size, False, {}),
                                              dataset)}
        if args.kept_only:
            del sides["job, no kept records"]
        warmups = {side: whole_job(model, net, warm, layers, 9, args.batch_size, side == "job", {})
                   for side in sides if side != "forward"}
        samples = repeated(sides, args.repeats, warmups)
        t = {side: Timing.of(v) for side, v in samples.items()}
        n, name = args.images, "zfnet_small 64 px" if args.quick else "ZFNet 224 px"
        for side, how in (("job", "records kept by the top-k pass"),
                          ("job, no kept records", "each distinct image forwarded once more")):
            if side not in sides:
                continue
            case = f"{name}: conv2+conv5 top-9, {facts['units']} projections, {how}"
            rows.append(Row("top-9 job", case, f"[{n},3,{size},{size}]", "float32", "nchw",
                            f"one plain forward over the same {n} images (batch {args.batch_size}, to fc8)",
                            t[side], t["forward"]))
            note, extra[case] = compare(case, samples, sides, side, n)
            notes.append(f"{note}; {facts['distinct']} distinct images hold the units")

    if "resnet" not in args.skip:
        size = 64 if args.quick else 224
        subject = load("resnet18", preprocess="imagenet" if not args.quick else
                       Preprocess(size=size, resize=72, mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=255))
        model = subject.model
        net = Deconvnet(model, subject.input_shape)
        with tempfile.TemporaryDirectory() as root:
            write_folder(root, args.folder_images)
            facts = {}

            def decoded(run):
                """Decode the folder, then ``run`` on it; loading = decoding + per-item preprocessing."""
                def side():
                    start = time.perf_counter()
                    dataset = Timed(open_dataset(subject, root, progress=False))
                    decoding = time.perf_counter() - start
                    parts = run(dataset) or {}
                    return {**parts, "loading": (decoding + dataset.seconds) * 1e3}
                return side

            sides = {"forward": Side(decoded(lambda d: plain_forward(model, d, args.batch_size)())),
                     "job": Side(decoded(lambda d: whole_job(model, net, d, ["layer4"], 9, args.batch_size, True,
                                                             facts, args.resnet_maps)()))}
            n = len(open_dataset(subject, root, progress=False))
            warmups = {"job": decoded(lambda d: whole_job(model, net, d, ["layer4"], 9, args.batch_size, True, {},
                                                          1)())}  # the first calls' costs, one map's projections
            samples = repeated(sides, args.resnet_repeats or args.repeats, warmups)
        t = {side: Timing.of(v) for side, v in samples.items()}
        runs = len(samples["job"])
        which = "all 512 maps" if args.resnet_maps is None else f"the strongest {args.resnet_maps} maps"
        case = (f"ResNet-18 {size} px: layer4 top-9 of {which}, {facts['units']} projections, folder of {n} JPEGs "
                f"({subject.preprocessing.describe()})")
        rows.append(Row("top-9 job", case, f"[{n},3,{size},{size}]", "float32", "nchw",
                        f"one plain forward over the same folder (batch {args.batch_size}, decoding included)",
                        t["job"], t["forward"]))
        note, extra[case] = compare(case, samples, sides, "job", n)
        share = np.median(sides["forward"].last("loading", runs) / np.array(samples["forward"]))
        notes.append(f"{note} (decoding the folder + per-item normalization), {100 * share:.1f}% of the forward; "
                     f"{runs} runs per side; "
                     f"{facts['distinct']} distinct images hold the units")

    write("job_quick" if args.quick else "job_cpu", rows, environment(args.threads), notes, args.results_dir,
          baseline="plain forward", extra={"runs": extra})
    for r in rows:
        print(f"{r.case}\n    job {fmt(r.zfcore)}   forward {fmt(r.pytorch)}   job/forward "
              f"{r.zfcore.median_ms / r.pytorch.median_ms:.2f}x")
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

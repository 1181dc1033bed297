"""``zfcore visualize`` and ``zfcore demo`` as functions: from a trained model
and a dataset to a browsable report.

    >>> from zfcore.visualize import visualize
    >>> index = visualize("runs/small/model.pt", data="synthetic", out="report")

``visualize`` runs the analyses (streaming top-k over the dataset, the top-k
projections of Fig. 2, one image's activations, the filters, the dead-unit
check), saves their results under ``out/results/`` and renders the report
(``zfcore.report.render``). ``zfcore.demo`` first trains the small ZFNet on
the embedded data.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from .analysis import (ForwardRecords, activations, dead_units, display_signed, filters, project_top_k,
                       rank_and_world, top_k)
from .analysis.topk import TopK
from .deconv import MODES, Deconvnet
from .load import Loaded, PreparedDataset, load, open_dataset
from .report import render, save_results
from .version import __version__

__all__ = ["PreparedDataset", "default_layers", "open_dataset", "strongest_maps", "visualize"]


def default_layers(net: Deconvnet) -> list[str]:
    """The layers ``visualize`` projects when none are named: every convolution
    when there are at most 8 (ZFNet, AlexNet, VGG-11's 8); else the deepest
    layer at each map size (a ResNet's stem and ``layer1`` .. ``layer4``, a VGG's
    rectified output before each pooling)."""
    layers = net.layer_spec().layers
    convs = [info.name for info in layers if info.kind == "conv"]
    if len(convs) <= 8:
        return convs
    maps = [info for info in layers if len(info.shape) == 3 and info.kind not in ("linear", "dropout")
            and "avgpool" not in info.kind]
    chosen = []
    for i, info in enumerate(maps):
        if i + 1 == len(maps) or tuple(maps[i + 1].shape[1:]) != tuple(info.shape[1:]):
            chosen.append(info.name)
    first_conv = next(i for i, info in enumerate(maps) if info.kind == "conv")
    return [name for name in chosen if [m.name for m in maps].index(name) >= first_conv]


def _rectified(net: Deconvnet, layer: str) -> str:
    """The map ``layer`` passes on: the ReLU right after it (within two layers:
    conv, BatchNorm, ReLU), else ``layer`` itself."""
    layers = net.layer_spec().layers
    names = [info.name for info in layers]
    i = names.index(layer)
    if layers[i].kind == "conv":
        for info in layers[i + 1:i + 3]:
            if info.kind == "relu":
                return info.name
    return layer


def _convolutions(model: nn.Module, net: Deconvnet) -> list[str]:
    """The convolution layers whose filters can be shown (a module with a 4-D weight)."""
    modules = dict(model.named_modules())
    return [info.name for info in net.layer_spec().layers if info.kind == "conv"
            and isinstance(modules.get(info.name), nn.Conv2d)]


def strongest_maps(found: TopK, maps: int | None) -> tuple[TopK, Tensor]:
    """The ``maps`` maps of ``found`` with the largest mean of their top-k
    activations (all of them, in order, when ``maps`` is None), and their channel
    numbers."""
    channels = torch.arange(found.channels)
    if maps is not None and maps < found.channels:
        channels = found.values.float().mean(1).topk(maps).indices.sort().values
    return found.select(channels), channels


def _history(loaded: Loaded) -> list[dict]:
    metrics = loaded.run_folder / "metrics.jsonl" if loaded.run_folder is not None else None
    if metrics is not None and metrics.is_file():
        rows = []
        try:
            for line in metrics.read_text().splitlines():
                row = json.loads(line)
                if isinstance(row, dict):
                    rows.append({k: v for k, v in row.items() if isinstance(v, int | float | str)})
        except (OSError, ValueError):
            rows = []
        if rows:
            return rows
    return loaded.history


def _for_display(loaded: Loaded, projected) -> dict:
    """What the report shows of one layer's ``Projections``: each projection as
    uint8 (``display_signed``: grey = 0, scaled by its own peak, kept in
    ``peaks``), the patches as uint8 image pixels (the normalization undone at
    each box), the boxes."""
    p = projected.projections
    size = loaded.input_shape[-1]
    gain, offset = loaded.preprocessing.affine(size)
    means = torch.zeros(projected.patches.shape)
    c, k = projected.boxes.shape[:2]
    for i in range(c):
        for j in range(k):
            top, left, bottom, right = (int(v) for v in projected.boxes[i, j])
            rows, cols = projected.inside(i, j)
            means[i, j, :, rows, cols] = offset[:, top:bottom, left:right]
    patches = (projected.patches * gain + means).round().clamp(0, 255).to(torch.uint8)
    return {"layer": projected.layer, "projections": display_signed(p), "peaks": p.abs().amax(dim=(-3, -2, -1)),
            "boxes": projected.boxes, "windows": projected.windows, "patch_images": patches}


def _gather_rows(shown: dict, rows: Tensor, channels: int) -> dict | None:
    """Rank 0 gets every rank's rows of one layer's display dict (``rows``: the
    channels this rank projected), in channel order; the other ranks get None."""
    import torch.distributed as dist

    rank, world = rank_and_world()
    parts = [None] * world if rank == 0 else None
    dist.gather_object((rows, shown), parts, dst=0)
    if rank != 0:
        return None
    full = {}
    for key, value in shown.items():
        if isinstance(value, Tensor):
            merged = value.new_zeros((channels, *value.shape[1:]))
            for part_rows, part in parts:
                merged[part_rows] = part[key]
            full[key] = merged
        else:
            full[key] = value
    return full


def visualize(checkpoint: str | os.PathLike | Loaded, data: str = "synthetic", out: str | os.PathLike = "report",
              layers: list[str] | None = None, k: int = 9, mode: str = "deconvnet", batch_size: int = 64, *,
              maps: int | None = None, resume: bool = False, activation_image: int = 0,
              progress: bool = True) -> Path:
    """Analyses and report for one model: returns the path of ``out/index.html``.

    Args:
        checkpoint: a ``Subject`` (``zfcore.load``: a zfcore run, an
            architecture with its weights, a ``.pt2``), or a zfcore run's path.
        data: ``"synthetic"`` (a zfcore run's embedded images) or an image folder
            (flat or with class subfolders; ``zfcore.load.folder_dataset``).
        out: the report folder (created; nothing is written outside it).
        layers: layers to project, ``named_modules`` paths (``features.10``,
            ``layer3.1``); default ``default_layers``.
        k: images per feature map.
        mode: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        batch_size: images per forward, projections per batch.
        maps: project only the strongest ``maps`` maps of each layer (by the mean
            of their top-k activations); None: all of them.
        resume: continue an interrupted top-k pass from ``out/results/topk-state.pt``.
        activation_image: the dataset index shown on the activations page.
    """
    if mode not in MODES:
        raise ValueError(f"visualize: mode must be one of {', '.join(MODES)} (got {mode!r})")
    for name, value in (("k", k), ("batch_size", batch_size), ("maps", 1 if maps is None else maps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"visualize: {name} must be a positive int (got {value!r})")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    loaded = checkpoint if isinstance(checkpoint, Loaded) else load(checkpoint)
    model = loaded.model
    net = Deconvnet(model, loaded.input_shape)
    layers = list(layers) if layers else default_layers(net)
    unknown = [n for n in layers if n not in net.layers]
    if unknown:
        raise ValueError(f"visualize: no layer named {', '.join(map(repr, unknown))}; layers are "
                         f"{', '.join(net.layers)}")
    timings["load"] = time.perf_counter() - started
    mark = time.perf_counter()
    dataset = open_dataset(loaded, data, progress=progress)
    if not 0 <= activation_image < len(dataset):
        raise ValueError(f"visualize: activation_image must be in 0..{len(dataset) - 1} (got {activation_image})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings["data"] = time.perf_counter() - mark

    # the top-k pass runs on the deconvnet's forward and keeps, for the images its running top-k holds,
    # what the way down needs (switches): the projections then run no second forward over them
    mark = time.perf_counter()
    records = ForwardRecords(net, mode)
    found = top_k(model, dataset, layers, k=k, batch_size=batch_size, state_file=out / "results" / "topk-state.pt",
                  resume=resume, progress=progress, records=records)
    timings["top-k"] = time.perf_counter() - mark

    # under torchrun every rank holds the merged top-k; each projects a strided share of every layer's
    # maps and rank 0 gathers them (the same result as one process), then renders
    rank, world = rank_and_world()
    mark = time.perf_counter()
    chosen = {name: strongest_maps(t, maps) for name, t in found.items()}
    shares = {name: torch.arange(rank, t.channels, world) for name, (t, _) in chosen.items()}
    projections_saved = {}
    # one layer at a time (only its float windows are held at once), each distinct image forwarded at most once
    for projected in project_top_k(model, dataset, {name: t.select(shares[name]) for name, (t, _) in chosen.items()},
                                   mode=mode, batch_size=4 * batch_size, net=net, progress=progress and rank == 0,
                                   records=records,
                                   channels={name: numbers[shares[name]] for name, (_, numbers) in chosen.items()}):
        name = projected.layer
        shown = _for_display(loaded, projected)
        del projected
        projections_saved[name] = shown if world == 1 else _gather_rows(shown, shares[name], chosen[name][0].channels)
    del records
    timings["projections"] = time.perf_counter() - mark

    mark = time.perf_counter()
    rectified = list(dict.fromkeys(_rectified(net, n) for n in layers))
    dead = dead_units(model, dataset, rectified, batch_size=batch_size, progress=progress and rank == 0)
    if rank != 0:
        return out / "index.html"
    image, label = dataset[activation_image]
    acts = activations(model, image, rectified)  # the rectified maps each projected layer passes on
    shown_filters = {n: filters(model, n).to_plain() for n in _convolutions(model, net)[:2]}
    timings["activations, filters, dead units"] = time.perf_counter() - mark

    spec = net.layer_spec()
    topk_saved = {}
    for name, (t, channels) in chosen.items():
        labels = torch.tensor([[dataset.label(int(i)) for i in row] for row in t.images], dtype=torch.int64)
        topk_saved[name] = {**t.to_plain(), "labels": labels, "channels": channels}
    meta = {
        "zfcore": __version__, "model": loaded.name,
        "checkpoint": os.fspath(loaded.path) if loaded.path is not None else "",
        "preprocess": loaded.preprocessing.describe(),
        "classes": dataset.classes, "model_classes": loaded.classes, "input_shape": list(loaded.input_shape),
        "layers": layers, "k": k, "maps": maps, "mode": mode, "data": dataset.description, "images": len(dataset),
        "skipped": dataset.skipped, "history": _history(loaded),
        "spec": [{"name": info.name, "kind": info.kind, "shape": list(info.shape), "size": list(info.size),
                  "jump": list(info.jump)} for info in spec.layers],
        "timings": timings,
    }
    tensors = {"topk": topk_saved, "projections": projections_saved,
               "activations": {"maps": acts.maps, "image": loaded.deprocess(image), "index": activation_image,
                               "label": int(label)},
               "filters": shown_filters, "dead_units": {name: d.to_plain() for name, d in dead.items()}}
    save_results(out, meta, tensors)
    mark = time.perf_counter()
    index = render(out, progress=progress)
    timings["rendering"] = time.perf_counter() - mark
    meta["timings"] = timings
    save_results(out, meta, {})
    return index

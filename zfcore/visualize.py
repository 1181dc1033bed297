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
from torch import nn

from .analysis import (activations, dead_units, display_signed, filters, rank_and_world, top_k,
                       top_k_projections)
from .deconv import MODES, Deconvnet
from .load import Loaded, PreparedDataset, load, open_dataset
from .report import render, save_results
from .version import __version__

__all__ = ["PreparedDataset", "open_dataset", "visualize"]


def _default_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def _following_relu(model: nn.Module, layer: str) -> str | None:
    names = [(name, module) for name, module in model.named_modules() if name]
    for i, (name, _) in enumerate(names):
        if name == layer:
            for after, module in names[i + 1:i + 3]:
                if isinstance(module, nn.ReLU):
                    return after
    return None


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
    ``peaks``), the patches as uint8 image pixels (the mean at each box added
    back), the boxes."""
    p = projected.projections
    size = loaded.input_shape[-1]
    mean = loaded.mean
    top0, left0 = (mean.shape[-2] - size) // 2, (mean.shape[-1] - size) // 2
    mean = mean[:, top0:top0 + size, left0:left0 + size]
    means = torch.zeros(projected.patches.shape)
    c, k = projected.boxes.shape[:2]
    for i in range(c):
        for j in range(k):
            top, left, bottom, right = (int(v) for v in projected.boxes[i, j])
            rows, cols = projected.inside(i, j)
            means[i, j, :, rows, cols] = mean[:, top:bottom, left:right]
    patches = (projected.patches / loaded.scale + means).round().clamp(0, 255).to(torch.uint8)
    return {"layer": projected.layer, "projections": display_signed(p), "peaks": p.abs().amax(dim=(-3, -2, -1)),
            "boxes": projected.boxes, "windows": projected.windows, "patch_images": patches}


def visualize(checkpoint: str | os.PathLike | Loaded, data: str = "synthetic", out: str | os.PathLike = "report",
              layers: list[str] | None = None, k: int = 9, mode: str = "deconvnet", batch_size: int = 64, *,
              resume: bool = False, activation_image: int = 0, progress: bool = True) -> Path:
    """Analyses and report for one model: returns the path of ``out/index.html``.

    Args:
        checkpoint: a ``model.pt``/checkpoint path (``zfcore.load``) or a ``Loaded``.
        data: ``"synthetic"`` or an image folder (``open_dataset``).
        out: the report folder (created; nothing is written outside it).
        layers: layers to project (default: every conv layer).
        k: images per feature map.
        mode: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        batch_size: images per forward, projections per batch.
        resume: continue an interrupted top-k pass from ``out/results/topk-state.pt``.
        activation_image: the dataset index shown on the activations page.
    """
    if mode not in MODES:
        raise ValueError(f"visualize: mode must be one of {', '.join(MODES)} (got {mode!r})")
    for name, value in (("k", k), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"visualize: {name} must be a positive int (got {value!r})")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    loaded = checkpoint if isinstance(checkpoint, Loaded) else load(checkpoint)
    model = loaded.model
    dataset = open_dataset(loaded, data)
    if not 0 <= activation_image < len(dataset):
        raise ValueError(f"visualize: activation_image must be in 0..{len(dataset) - 1} (got {activation_image})")
    net = Deconvnet(model, loaded.input_shape)
    layers = list(layers) if layers else [n for n in _default_layers(model) if n in net.layers]
    unknown = [n for n in layers if n not in net.layers]
    if unknown:
        raise ValueError(f"visualize: no layer named {', '.join(map(repr, unknown))}; layers are "
                         f"{', '.join(net.layers)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings["load"] = time.perf_counter() - started

    mark = time.perf_counter()
    found = top_k(model, dataset, layers, k=k, batch_size=batch_size, state_file=out / "results" / "topk-state.pt",
                  resume=resume, progress=progress)
    timings["top-k"] = time.perf_counter() - mark
    if rank_and_world()[0] != 0:  # under torchrun the ranks share the top-k pass; rank 0 does the rest
        return out / "index.html"

    mark = time.perf_counter()
    projections_saved = {}
    for name, t in found.items():  # one layer at a time: only its float windows are held at once
        projected = top_k_projections(model, dataset, t, mode=mode, batch_size=4 * batch_size, net=net,
                                      progress=progress)[name]
        projections_saved[name] = _for_display(loaded, projected)
        del projected
    timings["projections"] = time.perf_counter() - mark

    mark = time.perf_counter()
    convs = _default_layers(model)
    relus = [r for r in (_following_relu(model, n) for n in convs) if r is not None]
    dead = dead_units(model, dataset, relus, batch_size=batch_size, progress=progress) if relus else {}
    image, label = dataset[activation_image]
    acts = activations(model, image, relus or convs)  # the rectified maps each conv layer passes on
    shown_filters = {n: filters(model, n).to_plain() for n in convs[:2]}
    timings["activations, filters, dead units"] = time.perf_counter() - mark

    spec = net.layer_spec()
    topk_saved = {}
    for name, t in found.items():
        labels = torch.tensor([[dataset.label(int(i)) for i in row] for row in t.images], dtype=torch.int64)
        topk_saved[name] = {**t.to_plain(), "labels": labels}
    meta = {
        "zfcore": __version__, "model": str(loaded.config.get("model", "model")), "checkpoint": os.fspath(loaded.path),
        "classes": dataset.classes, "model_classes": loaded.classes, "input_shape": list(loaded.input_shape),
        "layers": layers, "k": k, "mode": mode, "data": dataset.description, "images": len(dataset),
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

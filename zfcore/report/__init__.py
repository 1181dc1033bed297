"""The static HTML report: ``index.html`` (the model's layers, the training
curve), one page per layer in the layout of the paper's Fig. 2, an activations
page, a filters page and a dead-units table, with PNG images (Pillow; plots with
matplotlib). Relative links only, no network access, no script.

Every name in it (layer names, class names that come from folder names, paths)
is untrusted text: Jinja2 escapes it everywhere, and file names are made from
page numbers and a sanitized slug, so nothing is written outside ``out``.

``save_results`` keeps what the analyses computed under ``out/results/``;
``render`` (``zfcore report --from DIR``) rebuilds the pages from there without
recomputing anything.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..version import __version__
from ..analysis.result import display_signed
from .html import TEMPLATES as _TEMPLATES, environment as _environment, save_png as _save_png, slug
from .pages import nav_entries, render_analyses, saved_analyses

__all__ = ["RESULTS", "load_results", "render", "render_analyses", "rerender", "save_results", "slug"]

RESULTS = "results"
_MARKER = ".zfcore-report"
_CELL = 56  # smallest on-screen side of one projection or patch, in pixels


# ----------------------------------------------------------------- results


def save_results(out: str | os.PathLike, meta: dict, tensors: dict[str, dict]) -> Path:
    """Write ``meta`` (plain values, JSON) and each ``tensors[name]`` (tensors,
    numbers, strings) to ``out/results/``, atomically per file."""
    from ..train.checkpoint import atomic_torch_save, atomic_write_bytes

    folder = Path(out) / RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in tensors.items():
        atomic_torch_save(value, folder / f"{name}.pt")
    atomic_write_bytes(folder / "meta.json", json.dumps(meta, indent=1).encode())
    return folder


def load_results(source: str | os.PathLike) -> tuple[dict, dict[str, dict]]:
    """``(meta, tensors)`` saved by ``save_results`` in ``source`` (a report folder)."""
    folder = Path(source) / RESULTS
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"report: {os.fspath(source)!r} holds no saved results ({RESULTS}/meta.json); "
                                f"run zfcore visualize --out {os.fspath(source)} first")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"report: {os.fspath(meta_path)!r} is unreadable ({error})") from None
    tensors = {}
    for name in ("topk", "projections", "activations", "filters", "dead_units"):
        path = folder / f"{name}.pt"
        if path.is_file():
            try:
                tensors[name] = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # noqa: BLE001 - named, never unpickled beyond weights
                raise ValueError(f"report: {os.fspath(path)!r} is not a zfcore result "
                                 f"({type(error).__name__})") from None
    return meta, tensors


# ----------------------------------------------------------------- pictures


# Compositing runs in NumPy: many small images, where torch's thread pool only adds overhead.

def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return image.repeat(factor, -2).repeat(factor, -1) if factor > 1 else image


def _grid(cells, cols: int, pad: int, fill: int = 255) -> np.ndarray:
    """uint8 ``[3, h, w]`` cells -> one ``[3, H, W]`` grid."""
    c, h, w = cells[0].shape
    rows = math.ceil(len(cells) / cols)
    grid = np.full((c, rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad), fill, dtype=np.uint8)
    for i, cell in enumerate(cells):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top:top + h, left:left + w] = cell
    return grid


def _map_figure(projections: Tensor, patches: Tensor, boxes: Tensor, windows: Tensor) -> np.ndarray:
    """One feature map's Fig. 2 tile: the k projections' grid (uint8, ``display_signed``)
    beside the k patches' grid (uint8), each cell a unit's whole receptive field;
    the part of a field outside the image is blank."""
    projections, patches = projections.numpy(), patches.numpy()
    boxes, windows = boxes.numpy(), windows.numpy()
    k = projections.shape[0]
    cols = math.ceil(math.sqrt(k))
    side = max(projections.shape[-1], projections.shape[-2])
    factor = max(1, math.ceil(_CELL / side))
    proj = np.full(projections.shape, 128, dtype=np.uint8)
    patch = np.full(patches.shape, 255, dtype=np.uint8)
    for j in range(k):
        rows = slice(boxes[j, 0] - windows[j, 0], boxes[j, 2] - windows[j, 0])
        cols_ = slice(boxes[j, 1] - windows[j, 1], boxes[j, 3] - windows[j, 1])
        proj[j, :, rows, cols_] = projections[j, :, rows, cols_]
        patch[j, :, rows, cols_] = patches[j, :, rows, cols_]
    left_grid, right_grid = _grid(proj, cols, 1), _grid(patch, cols, 1)
    gap = np.full((3, left_grid.shape[1], 3), 255, dtype=np.uint8)
    return _upscale(np.concatenate((left_grid, gap, right_grid), axis=2), factor)


def _maps_grid(maps: Tensor, cols: int | None = None) -> np.ndarray:
    """A layer's maps ``[C, H, W]`` as one grey grid, scaled by the layer's maximum."""
    maps = torch.nan_to_num(maps.float().clamp_min(0))
    peak = maps.amax()
    scaled = (maps / peak * 255).round().to(torch.uint8) if peak > 0 else torch.zeros(maps.shape, dtype=torch.uint8)
    factor = max(1, math.ceil(32 / max(maps.shape[-2:])))
    cells = [_upscale(np.repeat(m[None], 3, 0), factor) for m in scaled.numpy()]
    return _grid(cells, cols or math.ceil(math.sqrt(len(cells))), 2, fill=96)


def _filters_grid(weights: Tensor, rgb: bool, max_inputs: int = 16) -> tuple[np.ndarray, str]:
    if rgb:  # each filter scaled symmetrically about grey by its own peak
        factor = max(1, math.ceil(28 / max(weights.shape[-2:])))
        cells = [_upscale(c, factor) for c in display_signed(weights).numpy()]
        return _grid(cells, math.ceil(math.sqrt(len(cells))), 2), "one RGB tile per filter, grey = 0"
    shown = weights[:, :max_inputs]
    factor = max(1, math.ceil(20 / max(weights.shape[-2:])))
    tiles = display_signed(shown[:, :, None].expand(-1, -1, 3, -1, -1)).numpy()
    cells = [_upscale(tile, factor) for row in tiles for tile in row]
    caption = (f"one row per filter, one grey tile per input channel (the first {shown.shape[1]} of "
               f"{weights.shape[1]}), grey = 0")
    return _grid(cells, shown.shape[1], 1), caption


def _training_curve(history: list[dict], path: Path) -> bool:
    rows = [r for r in history if isinstance(r, dict) and "epoch" in r]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, loss_axis = plt.subplots(figsize=(7.2, 3.2), dpi=100)
    if all("train_loss" in r for r in rows):
        loss_axis.plot(epochs, [r["train_loss"] for r in rows], "o-", color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    error_axis = loss_axis.twinx()
    if all("val_top1_error" in r for r in rows):
        error_axis.plot(epochs, [100 * r["val_top1_error"] for r in rows], "s-", color="tab:red",
                        label="val top-1 error")
    error_axis.set_ylabel("val top-1 error (%)", color="tab:red")
    error_axis.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _dead_plot(layers: list[dict], path: Path) -> bool:
    if not layers:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(layers), figsize=(7.2, 2.4), dpi=100, squeeze=False)
    for axis, row in zip(axes[0], layers):
        axis.hist([z for _, z, _ in row["units"]], bins=20, range=(0, 1), color="tab:gray")
        axis.set_title(row["name"], fontsize=9)
        axis.set_xlabel("all-zero share", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0][0].set_ylabel("maps", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ----------------------------------------------------------------- pages


def render(source: str | os.PathLike, out: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """Write the report's pages from the results saved in ``source`` (by
    ``zfcore visualize``) into ``out`` (default: ``source``); returns the path of
    ``index.html``. Nothing is recomputed."""
    from tqdm import tqdm


    meta, tensors = load_results(source)
    out = Path(out) if out is not None else Path(source)
    assets = out / "assets"
    if assets.exists():
        if not (assets / _MARKER).is_file():
            raise FileExistsError(f"report: {os.fspath(assets)!r} exists and is not a zfcore report's; "
                                  f"choose another output folder (nothing was overwritten)")
        shutil.rmtree(assets)
    assets.mkdir(parents=True)
    (assets / _MARKER).write_text("written by zfcore.report; replaced on every render\n")
    for stale in out.glob("layer-*.html"):
        stale.unlink()
    shutil.copyfile(_TEMPLATES / "style.css", out / "style.css")
    env = _environment()
    classes = [str(c) for c in meta.get("classes", [])]

    def class_name(label: int) -> str:
        return "" if label < 0 else classes[label] if label < len(classes) else str(label)

    topk, projections = tensors.get("topk", {}), tensors.get("projections", {})
    layer_names = [name for name in meta.get("layers", []) if name in projections and name in topk]
    layer_pages = [{"layer": name, "file": "layer-" + slug(name, i + 1) + ".html"} for i, name in enumerate(layer_names)]
    common = {"layer_pages": layer_pages, "has_activations": "activations" in tensors,
              "has_filters": "filters" in tensors, "has_dead": "dead_units" in tensors, "version": __version__,
              "model_name": meta.get("model", "model"), "generated": time.strftime("%Y-%m-%d %H:%M"),
              "k": meta.get("k", 9), "mode": meta.get("mode", "deconvnet"),
              "analyses": nav_entries(saved_analyses(source))}

    def page(template: str, file: str, **values) -> None:
        html = env.get_template(template).render(**common, current=file, **values)
        (out / file).write_text(html, encoding="utf-8")

    total = sum(int(topk[n]["values"].shape[0]) for n in layer_names)
    bar = tqdm(total=total, desc="report", unit="map", disable=not progress, leave=False)
    try:
        for entry, name in zip(layer_pages, layer_names):
            found, projected = topk[name], projections[name]
            stem = entry["file"][:-5]
            (assets / stem).mkdir()
            maps = []
            for c in range(found["values"].shape[0]):
                figure = _map_figure(projected["projections"][c], projected["patch_images"][c], projected["boxes"][c],
                                     projected["windows"][c])
                file = f"assets/{stem}/map-{c:04d}.png"
                width, height = _save_png((figure), out / file)
                values = [float(v) for v in found["values"][c]]
                labels = found.get("labels")
                items = [(v, class_name(int(labels[c, j])) if labels is not None else "", int(found["images"][c, j]))
                         for j, v in enumerate(values)]
                channel = int(found["channels"][c]) if "channels" in found else c
                maps.append({"channel": channel, "image": file, "width": width, "height": height, "top": values, "units": items,
                             })
                bar.update(1)
            spec = {row["name"]: row for row in meta.get("spec", [])}
            page("layer.html", entry["file"], title=f"{name}: top-{common['k']} projections", layer=name,
                 channels=len(maps), maps=maps, images=meta.get("images", 0),
                 size=spec.get(name, {}).get("size", ["?"]))
    finally:
        bar.close()

    if "activations" in tensors:
        acts = tensors["activations"]
        image = acts["image"]
        factor = max(1, math.ceil(128 / image.shape[-1]))
        _save_png(_upscale(image.numpy(), factor), assets / "activations-input.png")
        rows = []
        for i, (name, maps) in enumerate(acts["maps"].items()):
            if maps.dim() == 1:
                maps = maps[:, None, None]
            file = f"assets/activations-{slug(name, i + 1)}.png"
            width, height = _save_png((_maps_grid(maps)), out / file)
            rows.append({"name": name, "shape": list(maps.shape), "max": float(maps.max()), "image": file,
                         "width": width, "height": height})
        page("activations.html", "activations.html", title="activations", layers=rows,
             image="assets/activations-input.png", image_size=image.shape[-1] * factor,
             index=int(acts["index"]), label=class_name(int(acts["label"])))

    if "filters" in tensors:
        shown = []
        for i, (name, f) in enumerate(tensors["filters"].items()):
            grid, caption = _filters_grid(f["weights"], bool(f["rgb"]))
            file = f"assets/filters-{slug(name, i + 1)}.png"
            width, height = _save_png((grid), out / file)
            scores = f["high_frequency"]
            order = torch.argsort(scores).tolist()
            shown.append({"layer": name, "shape": list(f["weights"].shape), "image": file, "width": width,
                          "height": height, "caption": caption, "median": float(scores.median()),
                          "scores": [(i_, float(scores[i_])) for i_ in order]})
        page("filters.html", "filters.html", title="filters", filters=shown)

    if "dead_units" in tensors:
        rows = []
        for name, d in tensors["dead_units"].items():
            zero, mean = d["zero_fraction"], d["mean"]
            dead = [int(c) for c in torch.nonzero(zero == 1).flatten()]
            rows.append({"name": name, "channels": len(zero), "dead": dead, "mean_zero": float(zero.mean()),
                         "units": [(c, float(zero[c]), float(mean[c])) for c in range(len(zero))]})
        plot = "assets/dead-units.png" if _dead_plot(rows, assets / "dead-units.png") else None
        page("dead_units.html", "dead_units.html", title="dead units", layers=rows, plot=plot,
             images=int(next(iter(tensors["dead_units"].values()))["images"]) if rows else 0)

    history = meta.get("history") or []
    curve = "assets/training.png" if _training_curve(history, assets / "training.png") else None
    pages = {name: entry["file"] for entry, name in zip(layer_pages, layer_names)}
    spec_rows = [{**row, "page": pages.get(row["name"])} for row in meta.get("spec", [])]
    last = history[-1] if history else {}
    accuracy = 1 - last["val_top1_error"] if "val_top1_error" in last else None
    page("index.html", "index.html", title=f"{common['model_name']}: what its units see", spec=spec_rows,
         classes=classes, input_shape=meta.get("input_shape", []), checkpoint=meta.get("checkpoint", ""),
         accuracy=accuracy, data=meta.get("data", ""), images=meta.get("images", 0), skipped=meta.get("skipped", 0),
         curve=curve, epochs=len(history), timings=meta.get("timings", {}), preprocess=meta.get("preprocess", ""),
         maps=meta.get("maps"))
    render_analyses(source, out)
    return out / "index.html"


def rerender(out: str | os.PathLike, *, progress: bool = True) -> None:
    """The whole report folder re-rendered when it holds ``zfcore visualize``
    results (so the overview links every analysis), else the analysis pages."""
    if (Path(out) / RESULTS / "meta.json").is_file():
        render(out, progress=progress)
    else:
        render_analyses(out)

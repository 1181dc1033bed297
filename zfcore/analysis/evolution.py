"""The paper's Fig. 4: how features evolve through training.

For every snapshot a ``zfcore train`` run kept (``snapshots/epoch-NNN.pt``),
each chosen feature map's strongest activation over a fixed image set is found
(``top_k`` with ``k=1``) and projected to pixel space by the deconvnet
(``top_k_projections``: the unit's receptive-field window). Beside the
pictures, two numbers say when a layer stops changing: how far its filters move
between snapshots, and how many of its maps already pick the image they pick at
the end.

Where the paper is silent, this module chooses (and the docstrings repeat):

* The image set is the caller's (``dataset``); the paper uses the training set,
  ``zfcore`` reports usually pass the embedded validation images.
* Which maps. The paper shows "a randomly chosen subset"; here, by default, the
  ``maps_per_layer`` maps of each layer whose strongest activation over the
  image set is largest *at the final snapshot* (ties to the smaller index), so
  the strip ends on a well-formed feature. ``channels`` names maps explicitly.
* Filter change between consecutive snapshots ``p < e`` of a layer with weight
  ``W`` (its ``weight`` tensor, bias excluded): the relative Frobenius norm
  ``||W_e - W_p||_F / ||W_p||_F`` (float64), stored at ``e`` (NaN at the first
  snapshot). Snapshots are unevenly spaced (1, 2, 5, 10, ...), so the *rate*
  ``change / (e - p)`` (the interval's mean change per epoch) is what is
  compared with a threshold.
* Settling epoch of a layer: the first snapshot epoch after which every later
  interval's rate is below ``settle_threshold`` (default 0.02: 2% of the
  layer's weight norm per epoch); ``None`` when the last interval is still above
  it (not settled by the last snapshot). The initial weights are not saved, so
  the first interval starts at the first snapshot.
* Agreement with the final epoch (``final_agreement``): per layer and
  snapshot, the share of *all* the layer's maps whose strongest image at that
  snapshot is the one at the final snapshot (1 at the final snapshot by
  definition). It measures when the maps' selection stops changing, the
  quantity Fig. 4 shows by eye.
* The final epoch is the last snapshot; ``model.pt`` is not read (the default
  snapshot epochs of ``zfcore train`` end at the run's last epoch).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._render import begin
from ._stream import check_layers
from .projections import top_k_projections
from .topk import TopK, top_k

__all__ = ["Evolution", "feature_evolution", "filter_change", "render", "settling_epoch", "snapshot_paths"]

_SNAPSHOT = re.compile(r"epoch-(\d+)\.pt")
_CELL = 56  # smallest on-screen side of one projection, in pixels


@dataclass
class Evolution:
    """Feature evolution over a run's snapshots (``E`` epochs, ``M_l`` chosen
    maps of layer ``l``, ``C_l`` maps in all).

    Attributes:
        run: the run folder.
        epochs: the snapshot epochs, ascending.
        layers: the layers analysed, in forward order.
        channels: ``{layer: [map index] * M_l}``, the maps shown.
        chosen_by: ``{layer: "final" | "given"}``: strongest at the final
            snapshot, or named by the caller.
        values: ``{layer: Tensor[E, M_l]}``, each map's strongest activation.
        images: ``{layer: Tensor[E, M_l]}`` (int64), the dataset index of the image.
        positions: ``{layer: Tensor[E, M_l, 2]}`` (int64), the unit's (h, w).
        projections: ``{layer: Tensor[E, M_l, 3, sh, sw]}``, the unit's
            projection over its whole receptive field (model input space; the
            part outside the image is 0).
        boxes: ``{layer: Tensor[E, M_l, 4]}``, the field clipped to the image
            (top, left, bottom, right, end-exclusive).
        windows: ``{layer: Tensor[E, M_l, 2]}``, the window's top-left corner.
        maxima: ``{layer: Tensor[E, C_l]}``, every map's strongest activation.
        top_images: ``{layer: Tensor[E, C_l]}``, every map's strongest image.
        filter_change: ``{layer: Tensor[E]}`` (float64), the relative change of
            the weights since the previous snapshot, NaN at the first.
        settling: ``{layer: int | None}``, the settling epoch.
        settle_threshold: the per-epoch rate below which a layer has settled.
        mode: the projection mode.
        dataset_size: the number of images searched.
    """

    run: str
    epochs: list[int]
    layers: list[str]
    channels: dict[str, list[int]]
    chosen_by: dict[str, str]
    values: dict[str, Tensor]
    images: dict[str, Tensor]
    positions: dict[str, Tensor]
    projections: dict[str, Tensor]
    boxes: dict[str, Tensor]
    windows: dict[str, Tensor]
    maxima: dict[str, Tensor]
    top_images: dict[str, Tensor]
    filter_change: dict[str, Tensor]
    settling: dict[str, int | None]
    settle_threshold: float
    mode: str
    dataset_size: int

    @property
    def change_rate(self) -> dict[str, Tensor]:
        """``{layer: Tensor[E]}``: ``filter_change`` per epoch of its interval."""
        gaps = torch.tensor([math.nan] + [e - p for p, e in zip(self.epochs, self.epochs[1:])], dtype=torch.float64)
        return {name: self.filter_change[name] / gaps for name in self.layers}

    @property
    def final_agreement(self) -> dict[str, Tensor]:
        """``{layer: Tensor[E]}``: the share of the layer's maps whose strongest
        image is the one they have at the final snapshot."""
        return {name: (t == t[-1:]).double().mean(1) for name, t in self.top_images.items()}

    def as_dict(self) -> dict:
        return {"run": self.run, "epochs": list(self.epochs), "layers": list(self.layers),
                "channels": {k: list(v) for k, v in self.channels.items()}, "chosen_by": dict(self.chosen_by),
                "values": dict(self.values), "images": dict(self.images), "positions": dict(self.positions),
                "projections": dict(self.projections), "boxes": dict(self.boxes), "windows": dict(self.windows),
                "maxima": dict(self.maxima), "top_images": dict(self.top_images),
                "filter_change": dict(self.filter_change), "change_rate": self.change_rate,
                "final_agreement": self.final_agreement, "settling": dict(self.settling),
                "settle_threshold": self.settle_threshold, "mode": self.mode, "dataset_size": self.dataset_size}

    @classmethod
    def from_dict(cls, d: dict) -> Evolution:
        tensors = ("values", "images", "positions", "projections", "boxes", "windows", "maxima", "top_images",
                   "filter_change")
        return cls(run=str(d["run"]), epochs=[int(e) for e in d["epochs"]], layers=[str(n) for n in d["layers"]],
                   channels={str(k): [int(c) for c in v] for k, v in d["channels"].items()},
                   chosen_by={str(k): str(v) for k, v in d["chosen_by"].items()},
                   **{name: dict(d[name]) for name in tensors},
                   settling={str(k): (None if v is None else int(v)) for k, v in d["settling"].items()},
                   settle_threshold=float(d["settle_threshold"]), mode=str(d["mode"]),
                   dataset_size=int(d["dataset_size"]))


# ----------------------------------------------------------------- pieces


def snapshot_paths(run: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(epoch, path)]`` of ``run/snapshots/epoch-NNN.pt``, by epoch."""
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"feature_evolution: run must be a run folder of zfcore train; {os.fspath(run)!r} "
                         f"is not a folder")
    folder = run / "snapshots"
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _SNAPSHOT.fullmatch(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    if not found:
        raise ValueError(f"feature_evolution: the run folder {os.fspath(run)!r} holds no snapshots "
                         f"(snapshots/epoch-NNN.pt, written by zfcore train at its snapshot epochs)")
    epochs = [e for e, _ in found]
    if len(set(epochs)) != len(epochs):  # epoch-1.pt beside epoch-001.pt
        raise ValueError(f"feature_evolution: {os.fspath(folder)!r} holds two snapshots of one epoch")
    return sorted(found)


def filter_change(previous: Tensor, current: Tensor) -> float:
    """``||current - previous||_F / ||previous||_F`` in float64."""
    previous, current = previous.detach().double(), current.detach().double()
    return float((current - previous).norm() / previous.norm())


def settling_epoch(epochs: Sequence[int], change: Sequence[float], threshold: float) -> int | None:
    """The first of ``epochs`` after which every later interval's rate
    ``change[i] / (epochs[i] - epochs[i - 1])`` is below ``threshold``; ``None``
    when the last interval's is not (or there is no interval). ``change[0]`` is
    ignored (no interval ends at the first snapshot)."""
    settled = None
    for i in range(len(epochs) - 1, 0, -1):
        rate = float(change[i]) / (epochs[i] - epochs[i - 1])
        if not rate < threshold:  # NaN counts as not settled
            break
        settled = epochs[i - 1]
    return settled


def _load_snapshot(path: Path, epoch: int, device):
    from ..load import load

    try:
        return load(path, device=device)
    except ValueError as error:
        raise ValueError(f"feature_evolution: snapshot of epoch {epoch}: {error}") from None


def _check_int(name: str, value, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"feature_evolution: {name} must be an int >= {low} (got {value!r})")


def _check_channels(channels, layers: list[str], counts: dict[str, int]) -> dict[str, list[int]]:
    if channels is None:
        return {}
    if not isinstance(channels, dict):
        raise ValueError(f"feature_evolution: channels must be a dict {{layer: [map index, ...]}} "
                         f"(got {type(channels).__name__})")
    checked = {}
    for layer, maps in channels.items():
        if layer not in layers:
            raise ValueError(f"feature_evolution: channels names layer {layer!r}, which is not in layers "
                             f"({', '.join(layers)})")
        maps = maps.tolist() if isinstance(maps, Tensor) else maps
        if isinstance(maps, str) or not isinstance(maps, Sequence) or not maps or \
                any(isinstance(c, bool) or not isinstance(c, int) for c in maps):
            raise ValueError(f"feature_evolution: channels[{layer!r}] must be a non-empty list of map indices "
                             f"(got {maps!r})")
        maps = [int(c) for c in maps]
        bad = [c for c in maps if not 0 <= c < counts[layer]]
        if bad or len(set(maps)) != len(maps):
            raise ValueError(f"feature_evolution: channels[{layer!r}] must be distinct map indices in "
                             f"0..{counts[layer] - 1} (got {maps})")
        checked[layer] = maps
    return checked


def _strongest(found: TopK, count: int) -> list[int]:
    """The ``count`` maps with the largest maximum, ties to the smaller index."""
    order = torch.argsort(found.values[:, 0], descending=True, stable=True)
    return order[:count].tolist()


# ----------------------------------------------------------------- analysis


def feature_evolution(run: str | os.PathLike, dataset, *, layers: Sequence[str] | str | None = None,
                      maps_per_layer: int = 8, channels: dict[str, Sequence[int]] | None = None,
                      batch_size: int = 64, mode: str = "deconvnet", settle_threshold: float = 0.02,
                      device: str | torch.device = "cpu", progress: bool = True) -> Evolution:
    """The paper's Fig. 4: each chosen map's strongest activation over
    ``dataset`` and its deconvnet projection at every snapshot of a run, with
    the change of each layer's filters between snapshots.

    Each snapshot is read by ``zfcore.load`` (``torch.load(weights_only=True)``;
    the model rebuilt from its config). Every map's strongest unit is found
    with ``top_k(k=1)`` (value descending, ties to the smaller image index, then
    the first row-major position); the chosen ones are projected with
    ``top_k_projections``.

    Args:
        run: a run folder of ``zfcore train`` (``snapshots/epoch-NNN.pt``).
        dataset: a map-style Dataset of ``(image, label)``, images
            ``Tensor[3, H, W]`` in the model's input space (e.g.
            ``zfcore.visualize.open_dataset``), the same at every epoch.
        layers: Conv2d or Linear layers (default: every conv layer).
        maps_per_layer: maps shown per layer when ``channels`` does not name them:
            those strongest at the final snapshot (the paper shows a random subset).
        channels: ``{layer: [map index, ...]}``, the maps to show for those layers.
        batch_size: images per forward (projections go ``4 * batch_size`` at once).
        mode: ``"deconvnet"``, ``"guided"`` or ``"gradient"``.
        settle_threshold: the per-epoch relative filter change under which a layer
            counts as settled (``settling_epoch``).
        device: where the snapshots' models run.
        progress: a tqdm bar over the snapshots.

    Returns:
        An ``Evolution``.

    Example:
        >>> loaded = zfcore.load("runs/small/model.pt")
        >>> evolution = feature_evolution("runs/small", open_dataset(loaded, "synthetic"))
        >>> evolution.filter_change["conv1"], evolution.settling
    """
    from ..deconv import MODES, Deconvnet

    snapshots = snapshot_paths(run)
    if mode not in MODES:
        raise ValueError(f"feature_evolution: mode must be one of {', '.join(MODES)} (got {mode!r})")
    _check_int("maps_per_layer", maps_per_layer)
    _check_int("batch_size", batch_size)
    if isinstance(settle_threshold, bool) or not isinstance(settle_threshold, int | float) or not settle_threshold > 0:
        raise ValueError(f"feature_evolution: settle_threshold must be a number > 0 (got {settle_threshold!r})")
    try:
        size = len(dataset)
    except TypeError:
        raise ValueError(f"feature_evolution: dataset must be a map-style Dataset with a length "
                         f"(got {type(dataset).__name__})") from None
    if size == 0:
        raise ValueError("feature_evolution: the dataset is empty")

    epochs = [e for e, _ in snapshots]
    final = _load_snapshot(snapshots[-1][1], epochs[-1], device)
    model = final.model
    first = dataset[0]
    image = first[0] if isinstance(first, list | tuple) and first else None
    if not isinstance(image, Tensor) or tuple(image.shape) != final.input_shape:
        got = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"feature_evolution: dataset items must be (image, label) with images "
                         f"Tensor{list(final.input_shape)} in the model's input space (got {got})")
    modules = dict(model.named_modules())
    if layers is None:
        layers = [name for name, module in modules.items() if isinstance(module, nn.Conv2d)]
    layers = check_layers(model, layers, "feature_evolution")
    for name in layers:
        if not isinstance(modules[name], nn.Conv2d | nn.Linear):
            raise ValueError(f"feature_evolution: layer {name!r} is a {type(modules[name]).__name__}; layers "
                             f"must be Conv2d or Linear (their filters are compared)")
    order = {name: i for i, name in enumerate(modules)}
    layers.sort(key=order.__getitem__)
    counts = {name: modules[name].weight.shape[0] for name in layers}
    given = _check_channels(channels, layers, counts)

    def strongest(loaded) -> dict[str, TopK]:
        return top_k(loaded.model, dataset, layers, k=1, batch_size=batch_size, progress=False)

    def weights(loaded) -> dict[str, Tensor]:
        named = dict(loaded.model.named_modules())
        return {name: named[name].weight.detach().to("cpu", torch.float64, copy=True) for name in layers}

    final_found = strongest(final)
    chosen = {name: given.get(name) or _strongest(final_found[name], min(maps_per_layer, counts[name]))
              for name in layers}
    rows = {name: torch.tensor(chosen[name], dtype=torch.long) for name in layers}
    per_epoch = {key: {name: [] for name in layers}
                 for key in ("values", "images", "positions", "projections", "boxes", "windows", "maxima",
                             "top_images")}
    change = {name: [math.nan] for name in layers}
    previous = None
    bar = tqdm(snapshots, desc="feature evolution", unit="snapshot", disable=not progress, leave=False)
    try:
        for epoch, path in bar:
            loaded = final if epoch == epochs[-1] else _load_snapshot(path, epoch, device)
            if loaded.config.get("fingerprint") != final.config.get("fingerprint") or \
                    len(loaded.classes) != len(final.classes):
                raise ValueError(f"feature_evolution: the snapshot of epoch {epoch} ({os.fspath(path)!r}) is of "
                                 f"another model than the last snapshot's ({loaded.config.get('fingerprint')} vs "
                                 f"{final.config.get('fingerprint')})")
            found = final_found if loaded is final else strongest(loaded)
            net = Deconvnet(loaded.model, loaded.input_shape)
            current = weights(loaded)
            for name in layers:
                projected = top_k_projections(loaded.model, dataset, found[name], mode=mode,
                                              batch_size=4 * batch_size, net=net, progress=False)[name]
                r, got = rows[name], per_epoch
                got["values"][name].append(found[name].values[r, 0])
                got["images"][name].append(found[name].images[r, 0])
                got["positions"][name].append(found[name].positions[r, 0])
                got["projections"][name].append(projected.projections[r, 0])
                got["boxes"][name].append(projected.boxes[r, 0])
                got["windows"][name].append(projected.windows[r, 0])
                got["maxima"][name].append(found[name].values[:, 0])
                got["top_images"][name].append(found[name].images[:, 0])
                if previous is not None:
                    change[name].append(filter_change(previous[name], current[name]))
            previous = current
            if loaded is not final:
                del loaded, net
    finally:
        bar.close()
    stacked = {key: {name: torch.stack(parts) for name, parts in value.items()} for key, value in per_epoch.items()}
    changes = {name: torch.tensor(change[name], dtype=torch.float64) for name in layers}
    return Evolution(run=os.fspath(run), epochs=epochs, layers=layers, channels=chosen,
                     chosen_by={name: "given" if name in given else "final" for name in layers},
                     **stacked, filter_change=changes,
                     settling={name: settling_epoch(epochs, change[name], settle_threshold) for name in layers},
                     settle_threshold=float(settle_threshold), mode=mode, dataset_size=size)


# ----------------------------------------------------------------- rendering


def _strip_grid(result: Evolution, layer: str):
    """One layer's maps (rows) x epochs (columns) of projections, uint8 ``[H, W, 3]``,
    and the centres of the columns and rows in its pixels."""
    import numpy as np

    from ..report import display_signed

    shown = display_signed(result.projections[layer]).numpy()   # [E, M, 3, sh, sw], grey = 0
    e, m, _, sh, sw = shown.shape
    factor = max(1, math.ceil(_CELL / max(sh, sw)))
    ch, cw, pad = sh * factor, sw * factor, 2
    grid = np.full((m * ch + (m + 1) * pad, e * cw + (e + 1) * pad, 3), 255, dtype=np.uint8)
    for i in range(e):
        for j in range(m):
            cell = shown[i, j].repeat(factor, -2).repeat(factor, -1).transpose(1, 2, 0)
            top, left = pad + j * (ch + pad), pad + i * (cw + pad)
            grid[top:top + ch, left:left + cw] = cell
    cols = [pad + i * (cw + pad) + cw / 2 for i in range(e)]
    rows = [pad + j * (ch + pad) + ch / 2 for j in range(m)]
    return grid, cols, rows


def _claims(result: Evolution) -> list[dict]:
    """The paper: lower layers converge within a few epochs, upper ones later."""
    if len(result.layers) < 2 or len(result.epochs) < 2:
        return []
    low, high = result.layers[0], result.layers[-1]
    agreement = result.final_agreement
    mean = {name: float(agreement[name][:-1].mean()) for name in result.layers}
    rate = result.change_rate
    last = {name: float(rate[name][-1]) for name in result.layers}
    settled = [result.settling[name] for name in result.layers]
    finite = [math.inf if s is None else s for s in settled]
    shown = ", ".join(f"{name} {mean[name]:.2f}" for name in result.layers)
    return [
        {"claim": f"Lower layers settle earlier (Fig. 4): before the final epoch, more of {low}'s maps than of "
                  f"{high}'s already have their final strongest image",
         "holds": mean[low] > mean[high],
         "detail": f"share of maps whose strongest image is the final one, mean over epochs "
                   f"{', '.join(map(str, result.epochs[:-1]))}: {shown}"},
        {"claim": f"Lower layers' filters settle earlier: over the last interval ({result.epochs[-2]} to "
                  f"{result.epochs[-1]}) {low}'s filters change less, relative to their norm, than {high}'s",
         "holds": last[low] < last[high],
         "detail": "relative filter change per epoch over the last interval: "
                   + ", ".join(f"{name} {last[name]:.4f}" for name in result.layers)},
        {"claim": f"The settling epoch (relative filter change below {result.settle_threshold:g} per epoch from "
                  f"then on) does not decrease with depth",
         "holds": all(a <= b for a, b in zip(finite, finite[1:])),
         "detail": ", ".join(f"{name}: {'not settled' if s is None else f'epoch {s}'}"
                             for name, s in zip(result.layers, settled))},
    ]


def render(result: Evolution | dict, assets: Path) -> dict:
    """Fig. 4 (one strip of projections per map, epochs as columns, one PNG per
    layer), the filter change and the final-image agreement against epoch, the
    tables and the claims; PNGs written into ``assets``."""
    plt, result, assets = begin(result, Evolution, assets)
    figures = []
    for index, layer in enumerate(result.layers, 1):
        grid, cols, rows = _strip_grid(result, layer)
        dpi = 100
        fig = plt.figure(figsize=((grid.shape[1] + 90) / dpi, (grid.shape[0] + 60) / dpi), dpi=dpi)
        ax = fig.add_axes((70 / (grid.shape[1] + 90), 10 / (grid.shape[0] + 60),
                           grid.shape[1] / (grid.shape[1] + 90), grid.shape[0] / (grid.shape[0] + 60)))
        ax.imshow(grid, interpolation="nearest")
        ax.set_xticks(cols, [str(e) for e in result.epochs], fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks(rows, [f"map {c}" for c in result.channels[layer]], fontsize=7)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel("epoch", fontsize=7)
        ax.xaxis.set_label_position("top")
        file = f"evolution-maps-{index}.png"
        fig.savefig(assets / file, dpi=dpi)
        plt.close(fig)
        how = ("strongest at the final epoch" if result.chosen_by[layer] == "final" else "chosen by the caller")
        figures.append({"file": file, "caption": f"{layer}: the strongest activation of each map ({how}; rows) over "
                                                 f"the {result.dataset_size} images at each snapshot epoch "
                                                 f"(columns), projected by the {result.mode} over the unit's "
                                                 f"receptive field; grey = 0, each scaled by its own peak."})

    rate, agreement = result.change_rate, result.final_agreement
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for layer in result.layers:
        left.plot(result.epochs[1:], rate[layer][1:].tolist(), marker="o", label=layer)
        right.plot(result.epochs, agreement[layer].tolist(), marker="o", label=layer)
    left.axhline(result.settle_threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
    if len(result.epochs) > 1 and all(bool((rate[n][1:] > 0).all()) for n in result.layers):
        left.set_yscale("log")
    left.set_xlabel("epoch (end of the interval)")
    left.set_ylabel("||W_e - W_prev|| / ||W_prev|| per epoch")
    left.set_title("relative filter change", fontsize=10)
    right.set_xlabel("epoch")
    right.set_ylabel("share of maps")
    right.set_ylim(-0.02, 1.02)
    right.set_title("strongest image = the final epoch's", fontsize=10)
    for ax in (left, right):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(assets / "evolution-change.png")
    plt.close(fig)
    figures.append({"file": "evolution-change.png",
                    "caption": "Left: the relative change of each layer's filters between consecutive snapshots, "
                               "per epoch of the interval (dashed: the settling threshold). Right: the share of "
                               "each layer's maps whose strongest image is already the one of the final epoch."})

    intervals = [f"{p}-{e}" for p, e in zip(result.epochs, result.epochs[1:])]
    change_rows = [[layer] + [round(float(v), 5) for v in result.filter_change[layer][1:]]
                   + [round(float(v), 5) for v in rate[layer][1:]]
                   + ["not settled" if result.settling[layer] is None else str(result.settling[layer])]
                   for layer in result.layers]
    agreement_rows = [[layer] + [round(float(v), 3) for v in agreement[layer]] for layer in result.layers]
    tables = [{"caption": "Relative filter change ||W_e - W_prev||_F / ||W_prev||_F between consecutive snapshots, "
                          f"the same per epoch, and the settling epoch (per-epoch change below "
                          f"{result.settle_threshold:g} from then on).",
               "header": ["layer"] + [f"change {i}" for i in intervals] + [f"per epoch {i}" for i in intervals]
                         + ["settling epoch"],
               "rows": change_rows},
              {"caption": "Share of each layer's maps whose strongest image at the epoch is the one of the final "
                          "epoch.",
               "header": ["layer"] + [f"epoch {e}" for e in result.epochs], "rows": agreement_rows}]
    intro = (f"The paper's Fig. 4: how features evolve through training. At each snapshot epoch "
             f"({', '.join(map(str, result.epochs))}) of the run, each shown map's strongest activation over a "
             f"fixed set of {result.dataset_size} images is found and projected to pixel space. The paper uses "
             f"the training set and a random subset of the maps; here the maps shown are, unless chosen, the "
             f"strongest of each layer at the final epoch. The filter change of a layer is the relative "
             f"Frobenius norm of its weights' change between snapshots; the paper reports that lower layers "
             f"converge within a few epochs and upper layers only after 40-50.")
    return {"title": "Feature evolution during training (Fig. 4)", "intro": intro, "figures": figures,
            "tables": tables, "claims": _claims(result)}

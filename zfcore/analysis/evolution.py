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
from torch.utils.data import TensorDataset
from tqdm import tqdm

from ..deconv import MODES, Deconvnet
from ..load import PreparedDataset, load
from ._args import check_choice, check_dataset, check_layers, check_positive_float, check_positive_int
from .projections import top_k_projections
from .registry import Analysis
from .result import Result
from .topk import TopK, top_k

__all__ = ["ANALYSIS", "Evolution", "feature_evolution", "filter_change", "run", "settling_epoch", "snapshot_paths"]

_SNAPSHOT = re.compile(r"epoch-(\d+)\.pt")


@dataclass
class Evolution(Result):
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

    def to_plain(self) -> dict:
        """The fields, with ``change_rate`` and ``final_agreement`` beside them
        (as saved before; ``from_plain`` ignores them)."""
        return {**super().to_plain(), "change_rate": self.change_rate, "final_agreement": self.final_agreement}


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
    try:
        return load(path, device=device)
    except ValueError as error:
        raise ValueError(f"feature_evolution: snapshot of epoch {epoch}: {error}") from None


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
            ``zfcore.load.open_dataset``), the same at every epoch.
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
        >>> subject = zfcore.load("runs/small/model.pt")
        >>> evolution = feature_evolution("runs/small", open_dataset(subject, "synthetic"))
        >>> evolution.filter_change["conv1"], evolution.settling
    """
    caller = "feature_evolution"
    snapshots = snapshot_paths(run)
    check_choice(mode, MODES, "mode", caller)
    check_positive_int(maps_per_layer, "maps_per_layer", caller)
    check_positive_int(batch_size, "batch_size", caller)
    check_positive_float(settle_threshold, "settle_threshold", caller)
    size = check_dataset(dataset, caller)

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


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[Evolution, dict]:
    """Fig. 4 over the snapshots of ``subject``'s run folder, on ``dataset``'s
    images brought to the model's input (read lazily): the 8 strongest maps
    per conv layer (``quick``: 4). ``seed`` is unused."""
    images = PreparedDataset(TensorDataset(dataset.images, dataset.labels), subject, list(dataset.classes),
                             dataset.description)
    return feature_evolution(subject.run_folder, images, maps_per_layer=4 if quick else 8, progress=progress), {}


ANALYSIS = Analysis(
    name="evolution", group="paper", order=50, demo=True, result=Evolution, run=run,
    description="feature evolution over the run's snapshots (Fig. 4)",
    needs=frozenset({"subject", "labels", "snapshots"}),
    claims=("lower layers settle earlier: more of their maps already have their final strongest image",
            "lower layers' filters change less over the last interval",
            "the settling epoch does not decrease with depth"))

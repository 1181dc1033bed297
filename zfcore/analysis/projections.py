"""The paper's Fig. 2: each top-k unit projected to pixel space by the
deconvnet, beside the image patch under its receptive field.

The units of every requested layer are grouped by image: each distinct image
is run forward once, to the deepest layer it holds a unit of, and the records
of that forward (switches; masks in the guided and gradient modes) serve every
one of its units, of every layer. With a ``ForwardRecords`` handed to ``top_k``
the top-k pass itself keeps those records for the images its running top-k
holds, and the projections run no forward at all for them: the whole job is
one pass over the data plus the way down.

A single unit's projection is nonzero only inside the unit's receptive field,
so what is kept is that field's window (the unit's ``LayerSpec`` box, aligned
as if unclipped): the projection's and the image's pixels inside it. Along a
dimension where the field is as large as the image or larger, the window is
the image's extent (corner 0): nothing outside the image is ever nonzero.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..deconv import Deconvnet, Request
from ..deconv.engine import MODES, Recording
from .result import Result
from .topk import TopK

__all__ = ["ForwardRecords", "Projections", "project_top_k", "top_k_projections"]

DEFAULT_MAX_BYTES = 2 << 30


@dataclass
class Projections(Result):
    """One layer's projections, indexed like its ``TopK``: ``projections[C, k,
    3, sh, sw]`` and ``patches[C, k, 3, sh, sw]`` (model input space) over each
    unit's receptive field (the image's whole extent along a dimension where the
    field is at least as large), ``windows[C, k, 2]`` (its top-left corner in
    input pixels, negative where the field overhangs the image), ``boxes[C, k,
    4]`` (the field clipped to the image: top, left, bottom, right,
    end-exclusive). The parts of a window outside the image are zero."""

    layer: str
    projections: Tensor
    patches: Tensor
    boxes: Tensor
    windows: Tensor

    def inside(self, c: int, j: int) -> tuple[slice, slice]:
        """The part of window ``(c, j)`` that lies inside the image."""
        top, left, bottom, right = self.boxes[c, j].tolist()
        wt, wl = self.windows[c, j].tolist()
        return slice(top - wt, bottom - wt), slice(left - wl, right - wl)


def _window(spec, layer: str, h: int, w: int, input_shape) -> tuple[int, int, int, int]:
    """Unit ``(h, w)``'s window: ``(top, left, height, width)`` in input pixels,
    its whole receptive field, not clipped (``top``/``left`` may be negative),
    except along a dimension where the field spans the image or more: there the
    image's extent."""
    info = spec[layer]
    _, height, width = input_shape
    if len(info.shape) != 3:
        return 0, 0, height, width
    window = []
    for position, offset, jump, size, extent in zip((h, w), info.offset, info.jump, info.size, (height, width)):
        start = int(offset + position * jump - (size - 1) / 2)
        window.append((0, extent) if size >= extent else (start, size))
    return window[0][0], window[1][0], window[0][1], window[1][1]


def _cut(maps: Tensor, corners: Tensor, at: Tensor, size, rows: Tensor | None = None) -> Tensor:
    """Windows ``[R, C, *size]`` at top-left ``at[R, 2]`` (input pixels) of
    ``maps[rows[r]]`` (default ``maps[r]``), which lie at ``corners[R or N, 2]``
    in the input: zero where a window reaches past its map."""
    n, _, height, width = maps.shape
    rows = torch.arange(n) if rows is None else rows
    offsets = at - corners[rows]  # each window's corner in its map
    if rows.equal(torch.arange(n)) and not offsets.any() and (height, width) == tuple(size):
        return maps
    pad_top, pad_left = (-offsets).clamp_min(0).amax(0).tolist() if len(offsets) else (0, 0)
    pad_bottom = max(0, int((offsets[:, 0] + size[0]).max()) - height) if len(offsets) else 0
    pad_right = max(0, int((offsets[:, 1] + size[1]).max()) - width) if len(offsets) else 0
    padded = F.pad(maps, (pad_left, pad_right, pad_top, pad_bottom))
    return torch.stack([padded[m, :, r + pad_top:r + pad_top + size[0], c + pad_left:c + pad_left + size[1]]
                        for m, (r, c) in zip(rows.tolist(), offsets.tolist())]) if len(rows) else \
        maps.new_zeros((0, maps.shape[1], *size))


@dataclass
class _Kept:
    """One image's records: the forward's (one row, no outputs), the image, and
    per layer the seeds of its units: ``values[C]`` at ``positions[C, 2]``
    (positions -1 where none was taken)."""

    recording: Recording
    image: Tensor
    seeds: dict[str, tuple[Tensor, Tensor]]
    nbytes: int

    def covers(self, layer: str, channels: list[int], positions: list[list[int]]) -> bool:
        """Whether these units of ``layer`` (maps and positions) are the ones seeded here."""
        if layer not in self.seeds:
            return False
        held = self.seeds[layer][1][channels].tolist()
        return held == positions


class ForwardRecords:
    """The deconvnet forward's records (switches; masks and gradient inputs in
    the guided and gradient modes) and the images, kept per dataset image so
    that its units go down without a second forward.

    Hand one to ``top_k(records=...)``: its pass then runs on ``net``'s forward
    and keeps the records of the images its running top-k holds (dropping
    those that leave it), within ``max_bytes``. Then hand it to
    ``top_k_projections`` / ``project_top_k`` with the same ``mode``: images
    found here are not run forward again; the others (beyond ``max_bytes``,
    another shard's, or before a resumed run) are, once each. The projections
    empty the store as they finish each image.

    Args:
        net: the ``Deconvnet`` of the model.
        mode: the projections' mode (``"deconvnet"``, ``"guided"``, ``"gradient"``).
        max_bytes: the most the kept records and images may take (default 2 GiB).

    Example:
        >>> records = ForwardRecords(net, "deconvnet")
        >>> found = top_k(model, val, ["conv2", "conv5"], k=9, records=records)
        >>> projected = top_k_projections(model, val, found, net=net, records=records)
    """

    def __init__(self, net: Deconvnet, mode: str = "deconvnet", max_bytes: int = DEFAULT_MAX_BYTES):
        if not isinstance(net, Deconvnet):
            raise ValueError(f"ForwardRecords: net must be a Deconvnet (got {type(net).__name__})")
        if mode not in MODES:
            raise ValueError(f"ForwardRecords: mode must be one of {', '.join(MODES)} (got {mode!r})")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"ForwardRecords: max_bytes must be an int >= 0 (got {max_bytes!r})")
        self.net, self.mode, self.max_bytes = net, mode, max_bytes
        self.kept: dict[int, _Kept] = {}
        self.nbytes = 0
        self.refused = 0  # images not kept for lack of room
        self._batch = None

    def __len__(self) -> int:
        return len(self.kept)

    def __contains__(self, index: int) -> bool:
        return index in self.kept

    def add(self, index: int, recording: Recording, image: Tensor, seeds: dict[str, tuple[Tensor, Tensor]]) -> bool:
        """Keep one image's records (``recording``: one row); False where there is no room."""
        self.drop(index)
        nbytes = recording.nbytes + image.untyped_storage().nbytes() + sum(
            v.untyped_storage().nbytes() + p.untyped_storage().nbytes() for v, p in seeds.values())
        if self.nbytes + nbytes > self.max_bytes:
            self.refused += 1
            return False
        self.kept[index] = _Kept(recording, image, seeds, nbytes)
        self.nbytes += nbytes
        return True

    def drop(self, index: int) -> None:
        kept = self.kept.pop(index, None)
        if kept is not None:
            self.nbytes -= kept.nbytes

    def tap(self, layers: Sequence[str], reduce: dict):
        """For ``top_k``: a context manager whose ``tap(images)`` runs ``net``'s
        forward, records, and returns ``{layer: reduce[layer](output)}``."""
        return _RecordingTap(self, list(layers), reduce)

    def keep(self, indices: Tensor, held: dict[str, Tensor]) -> None:
        """For ``top_k``, after each batch: keep the batch's images that the
        running top-k holds (``held``: per layer, the dataset indices ``[C, k]``
        it holds), with the seeds of the maps that hold them; drop the kept
        images it no longer holds."""
        recording, images, reduced = self._batch
        self._batch = None
        every = set(torch.cat([t.reshape(-1) for t in held.values()]).tolist())
        for index in [i for i in self.kept if i not in every]:
            self.drop(index)
        for row, index in enumerate(indices.tolist()):
            if index not in every:
                continue
            seeds = {}
            for name, (values, positions) in reduced.items():
                mine = (held[name] == index).any(1)  # the maps whose top-k holds this image
                seeds[name] = (values[row].clone(), torch.where(mine[:, None], positions[row], -1))
            self.add(index, recording.select([row], outputs=False), images[row].clone(), seeds)


class _RecordingTap:
    """``LayerTap``'s interface on the deconvnet's forward, keeping the last
    batch's records in the store for ``ForwardRecords.keep``."""

    def __init__(self, store: ForwardRecords, layers: list[str], reduce: dict):
        for name in layers:
            if name not in store.net.layers:
                raise ValueError(f"top_k: the deconvnet of records has no layer {name!r}; its layers are "
                                 f"{', '.join(store.net.layers)}")
        self.store, self.layers, self.reduce = store, layers, reduce

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.store._batch = None
        return False

    def __call__(self, images: Tensor) -> dict:
        recording = self.store.net.record(images, self.layers, self.store.mode)
        reduced = {name: self.reduce[name](recording.outputs[name]) for name in self.layers}
        recording.outputs = {}
        self.store._batch = (recording, images, reduced)
        return reduced


def _check_batch_size(batch_size) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"top_k_projections: batch_size must be a positive int (got {batch_size!r})")


def project_top_k(model: nn.Module, dataset, topk: dict[str, TopK] | TopK, mode: str = "deconvnet",
                  batch_size: int = 256, *, net: Deconvnet | None = None, progress: bool = True,
                  records: ForwardRecords | None = None,
                  channels: dict[str, Tensor] | None = None) -> Iterator[Projections]:
    """``top_k_projections`` one layer at a time: yields each layer's
    ``Projections`` in ``topk``'s order, holding one layer's windows at a time,
    while every distinct image is still run forward at most once for all
    layers (its records kept in ``records``, within its ``max_bytes``).

    Args and the rest: as ``top_k_projections``.
    """
    if isinstance(topk, TopK):
        topk = {topk.layer: topk}
    _check_batch_size(batch_size)
    if mode not in MODES:
        raise ValueError(f"top_k_projections: mode must be one of {', '.join(MODES)} (got {mode!r})")
    if records is not None:
        if not isinstance(records, ForwardRecords):
            raise ValueError(f"top_k_projections: records must be a ForwardRecords (got {type(records).__name__})")
        if records.mode != mode:
            raise ValueError(f"top_k_projections: records were kept for mode {records.mode!r}, not {mode!r}")
        if net is not None and net is not records.net:
            raise ValueError("top_k_projections: records belong to another Deconvnet than net")
        net = records.net
    if net is None:
        first = dataset[0][0]
        net = Deconvnet(model, tuple(first.shape))
    store = records if records is not None else ForwardRecords(net, mode)
    for layer in topk:
        if layer not in net.layers:
            raise ValueError(f"top_k_projections: the deconvnet cannot project {layer!r}; "
                             f"its layers are {', '.join(net.layers)}")
    spec = net.layer_spec()
    device = next(model.parameters()).device
    order = {layer: i for i, layer in enumerate(net.layers)}

    # every unit, by image: {image: {layer: ([map], [[h, w]], [row], [j])}}
    held: dict[int, dict[str, tuple[list, list, list, list]]] = {}
    for layer, found in topk.items():
        images, positions = found.images.tolist(), found.positions.tolist()
        maps = list(range(len(images)))
        if channels is not None and layer in channels:
            maps = [int(m) for m in torch.as_tensor(channels[layer]).reshape(-1).tolist()]
            if len(maps) != len(images):
                raise ValueError(f"top_k_projections: channels[{layer!r}] must name one map per row ({len(images)})")
        for c, row in enumerate(images):
            for j, index in enumerate(row):
                units = held.setdefault(index, {}).setdefault(layer, ([], [], [], []))
                units[0].append(maps[c])
                units[1].append(positions[c][j])
                units[2].append(c)
                units[3].append(j)
    layers_left = {index: len(layers) for index, layers in held.items()}  # per image

    def load(indices: list[int]) -> Tensor:
        return torch.stack([torch.as_tensor(dataset[i][0]) for i in indices]).float().to(device)

    def seeds_of(recording: Recording, row: int, units: dict) -> dict[str, tuple[Tensor, Tensor]]:
        """Each unit's activation (its seed) from a forward's outputs, at its position."""
        seeds = {}
        for layer, (maps, positions, _, _) in units.items():
            out = recording.outputs[layer][row]
            values = out.new_full((out.shape[0],), float("nan"))
            where = torch.full((out.shape[0], 2), -1, dtype=torch.long)
            c = torch.tensor(maps)
            at = torch.tensor(positions, dtype=torch.long)
            values[c.to(out.device)] = out[c.to(out.device), at[:, 0].to(out.device), at[:, 1].to(out.device)] \
                if out.dim() == 3 else out[c.to(out.device)]
            where[c] = at
            seeds[layer] = (values, where)
        return seeds

    # 1. images the store does not cover: one forward each, to the deepest layer they hold
    missing = [index for index, units in held.items() if index not in store.kept or not all(
        store.kept[index].covers(layer, u[0], u[1]) for layer, u in units.items())]
    missing.sort(key=lambda index: (max(order[layer] for layer in held[index]), index))
    unstored: set[int] = set()
    total = sum(t.values.numel() for t in topk.values())
    bar = tqdm(total=total, desc="projections", unit="unit", disable=not progress, leave=False)
    try:
        start = 0
        while start < len(missing):
            deepest = max(order[layer] for layer in held[missing[start]])
            chunk = [missing[start]]
            while start + len(chunk) < len(missing) and len(chunk) < batch_size and \
                    max(order[layer] for layer in held[missing[start + len(chunk)]]) == deepest:
                chunk.append(missing[start + len(chunk)])
            start += len(chunk)
            images = load(chunk)
            layers = sorted({layer for index in chunk for layer in held[index]}, key=order.get)
            recording = net.record(images, layers, mode)
            for row, index in enumerate(chunk):
                store.drop(index)
                if not store.add(index, recording.select([row], outputs=False), images[row].clone(),
                                 seeds_of(recording, row, held[index])):
                    unstored.add(index)
            del recording, images

        # 2. layer by layer, the units in batches of images, each unit with its image's records
        for layer, found in topk.items():
            c, k = found.values.shape
            flat = len(spec[layer].shape) != 3
            s = _window(spec, layer, 0, 0, net.input_shape)[2:]
            projections = torch.zeros((c, k, net.input_shape[0], *s))
            patches = torch.zeros_like(projections)
            boxes = torch.zeros((c, k, 4), dtype=torch.int64)
            windows = torch.zeros((c, k, 2), dtype=torch.int64)
            # the layer's units in image order, batch_size at a time
            units = [(index, ci, m, j, h, w) for index in sorted(i for i, u in held.items() if layer in u)
                     for m, (h, w), ci, j in zip(*held[index][layer])]
            for start in range(0, len(units), batch_size):
                chunk = units[start:start + batch_size]
                distinct = list(dict.fromkeys(u[0] for u in chunk))
                row_of = {index: row for row, index in enumerate(distinct)}
                fresh = [index for index in distinct if index in unstored]
                parts, values, pixels = {}, {}, {}
                if fresh:  # beyond the store's room: forward again, this layer only
                    images = load(fresh)
                    recording = net.record(images, [layer], mode)
                    for row, index in enumerate(fresh):
                        parts[index] = recording.select([row], outputs=False)
                        values[index] = seeds_of(recording, row, {layer: held[index][layer]})[layer][0]
                        pixels[index] = images[row]
                for index in distinct:
                    if index not in parts:
                        kept = store.kept[index]
                        parts[index], values[index], pixels[index] = kept.recording, kept.seeds[layer][0], kept.image
                recording = Recording.cat([parts[index] for index in distinct])
                requests = [Request(row_of[index], layer, m, None if flat else (h, w))
                            for index, ci, m, j, h, w in chunk]
                seeds = torch.stack([values[index][m] for index, ci, m, j, h, w in chunk])
                projected, corners = net.project_recorded(recording, requests, seeds)
                at = torch.tensor([_window(spec, layer, h, w, net.input_shape)[:2] for _, _, _, _, h, w in chunk],
                                  dtype=torch.long).reshape(-1, 2)
                rows_t = torch.tensor([ci for _, ci, _, _, _, _ in chunk], dtype=torch.long)
                js = torch.tensor([j for _, _, _, j, _, _ in chunk], dtype=torch.long)
                # each unit's window of the way down's output (zero outside the image and the field), and of its image
                projections[rows_t, js] = _cut(projected.cpu(), corners.cpu(), at, s)
                stacked = torch.stack([pixels[index] for index in distinct]).cpu()
                patches[rows_t, js] = _cut(stacked, torch.zeros((len(distinct), 2), dtype=torch.long), at, s,
                                           rows=torch.tensor([row_of[u[0]] for u in chunk]))
                windows[rows_t, js] = at
                boxes[rows_t, js] = torch.tensor([spec.box(layer, h, w) for _, _, _, _, h, w in chunk],
                                                 dtype=torch.long).reshape(-1, 4)
                bar.update(len(chunk))
                last = units[start + len(chunk)][0] if start + len(chunk) < len(units) else None
                for index in distinct:
                    if index != last:  # this layer's units of the image are done
                        layers_left[index] -= 1
                        if layers_left[index] == 0:
                            store.drop(index)
            yield Projections(layer, projections, patches, boxes, windows)
    finally:
        bar.close()


def top_k_projections(model: nn.Module, dataset, topk: dict[str, TopK] | TopK, mode: str = "deconvnet",
                      batch_size: int = 256, *, net: Deconvnet | None = None, progress: bool = True,
                      records: ForwardRecords | None = None,
                      channels: dict[str, Tensor] | None = None) -> dict[str, Projections]:
    """Project every unit of ``topk`` (``top_k``'s result) with the deconvnet.

    Each distinct image is run forward once for all of its units, of every
    layer in ``topk`` (none at all where ``records`` kept it from the top-k
    pass); the units then go down in batches, each with its own image's records.

    Args:
        model: the network ``topk`` was computed on.
        dataset: the same dataset (``topk.images`` index it).
        topk: ``{layer: TopK}`` or one ``TopK``.
        mode: ``"deconvnet"``, ``"guided"`` or ``"gradient"`` (``Deconvnet``'s modes).
        batch_size: the most images per forward and units per way down.
        net: a ``Deconvnet`` of ``model`` to reuse (built from the dataset's
            first image's shape otherwise).
        records: a ``ForwardRecords`` filled by the ``top_k`` pass that found
            ``topk`` (same ``mode``): its images are not run forward again.
        channels: per layer, the map number of each row of its ``TopK`` when
            the rows are a selection of the maps (default: row ``c`` is map ``c``).

    Returns:
        ``{layer: Projections}``. ``project_top_k`` gives them one layer at a time.

    Example:
        >>> records = ForwardRecords(net)
        >>> found = top_k(model, val, ["conv2", "conv5"], k=9, records=records)
        >>> projected = top_k_projections(model, val, found, net=net, records=records)
        >>> projected["conv5"].projections[3, 0]    # map 3's strongest unit, in pixel space
    """
    return {p.layer: p for p in project_top_k(model, dataset, topk, mode, batch_size, net=net, progress=progress,
                                               records=records, channels=channels)}

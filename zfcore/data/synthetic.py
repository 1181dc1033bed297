"""The embedded default dataset: procedural images of coloured shapes and
textures on cluttered backgrounds, generated from a seed (no download).

Ten classes; each object has a random position, scale, rotation and colour,
and the background carries smooth colour noise and distractor strokes, so that
a linear classifier on pixels stays far below a CNN. The ``face`` class knows
its landmarks (left eye, right eye, nose: the eyes as seen in the image, left
and right before rotation), which the correspondence experiment (paper Fig. 8,
Table 1) masks. Splits are fixed by the seed; a generated split is cached as
``.npz`` under ``$ZFCORE_CACHE`` (default ``~/.cache/zfcore``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "stripes", "checker", "dots", "face")
LANDMARKS = ("left_eye", "right_eye", "nose")
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_PER_CLASS = {"train": 500, "val": 100, "test": 100}
_VERSION = 2  # bump when the renderer or the stored arrays change, so caches are not reused


def _shape_mask(label: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mask of a class's object in its own frame (unit scale, centred)."""
    r = np.hypot(u, v)
    if label == "circle":
        return r < 0.9
    if label == "square":
        return np.maximum(abs(u), abs(v)) < 0.75
    if label == "triangle":
        return (v < 0.6) & (v > 1.7 * abs(u) - 0.9)
    if label == "star":
        return r < 0.55 + 0.35 * np.cos(5 * np.arctan2(v, u))
    if label == "cross":
        return ((abs(u) < 0.28) & (abs(v) < 0.95)) | ((abs(v) < 0.28) & (abs(u) < 0.95))
    if label == "ring":
        return (r < 0.95) & (r > 0.6)
    region = np.maximum(abs(u), abs(v)) < 0.85
    if label == "stripes":
        return region & (np.sin(u * rng.uniform(9, 13)) > 0)
    if label == "checker":
        cells = rng.uniform(2.5, 3.5)
        return region & ((np.floor(u * cells) + np.floor(v * cells)) % 2 == 0)
    if label == "dots":
        period = rng.uniform(0.45, 0.6)
        du = (u / period) % 1 - 0.5
        dv = (v / period) % 1 - 0.5
        return region & (np.hypot(du, dv) < 0.28)
    raise ValueError(f"unknown class {label!r}")


# The face, in its own frame: head ellipse, eyes, nose (the landmarks), mouth.
_FACE_PARTS = {"left_eye": (-0.33, -0.22), "right_eye": (0.33, -0.22), "nose": (0.0, 0.12)}


def _face(u, v):
    head = (u / 0.78) ** 2 + (v / 0.95) ** 2 < 1
    eyes = [np.hypot(u - x, v - y) < 0.13 for x, y in (_FACE_PARTS["left_eye"], _FACE_PARTS["right_eye"])]
    nose = (abs(u) < 0.09 * (1 - (v - _FACE_PARTS["nose"][1]) / 0.2)) & (v > -0.06) & (v < 0.22)
    mouth = (abs(np.hypot(u, v - 0.1) - 0.45) < 0.05) & (v > 0.38)
    return head, eyes[0] | eyes[1] | nose | mouth


def _box(mask: np.ndarray) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of a mask's pixels, ``x1``/``y1`` exclusive; all -1 if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.full(4, -1, np.int64)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.int64)


def render_image(label: int, size: int, rng: np.random.Generator,
                 with_box: bool = False) -> tuple[np.ndarray, ...]:
    """One image of class ``label``: ``(uint8 [3, size, size], landmarks [3, 2])``,
    landmarks as (x, y) pixel coordinates for faces, NaN otherwise; with
    ``with_box`` also the object's box ``int64 [4]`` (x0, y0, x1, y1; exclusive
    ends): the bounding box of the pixels the object paints (the head for a
    face; for textured classes the painted texture, not its square). The box is
    read from the mask, so the images do not depend on ``with_box``."""
    grid = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    # Background: smooth colour noise (bilinear upsampling of a coarse grid) and strokes.
    coarse = rng.uniform(0, 1, (3, 4, 4))
    cy = np.clip(yy * 3, 0, 3 - 1e-9)
    cx = np.clip(xx * 3, 0, 3 - 1e-9)
    y0, x0 = cy.astype(int), cx.astype(int)
    fy, fx = cy - y0, cx - x0
    image = (coarse[:, y0, x0] * (1 - fy) * (1 - fx) + coarse[:, y0 + 1, x0] * fy * (1 - fx)
             + coarse[:, y0, x0 + 1] * (1 - fy) * fx + coarse[:, y0 + 1, x0 + 1] * fy * fx)
    for _ in range(rng.integers(3, 7)):  # distractor strokes
        p, q = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
        d = q - p
        t = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / (d @ d + 1e-9), 0, 1)
        near = np.hypot(xx - p[0] - t * d[0], yy - p[1] - t * d[1]) < rng.uniform(0.008, 0.02)
        image[:, near] = rng.uniform(0, 1, (3, 1))
    # The object.
    scale = rng.uniform(0.17, 0.32)
    centre = rng.uniform(scale, 1 - scale, 2)
    angle = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((xx - centre[0]) * cos + (yy - centre[1]) * sin) / scale
    v = (-(xx - centre[0]) * sin + (yy - centre[1]) * cos) / scale
    colour = rng.uniform(0, 1, (3, 1))
    landmarks = np.full((3, 2), np.nan)
    name = CLASSES[label]
    if name == "face":
        head, features = _face(u, v)
        painted = head
        image[:, head] = colour
        image[:, features] = np.clip(colour * 0.25, 0, 1)
        for i, part in enumerate(LANDMARKS):
            pu, pv = _FACE_PARTS[part]
            landmarks[i] = ((centre[0] + scale * (pu * cos - pv * sin)) * size,
                            (centre[1] + scale * (pu * sin + pv * cos)) * size)
    else:
        painted = _shape_mask(name, u, v, rng)
        image[:, painted] = colour
    image += rng.normal(0, 0.03, image.shape)
    image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return (image, landmarks, _box(painted)) if with_box else (image, landmarks)


def generate(split: str, seed: int, size: int, per_class: int) -> dict[str, np.ndarray]:
    """All images of a split, classes interleaved, from ``(seed, split)``."""
    rng = np.random.default_rng([seed, SPLITS[split], size])
    labels = np.tile(np.arange(len(CLASSES)), per_class)
    images = np.empty((len(labels), 3, size, size), np.uint8)
    landmarks = np.empty((len(labels), 3, 2))
    boxes = np.empty((len(labels), 4), np.int64)
    for i, label in enumerate(labels):
        images[i], landmarks[i], boxes[i] = render_image(int(label), size, rng, with_box=True)
    return {"images": images, "labels": labels.astype(np.int64), "landmarks": landmarks, "boxes": boxes}


def _cache_dir() -> Path:
    return Path(os.environ.get("ZFCORE_CACHE", Path.home() / ".cache" / "zfcore"))


class SyntheticShapes(Dataset):
    """The embedded procedural dataset (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (fixed by the seed).
        seed: the dataset's seed.
        size: image side in pixels.
        per_class: images per class (default 500 train, 100 val/test).
        cache: cache generated splits on disk.

    Items are ``(uint8 Tensor[3, size, size], label)``; ``images``, ``labels``
    ``landmarks`` (``Tensor[N, 3, 2]``, (x, y) of left eye, right eye, nose;
    NaN for non-faces) and ``boxes`` (int64 ``Tensor[N, 4]``, the object's
    x0, y0, x1, y1 in pixels, ends exclusive) hold the whole split.

    Example:
        >>> train = SyntheticShapes("train", size=64)
        >>> image, label = train[0]; SyntheticShapes.classes[label]
        'circle'
    """

    classes = CLASSES

    def __init__(self, split: str = "train", *, seed: int = 0, size: int = 64, per_class: int | None = None,
                 cache: bool = True):
        if split not in SPLITS:
            raise ValueError(f"SyntheticShapes: split must be one of {', '.join(SPLITS)} (got {split!r})")
        if not isinstance(size, int) or size < 32:
            raise ValueError(f"SyntheticShapes: size must be an int >= 32 (got {size!r})")
        per_class = DEFAULT_PER_CLASS[split] if per_class is None else per_class
        if not isinstance(per_class, int) or per_class < 1:
            raise ValueError(f"SyntheticShapes: per_class must be a positive int (got {per_class!r})")
        self.split, self.seed, self.size = split, seed, size
        data = self._load_or_generate(split, seed, size, per_class, cache)
        self.images = torch.from_numpy(data["images"])
        self.labels = torch.from_numpy(data["labels"])
        self.landmarks = torch.from_numpy(data["landmarks"]).float()
        self.boxes = torch.from_numpy(data["boxes"])

    @staticmethod
    def _load_or_generate(split, seed, size, per_class, cache):
        path = _cache_dir() / f"synthetic-v{_VERSION}-{split}-seed{seed}-{size}px-{per_class}.npz"
        if cache and path.exists():
            try:
                with np.load(path) as f:
                    return {k: f[k] for k in ("images", "labels", "landmarks", "boxes")}
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file is regenerated
        data = generate(split, seed, size, per_class)
        if cache:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
                    np.savez(tmp, **data)
                os.replace(tmp.name, path)
            except OSError:
                pass  # an unwritable cache only costs regeneration time
        return data

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])

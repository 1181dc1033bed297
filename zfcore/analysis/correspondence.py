"""The paper's correspondence experiment (section 5, Fig. 8, Table 1): does the
network encode an object part the same way in different images?

The same part (left eye, right eye, nose) is masked in every face image and
the change of one layer's features is compared across images: with
``eps_i = x_i - x~_i`` (features of image ``i`` minus those of its occluded
copy), the paper's score is ``Delta_l = sum_{i != j} H(sign(eps_i), sign(eps_j))``,
``H`` the Hamming distance. Lower = the part is encoded more consistently.
Random squares in the same images are the control.

Where the paper is silent, this module chooses (and the docstrings repeat):

* Normalisation. Table 1's values (0.067-0.107) are fractions, so Delta here is
  the *mean over the unordered pairs* ``i < j`` (the same as over the ordered
  pairs ``i != j``: H is symmetric) *of the fraction of the layer's D
  flattened feature entries whose signs differ*:
  ``Delta = sum_{i<j} H_ij / (N (N - 1) / 2 * D)``.
* ``sign(0) = 0``, so H counts the entries whose three-valued signs
  (-1, 0, +1) differ. After a ReLU many entries are exactly 0 with and without
  the occlusion (``eps = 0`` in both images: equal signs), and every entry the
  occlusion leaves untouched has ``eps = 0`` too, so Delta is small when an
  occlusion changes few entries, whatever their signs. Two diagnostics are
  reported beside Delta for that reason: ``changed``, the share of entries
  with ``eps != 0``, and ``opposite``, the share of opposite signs among the
  (entry, pair) combinations where both images' entries changed (0.5 = no
  consistency at all, 0 = every change goes the same way).
* The occluding square: ``patch_size`` pixels a side, all channels set to
  ``fill`` (0 = the run's mean image after mean subtraction: grey), centred on
  the landmark (its columns ``left .. left + p - 1`` with
  ``left = floor(x - p / 2 + 1/2)``, rows alike) and clipped at the image's
  borders (a part near the edge is masked by fewer pixels).
* The control: for each image and each of ``random_trials`` trials, one square
  of the same size at a uniformly random position anywhere in the image
  (entirely inside it, allowed to overlap the face), as the paper masks
  "random parts of the image". Reported as the mean and the sample standard
  deviation (``N - 1`` in the denominator) of Delta over the trials.
* Layers: the paper's "layer 5" is taken as ``pool5`` (conv5 after ReLU and
  max pooling: what fc6 reads) and "layer 7" as ``relu7`` (fc7 after ReLU);
  the model runs in eval mode (no dropout). ``relu5`` (before pooling) is the
  other reading of layer 5.
* Patch size: the embedded faces are small (their scale is 0.17-0.32 of the
  image side, eyes ``0.66 * scale`` apart, the head ``1.56 * scale`` wide), so
  the default square is ``round(0.11 * side)`` pixels (7 at 64 px): it covers
  a whole eye (3-5 px across at 64 px) and stays below the eye spacing (7-13
  px), so an eye's square leaves the other eye alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ._args import LayerTap, check_images, check_layers, check_positive_int, eval_mode, model_device
from .registry import Analysis
from .result import Result

__all__ = ["ANALYSIS", "PAPER_LAYERS", "PAPER_TABLE1", "PARTS", "Correspondence", "correspondence", "face_check",
           "occlude", "occlusion_boxes", "run", "sign_disagreement"]

PARTS = ("left_eye", "right_eye", "nose")  # the order of SyntheticShapes.landmarks
# Table 1 of the paper: Delta at layer 5 and layer 7 (5 dog images).
PAPER_TABLE1 = {"right_eye": (0.067, 0.069), "left_eye": (0.069, 0.068), "nose": (0.079, 0.069),
                "random": (0.107, 0.073)}
PAPER_LAYERS = ("layer 5", "layer 7")
_PAPER_LAYER_OF = {"conv5": "layer 5", "relu5": "layer 5", "pool5": "layer 5", "fc7": "layer 7", "relu7": "layer 7"}
_EXAMPLES = 5  # face images kept for the figure (the paper's Fig. 8 shows 5)


@dataclass
class Correspondence(Result):
    """The correspondence scores of ``parts`` x ``layers``.

    Attributes:
        parts: the masked parts, ``("left_eye", "right_eye", "nose")``.
        layers: the layers scored.
        delta: ``Tensor[P, L]`` (float64), Delta of each part at each layer
            (mean over image pairs of the fraction of differing feature signs).
        changed: ``Tensor[P, L]``, the mean share of feature entries the
            occlusion changes (``eps != 0``).
        opposite: ``Tensor[P, L]``, over the pairs and entries where both
            images changed, the share with opposite signs (NaN if none).
        random_delta: ``Tensor[T, L]``, Delta of each random-position trial.
        random_changed, random_opposite: ``Tensor[T, L]``, the same per trial.
        part_boxes: ``Tensor[N, P, 4]`` (int64), each image's occluded square
            per part: top, left, bottom, right (end-exclusive, clipped).
        random_boxes: ``Tensor[T, N, 4]``, the random squares.
        examples: ``Tensor[E, 3, H, W]`` uint8, the first images for display.
        patch_size, fill, seed, images (N): the settings and the image count.
        paper: Table 1, ``{part or "random": [layer 5, layer 7]}``.
        paper_layer: ``{layer: "layer 5" | "layer 7"}`` for the layers that
            correspond to a column of Table 1.
    """

    parts: list[str]
    layers: list[str]
    delta: Tensor
    changed: Tensor
    opposite: Tensor
    random_delta: Tensor
    random_changed: Tensor
    random_opposite: Tensor
    part_boxes: Tensor
    random_boxes: Tensor
    examples: Tensor
    patch_size: int
    fill: float
    seed: int
    images: int
    paper: dict = field(default_factory=lambda: {k: list(v) for k, v in PAPER_TABLE1.items()})
    paper_layer: dict = field(default_factory=dict)

    @property
    def random_mean(self) -> Tensor:
        """``Tensor[L]``: the mean Delta of the random trials."""
        return self.random_delta.mean(0)

    @property
    def random_std(self) -> Tensor:
        """``Tensor[L]``: their sample standard deviation (0 for one trial)."""
        if self.random_delta.shape[0] < 2:
            return torch.zeros_like(self.random_mean)
        return self.random_delta.std(0, correction=1)

    def to_plain(self) -> dict:
        """The fields, with ``random_mean`` and ``random_std`` beside them (as
        saved before; ``from_plain`` ignores them)."""
        return {**super().to_plain(), "random_mean": self.random_mean, "random_std": self.random_std}


# ----------------------------------------------------------------- pieces


def occlusion_boxes(centres: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """The ``patch_size`` squares centred on ``centres[..., 2]`` ((x, y) pixel
    coordinates, pixel ``i`` spanning ``[i, i + 1)``), clipped to the image:
    ``Tensor[..., 4]`` int64 (top, left, bottom, right; end-exclusive)."""
    corner = torch.floor(centres.double() - patch_size / 2 + 0.5).long()
    left, top = corner[..., 0], corner[..., 1]
    return torch.stack([top.clamp(0, height), left.clamp(0, width), (top + patch_size).clamp(0, height),
                        (left + patch_size).clamp(0, width)], dim=-1)


def occlude(images: Tensor, boxes: Tensor, fill: float) -> Tensor:
    """A copy of ``images[N, C, H, W]`` with each image's ``boxes[N, 4]``
    (top, left, bottom, right) set to ``fill`` in every channel."""
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    b = boxes.to(images.device)
    inside = (((rows[None] >= b[:, 0:1]) & (rows[None] < b[:, 2:3]))[:, :, None]
              & ((cols[None] >= b[:, 1:2]) & (cols[None] < b[:, 3:4]))[:, None, :])
    return images.masked_fill(inside[:, None], fill)


def _sign_counts(eps: Tensor) -> Tensor:
    """``[3, D]``: per feature, how many of the ``eps[N, D]`` are < 0, == 0, > 0."""
    return torch.stack([(eps < 0).sum(0), (eps == 0).sum(0), (eps > 0).sum(0)]).long()


def _delta_from_counts(counts: Tensor, n: int) -> float:
    """Mean over the unordered pairs of the fraction of features whose signs
    differ: per feature, ``C(n, 2) - sum_v C(n_v, 2)`` pairs differ."""
    c = counts.double()
    differing = n * (n - 1) / 2 - (c * (c - 1) / 2).sum(0)
    return float(differing.sum() / (n * (n - 1) / 2 * counts.shape[1]))


def _opposite_from_counts(counts: Tensor) -> float:
    """Among the (pair, feature) combinations where both changed, the share of
    opposite signs: ``n_- n_+`` of ``C(n_- + n_+, 2)`` pairs per feature."""
    c = counts.double()
    nonzero = c[0] + c[2]
    both = (nonzero * (nonzero - 1) / 2).sum()
    return float((c[0] * c[2]).sum() / both) if both > 0 else math.nan


def sign_disagreement(eps: Tensor) -> float:
    """Delta of feature changes ``eps[N, ...]`` (``N >= 2``): the mean over the
    unordered image pairs of the fraction of entries where ``sign(eps_i)`` and
    ``sign(eps_j)`` differ, with ``sign(0) = 0``."""
    if not isinstance(eps, Tensor) or eps.dim() < 1 or eps.shape[0] < 2:
        got = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
        raise ValueError(f"sign_disagreement: eps must be a Tensor[N, ...] with N >= 2 (got {got})")
    flat = eps.reshape(eps.shape[0], -1)
    return _delta_from_counts(_sign_counts(flat), flat.shape[0])


def _check(images, landmarks, patch_size, random_trials, fill, batch_size, landmark_size) -> Tensor:
    """The validated landmarks, float64, scaled to the images' pixels."""
    check_images(images, "correspondence")
    n, c, h, w = images.shape
    if c != 3:
        raise ValueError(f"correspondence: images must have 3 channels, colour images (got {c})")
    if n < 2:
        raise ValueError(f"correspondence: images must hold at least 2 face images to form pairs (got {n})")
    if not isinstance(landmarks, Tensor) or tuple(landmarks.shape) != (n, 3, 2):
        got = list(landmarks.shape) if isinstance(landmarks, Tensor) else type(landmarks).__name__
        raise ValueError(f"correspondence: landmarks must be a Tensor[N, 3, 2] = [{n}, 3, 2] of (x, y) for "
                         f"left eye, right eye, nose (got {got})")
    bad = (~torch.isfinite(landmarks.double())).flatten(1).any(1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"correspondence: landmarks of images {bad[:10]}{' ...' if len(bad) > 10 else ''} are not "
                         f"finite (NaN marks images that are not faces); pass only the face images "
                         f"(SyntheticShapes label CLASSES.index('face')) and their landmarks")
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or not 1 <= patch_size <= min(h, w):
        raise ValueError(f"correspondence: patch_size must be an int from 1 to the image side {min(h, w)} "
                         f"(got {patch_size!r})")
    check_positive_int(random_trials, "random_trials", "correspondence")
    if not isinstance(fill, int | float) or isinstance(fill, bool) or not math.isfinite(fill):
        raise ValueError(f"correspondence: fill must be a finite number (got {fill!r})")
    check_positive_int(batch_size, "batch_size", "correspondence")
    if landmark_size is None:
        return landmarks.double()
    check_positive_int(landmark_size, "landmark_size", "correspondence")
    return landmarks.double() * torch.tensor([w / landmark_size, h / landmark_size], dtype=torch.float64)


def _display(images: Tensor, display) -> Tensor:
    """uint8 images to show: ``display`` (a uint8 tensor or a callable on the
    model inputs), else each input stretched to 0..255."""
    if display is None:
        x = images.detach().float().cpu()
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        return ((x - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8)
    shown = display(images) if callable(display) else display
    if not isinstance(shown, Tensor) or shown.dtype != torch.uint8 or tuple(shown.shape) != tuple(images.shape):
        got = f"{shown.dtype} {list(shown.shape)}" if isinstance(shown, Tensor) else type(shown).__name__
        raise ValueError(f"correspondence: display must be (or return) a uint8 Tensor{list(images.shape)} of the "
                         f"same images (got {got})")
    return shown.detach().cpu()


# ----------------------------------------------------------------- analysis


@torch.no_grad()
def correspondence(model: nn.Module, images: Tensor, landmarks: Tensor, *,
                   layers: Sequence[str] | str = ("pool5", "relu7"), patch_size: int | None = None,
                   random_trials: int = 10, fill: float = 0.0, seed: int = 0, batch_size: int = 128,
                   landmark_size: int | None = None,
                   display: Tensor | Callable[[Tensor], Tensor] | None = None,
                   progress: bool = True) -> Correspondence:
    """Delta of each face part and of random squares at each layer (paper
    section 5, Fig. 8, Table 1; the definitions chosen are in the module
    docstring).

    Args:
        model: the network (run in eval mode, restored afterwards).
        images: ``Tensor[N, 3, H, W]``, ``N >= 2`` face images in the model's
            input space (e.g. ``loaded.preprocess(val.images[faces])``).
        landmarks: ``Tensor[N, 3, 2]``, (x, y) pixel coordinates of left eye,
            right eye, nose in each image (``SyntheticShapes.landmarks``).
        layers: the layers scored (default ``pool5`` = the paper's layer 5,
            ``relu7`` = its layer 7).
        patch_size: the occluding square's side in pixels (default
            ``round(0.11 * W)``: 7 at 64 px, about a face's eye spacing).
        random_trials: random-position control trials (each draws a new
            square per image).
        fill: the value of every channel inside the square (0 = the mean image).
        seed: seeds the random squares.
        batch_size: images per forward.
        landmark_size: the image side the landmarks refer to, when it is not
            the images' (they are scaled by ``W / landmark_size``).
        display: the same images as uint8 ``Tensor[N, 3, H, W]``, or a callable
            mapping ``images`` to it (``loaded.deprocess``), for the figure;
            default: each input stretched to 0..255.

    Returns:
        A ``Correspondence``: ``delta[P, L]``, ``random_delta[T, L]`` (and its
        ``random_mean`` / ``random_std``), the boxes, Table 1 beside them.

    Example:
        >>> loaded = zfcore.load("runs/small/model.pt")
        >>> val = SyntheticShapes("val", size=64, per_class=100)
        >>> faces = val.labels == CLASSES.index("face")
        >>> result = correspondence(loaded.model, loaded.preprocess(val.images[faces]), val.landmarks[faces],
        ...                         display=val.images[faces])
        >>> result.delta[:, 0], result.random_mean[0]      # parts vs random at layer 5
    """
    layers = check_layers(model, layers, "correspondence")
    n, _, h, w = images.shape if isinstance(images, Tensor) and images.dim() == 4 else (0, 0, 0, 0)
    if patch_size is None and w:
        patch_size = max(1, round(0.11 * min(h, w)))
    landmarks = _check(images, landmarks, patch_size, random_trials, fill, batch_size, landmark_size)
    shown = _display(images[:_EXAMPLES], display[:_EXAMPLES] if isinstance(display, Tensor) else display)

    part_boxes = occlusion_boxes(landmarks, patch_size, h, w)                          # [N, P, 4]
    generator = torch.Generator().manual_seed(int(seed))
    tops = torch.randint(0, h - patch_size + 1, (random_trials, n), generator=generator)
    lefts = torch.randint(0, w - patch_size + 1, (random_trials, n), generator=generator)
    random_boxes = torch.stack([tops, lefts, tops + patch_size, lefts + patch_size], dim=-1)  # [T, N, 4]
    occlusions = [part_boxes[:, p] for p in range(len(PARTS))] + [random_boxes[t] for t in range(random_trials)]

    device = model_device(model)
    counts = [{name: None for name in layers} for _ in occlusions]
    changed = [{name: 0 for name in layers} for _ in occlusions]
    sizes: dict[str, int] = {}
    starts = range(0, n, batch_size)
    bar = tqdm(total=len(starts) * (1 + len(occlusions)), desc="correspondence", unit="batch",
               disable=not progress, leave=False)
    try:
        with eval_mode(model), LayerTap(model, layers) as tap:
            for start in starts:
                batch = images[start:start + batch_size].float().to(device)
                # Originals and occluded copies run in batches of the same shape, so that the
                # features an occlusion does not reach come out bit for bit equal (eps == 0).
                original = {name: out.flatten(1) for name, out in tap(batch).items()}
                bar.update(1)
                for k, boxes in enumerate(occlusions):
                    occluded = tap(occlude(batch, boxes[start:start + batch_size], float(fill)))
                    for name in layers:
                        eps = original[name] - occluded[name].flatten(1)
                        c = _sign_counts(eps)
                        counts[k][name] = c if counts[k][name] is None else counts[k][name] + c
                        changed[k][name] += int((eps != 0).sum())
                        sizes[name] = eps.shape[1]
                    bar.update(1)
    finally:
        bar.close()

    def table(ks) -> tuple[Tensor, Tensor, Tensor]:
        d = [[_delta_from_counts(counts[k][name].cpu(), n) for name in layers] for k in ks]
        c = [[changed[k][name] / (n * sizes[name]) for name in layers] for k in ks]
        o = [[_opposite_from_counts(counts[k][name].cpu()) for name in layers] for k in ks]
        return tuple(torch.tensor(v, dtype=torch.float64) for v in (d, c, o))

    delta, part_changed, part_opposite = table(range(len(PARTS)))
    random_delta, random_changed, random_opposite = table(range(len(PARTS), len(occlusions)))
    return Correspondence(parts=list(PARTS), layers=layers, delta=delta, changed=part_changed,
                          opposite=part_opposite, random_delta=random_delta, random_changed=random_changed,
                          random_opposite=random_opposite, part_boxes=part_boxes,
                          random_boxes=random_boxes, examples=shown, patch_size=patch_size, fill=float(fill),
                          seed=int(seed), images=n,
                          paper_layer={name: _PAPER_LAYER_OF[name] for name in layers if name in _PAPER_LAYER_OF})


def face_check(subject, dataset) -> str | None:
    """Why ``run`` cannot use ``dataset`` (no 'face' class), or None."""
    if "face" not in dataset.classes:
        return "correspondence needs a dataset with a 'face' class (its landmarks); this one has none"
    return None


def run(subject, dataset, *, quick: bool, progress: bool, seed: int) -> tuple[Correspondence, dict]:
    """Fig. 8 and Table 1 on ``dataset``'s face images (its class ``'face'``)
    and their landmarks, with ``correspondence``'s defaults (layers, square,
    10 random trials drawn with its seed 0); ``quick`` and ``seed`` change
    nothing."""
    face = dataset.labels == dataset.classes.index("face")
    return correspondence(subject.model, subject.preprocess(dataset.images[face]), dataset.landmarks[face],
                          display=dataset.images[face], progress=progress), {}


ANALYSIS = Analysis(
    name="correspondence", group="paper", order=30, demo=True, result=Correspondence, run=run,
    description="correspondence of face parts (Fig. 8, Table 1)",
    needs=frozenset({"subject", "labels", "landmarks"}), check=face_check,
    claims=("at layer 5 every face part is encoded more consistently than random positions (lower Delta)",
            "the parts' advantage over random positions is smaller at layer 7 than at layer 5"))

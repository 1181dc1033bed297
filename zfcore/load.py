"""``zfcore.load(path)``: a trained model with its preprocessing, from a
``model.pt`` or a training checkpoint written by ``zfcore train``.

Loading never unpickles arbitrary objects: the file is read with
``torch.load(weights_only=True)``, which admits only tensors, numbers, strings
and plain containers, and the model is rebuilt from its preset name and sizes
(``zfcore.models.PRESETS``) with the run's variant (``conv1``, ``remove``;
``classes`` is already in the saved class list), then given the saved weights.

Example:
    >>> loaded = zfcore.load("runs/small/model.pt")
    >>> x = loaded.preprocess(image)                 # uint8 [3, H, W] -> the model's input
    >>> loaded.model(x[None]).argmax(1), loaded.classes
    >>> loaded.deprocess(x)                          # back to uint8 [3, H, W], for display
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.utils.data
from torch import Tensor, nn

__all__ = ["Dataset", "Loaded", "PreparedDataset", "Subject", "embedded_dataset", "load", "open_dataset"]


def _centre_crop(t: Tensor, size: int) -> Tensor:
    h, w = t.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"zfcore.load: preprocess: an image of {h}x{w} pixels is smaller than the model's "
                         f"{size}x{size} input")
    top, left = (h - size) // 2, (w - size) // 2
    return t[..., top:top + size, left:left + size]


@dataclass
class Subject:
    """A model ready to look at: what every analysis is handed (``Loaded`` is
    its older name).

    Attributes:
        model: the network, in eval mode.
        classes: class names (untrusted text: folder names for image-folder runs).
        input_shape: ``(3, H, W)`` of the model's input.
        mean: the mean image the run subtracted, ``Tensor[3, S, S]`` (``S >= H``).
        scale: the run's input scale (multiplier of the mean-subtracted pixels).
        resize: the short side images were resized to before the centre crop
            (image-folder runs), ``None`` for the embedded data.
        config: the run's configuration (plain values).
        history: per-epoch metrics saved with the run (may be empty).
        path: the file it was loaded from.
    """

    model: nn.Module
    classes: list[str]
    input_shape: tuple[int, int, int]
    mean: Tensor
    scale: float
    resize: int | None
    config: dict
    history: list[dict] = field(default_factory=list)
    path: Path | None = None

    def preprocess(self, image: Tensor) -> Tensor:
        """uint8 ``[3, H, W]`` (or a batch ``[N, 3, H, W]``) -> the model's input:
        centre crop to the model's size, the run's mean subtracted, times its scale."""
        if not isinstance(image, Tensor) or image.dim() not in (3, 4) or image.shape[-3] != 3:
            got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"zfcore.load: preprocess: image must be a Tensor[3, H, W] or [N, 3, H, W] (got {got})")
        size = self.input_shape[-1]
        x = _centre_crop(image, size).to(torch.float32)
        mean = _centre_crop(self.mean, size).to(x.device)
        return (x - mean) * self.scale

    def deprocess(self, x: Tensor) -> Tensor:
        """The inverse of ``preprocess`` for display: uint8 ``[..., 3, H, W]``."""
        mean = _centre_crop(self.mean, x.shape[-1]).to(x.device)
        return (x.detach().float() / self.scale + mean).round().clamp(0, 255).to(torch.uint8)

    @property
    def run_folder(self) -> Path | None:
        return self.path.parent if self.path is not None else None


Loaded = Subject


def _fail(path, why: str) -> ValueError:
    return ValueError(f"zfcore.load: {os.fspath(path)!r} is not a zfcore model ({why})")


def read_state(path: str | os.PathLike) -> dict:
    """The saved dict of a zfcore file, read with ``weights_only=True``; any other
    file is a ``ValueError`` naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"zfcore.load: {os.fspath(path)!r} does not exist")
    if path.is_dir():
        if (path / "model.pt").is_file():
            path = path / "model.pt"
        else:
            raise _fail(path, "a folder without a model.pt")
    if not zipfile.is_zipfile(path):
        raise _fail(path, "not a file written by torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _fail(path, f"it holds objects other than tensors, numbers and strings, which are never "
                          f"unpickled: {first[:200]}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, TypeError,
            KeyError, IndexError) as error:
        raise _fail(path, f"unreadable: {type(error).__name__}: {str(error)[:200]}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise _fail(path, "no 'model' and 'config' entries; expected a model.pt or checkpoint of zfcore train")
    return state


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Subject:
    """Load a ``model.pt`` or training checkpoint (or a run folder holding a
    ``model.pt``) written by ``zfcore train``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a zfcore model (naming it and why).
    """
    from .models import PRESETS
    from .train.config import parse_conv1, parse_remove

    state = read_state(path)
    path = Path(path)
    path = path / "model.pt" if path.is_dir() else path
    config = state["config"]
    if not isinstance(config, dict) or config.get("model") not in PRESETS:
        raise _fail(path, f"unknown model {config.get('model') if isinstance(config, dict) else config!r}")
    prep = state.get("preprocess")
    classes = state.get("classes")
    if not isinstance(prep, dict) or not isinstance(prep.get("mean"), Tensor) or classes is None:
        raise _fail(path, "no 'preprocess' and 'classes' entries (written by an older zfcore: retrain, or "
                          "resume the run once to write a new model.pt)")
    classes = [str(c) for c in classes]
    size = int(prep.get("crop", config.get("image_size")))
    kwargs = {"input_size": size, "dropout": float(config.get("dropout", 0.5)), "init_std": None}
    if config.get("width") is not None:
        kwargs["width"] = float(config["width"])
    if config.get("fc_width") is not None:
        kwargs["fc_width"] = int(config["fc_width"])
    try:  # the variant (absent from runs saved before variants existed: the preset)
        kwargs["conv1"] = parse_conv1(str(config.get("conv1") or ""))
        kwargs["remove"] = parse_remove(str(config.get("remove") or ""))
    except ValueError as error:
        raise _fail(path, f"its model variant is invalid: {error}") from None
    try:
        model = PRESETS[config["model"]](len(classes), **kwargs)
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        raise _fail(path, f"its weights do not fit a {config['model']} with {len(classes)} classes at "
                          f"{size} px: {str(error).splitlines()[0][:200]}") from None
    mean = prep["mean"].detach().to(torch.float32)
    if mean.dim() != 3 or mean.shape[0] != 3 or min(mean.shape[1:]) < size:
        raise _fail(path, f"its mean image has shape {tuple(mean.shape)}, expected [3, S, S] with S >= {size}")
    resize = prep.get("resize")
    return Subject(model=model.to(device).eval(), classes=classes, input_shape=(3, size, size), mean=mean,
                  scale=float(prep.get("scale", 1.0)), resize=int(resize) if resize is not None else None,
                  config=dict(config), history=list(state.get("history") or []), path=path)


# ----------------------------------------------------------------- data handed to the analyses


@dataclass
class Dataset:
    """Images an analysis runs on, held in memory, handed down by the caller
    (``zfcore analyze``, ``zfcore visualize``, ``zfcore demo``); no analysis finds
    its own data.

    Attributes:
        images: uint8 ``[N, 3, H, W]`` pixels (``Subject.preprocess`` brings them
            to the model's input).
        labels: int64 ``[N]``, indices into ``classes``.
        classes: class names (untrusted text).
        description: one line saying where the images come from.
        boxes: int64 ``[N, 4]`` object boxes ``(x0, y0, x1, y1)`` in pixels (end-exclusive), or None.
        landmarks: float ``[N, P, 2]`` landmark points ``(x, y)`` in pixels (NaN where absent), or None.
        train: a disjoint split of the same source to fit on (the linear probes),
            or None.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    description: str = ""
    boxes: Tensor | None = None
    landmarks: Tensor | None = None
    train: "Dataset | None" = None

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"Dataset: images must be a uint8 Tensor[N, 3, H, W] (got {got})")
        if not isinstance(labels, Tensor) or labels.shape != (len(images),):
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"Dataset: labels must be a Tensor[{len(images)}] (got {got})")
        for name, value, tail in (("boxes", self.boxes, (4,)), ("landmarks", self.landmarks, None)):
            if value is not None and (not isinstance(value, Tensor) or value.shape[0] != len(images)
                                      or (tail is not None and tuple(value.shape[1:]) != tail)):
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"Dataset: {name} must have one row per image ({len(images)}; got {got})")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "Dataset":
        """The images at ``index`` (a slice, a list or a tensor of indices), with
        their labels, boxes and landmarks."""
        pick = (lambda t: None if t is None else t[index])
        return Dataset(self.images[index], self.labels[index], self.classes, self.description,
                       pick(self.boxes), pick(self.landmarks), self.train)


def embedded_dataset(subject: Subject, split: str = "val", per_class: int | None = None, *,
                     train_per_class: int | None = None) -> Dataset:
    """The embedded data of ``subject``'s run: its ``split`` with the run's seed
    and image size (``per_class`` default: the validation share of the run,
    a fifth of its training ``per_class``), with boxes and landmarks; with
    ``train_per_class``, that many training images per class ride along as
    ``train``."""
    from .data import SyntheticShapes

    config = subject.config
    seed, size = int(config.get("seed", 0)), subject.input_shape[-1]
    if per_class is None:
        per_class = max(1, int(config.get("per_class", 500)) // 5)
    base = SyntheticShapes(split, seed=seed, size=size, per_class=per_class)
    train = None
    if train_per_class is not None:
        shapes = SyntheticShapes("train", seed=seed, size=size, per_class=train_per_class)
        train = Dataset(shapes.images, shapes.labels, list(SyntheticShapes.classes),
                        f"embedded training images (seed {seed}, {size} px)", shapes.boxes, shapes.landmarks)
    return Dataset(base.images, base.labels, list(SyntheticShapes.classes),
                   f"embedded validation images (seed {seed}, {size} px)", base.boxes, base.landmarks, train)


class PreparedDataset(torch.utils.data.Dataset):
    """A dataset of uint8 images brought to a subject's input space, read lazily
    (an image folder of any size streams through ``zfcore visualize``)."""

    def __init__(self, base, loaded: Subject, classes: list[str], description: str, skipped: int = 0):
        self.base, self.loaded = base, loaded
        self.classes, self.description, self.skipped = classes, description, skipped

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.loaded.preprocess(image), label

    def label(self, index: int) -> int:
        for name in ("labels", "targets"):
            labels = getattr(self.base, name, None)
            if labels is not None:
                return int(labels[index])
        return int(self.base[index][1])


def open_dataset(loaded: Subject, data: str) -> PreparedDataset:
    """``"synthetic"``: the embedded validation images of the model's run (same
    seed, size and count as its training run's validation split); otherwise an
    image folder with one subfolder per class, resized and centre-cropped as
    the run's training did (unreadable files skipped and counted)."""
    import warnings

    from .data import ImageFolderDataset, SyntheticShapes

    config = loaded.config
    size = loaded.input_shape[-1]
    if data == "synthetic":
        per_class = max(1, int(config.get("per_class", 500)) // 5)
        base = SyntheticShapes("val", seed=int(config.get("seed", 0)), size=size, per_class=per_class)
        return PreparedDataset(base, loaded, list(SyntheticShapes.classes),
                               f"embedded validation images (seed {config.get('seed', 0)}, {size} px)")
    folder = Path(data)
    if not folder.is_dir():
        raise FileNotFoundError(f"visualize: data must be 'synthetic' or an image folder; {os.fspath(data)!r} "
                                f"is not a folder")
    resize = loaded.resize if loaded.resize is not None else round(size * 256 / 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = ImageFolderDataset(folder, resize=max(resize, size))
    return PreparedDataset(base, loaded, list(base.classes), f"image folder {os.fspath(folder)}",
                           skipped=len(base.skipped))

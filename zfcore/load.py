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
from torch import Tensor, nn

__all__ = ["Loaded", "load"]


def _centre_crop(t: Tensor, size: int) -> Tensor:
    h, w = t.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"zfcore.load: preprocess: an image of {h}x{w} pixels is smaller than the model's "
                         f"{size}x{size} input")
    top, left = (h - size) // 2, (w - size) // 2
    return t[..., top:top + size, left:left + size]


@dataclass
class Loaded:
    """A model ready to look at.

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


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Loaded:
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
    return Loaded(model=model.to(device).eval(), classes=classes, input_shape=(3, size, size), mean=mean,
                  scale=float(prep.get("scale", 1.0)), resize=int(resize) if resize is not None else None,
                  config=dict(config), history=list(state.get("history") or []), path=path)

"""``zfcore.load(source, *, weights=None, preprocess=None, classes=None)``: a
model to look at, with how images become its input: a ``Subject``.

``source`` is one of:

* a zfcore run: a ``model.pt`` or training checkpoint written by ``zfcore
  train``, or its run folder (preprocessing: the run's own);
* a built-in architecture name (``zfcore.models.zoo.ARCHITECTURES``):
  ``alexnet``, ``vgg11`` .. ``vgg19_bn``, ``resnet18`` .. ``resnet152`` with the
  module layout and ``state_dict`` key names of the common PyTorch
  (torchvision) checkpoints, and zfcore's ``zfnet``, ``zfnet_small``,
  ``alexnet_paper``; ``weights`` is then a ``state_dict`` file;
* ``torchvision:NAME`` (with torchvision installed): ``torchvision.models.get_model(NAME)``;
* a ``.pt2`` file written by ``torch.export.save``.

Nothing read runs code: ``state_dict`` files are read with
``torch.load(weights_only=True)`` (tensors, numbers, strings, containers) or
as ``.safetensors``; a ``.pt2`` archive is refused before ``torch.export.load``
if any of its payloads would need unpickling. Weights load strictly: missing
or unexpected keys and shape mismatches are an error naming them and the
architecture, and the number of classes follows the final layer in the file.

Example:
    >>> subject = zfcore.load("resnet18", weights="finetuned.pth", classes="classes.txt")
    >>> x = subject.preprocess(photo)                  # uint8 [3, H, W] -> the model's input
    >>> subject.model(x[None]).argmax(1), subject.classes
    >>> subject.deprocess(x)                           # back to uint8 [3, 224, 224], for display
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.utils.data
from torch import Tensor, nn

from .data.preprocess import Preprocess

__all__ = ["Dataset", "Loaded", "Preprocess", "PreparedDataset", "Subject", "embedded_dataset", "load",
           "open_dataset", "read_classes", "read_weights"]

PREPROCESS_NAMES = ("imagenet", "run")


@dataclass
class Subject:
    """A model ready to look at: what every analysis is handed (``Loaded`` is
    its older name).

    Attributes:
        model: the network, in eval mode.
        classes: class names (untrusted text: a classes file, folder names).
        input_shape: ``(3, H, W)`` of the model's input.
        mean: a zfcore run's mean image ``Tensor[3, S, S]`` (``S >= H``), else None.
        scale: one pixel level (1 of 255) in model-input units (a run's input scale).
        resize: the short side images are resized to before the centre crop, or None.
        config: the run's configuration (plain values); for other models
            ``{"model": name, ...}``.
        history: per-epoch metrics saved with the run (may be empty).
        path: the file it was loaded from (the weights file for an architecture name).
        preprocessing: the ``Preprocess`` (built from ``mean``, ``scale``,
            ``resize`` when not given).
        kind: ``"run"``, ``"architecture"``, ``"torchvision"`` or ``"exported"``.
    """

    model: nn.Module
    classes: list[str]
    input_shape: tuple[int, int, int]
    mean: Tensor | None = None
    scale: float = 1.0
    resize: int | None = None
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    path: Path | None = None
    preprocessing: Preprocess | None = None
    kind: str = "run"

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            if self.mean is None:
                raise ValueError("Subject: give preprocessing, or a run's mean image")
            self.preprocessing = Preprocess.run(self.mean, self.scale, self.resize, self.input_shape[-1])
        elif self.preprocessing.size != self.input_shape[-1]:
            raise ValueError(f"Subject: preprocessing gives {self.preprocessing.size} px inputs; the model takes "
                             f"{self.input_shape[-1]}")

    def preprocess(self, image: Tensor) -> Tensor:
        """uint8 ``[3, H, W]`` (or a batch ``[N, 3, H, W]``) -> the model's input
        (``Preprocess``: resize, centre crop, normalization)."""
        return self.preprocessing(image)

    def deprocess(self, x: Tensor) -> Tensor:
        """The inverse of the normalization, for display: uint8 ``[..., 3, H, W]``."""
        return self.preprocessing.invert(x)

    @property
    def name(self) -> str:
        return str(self.config.get("model", "model"))

    @property
    def run_folder(self) -> Path | None:
        return self.path.parent if self.path is not None and self.kind == "run" else None


Loaded = Subject


def _fail(path, why: str) -> ValueError:
    return ValueError(f"zfcore.load: {os.fspath(path)!r} is not a zfcore model ({why})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


_READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, TypeError, KeyError,
                IndexError, UnicodeDecodeError)


def _torch_load(path: Path, what) -> object:
    """``torch.load(weights_only=True)``; anything else in the file is refused, never unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise what(f"it holds objects other than tensors, numbers and strings, which are never unpickled: "
                   f"{_first_line(error)}") from None
    except _READ_ERRORS as error:
        raise what(f"unreadable: {type(error).__name__}: {_first_line(error)}") from None


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
    state = _torch_load(path, lambda why: _fail(path, why))
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise _fail(path, "no 'model' and 'config' entries; expected a model.pt or checkpoint of zfcore train "
                          "(a state_dict goes with an architecture: zfcore.load('resnet18', weights=FILE))")
    return state


# ----------------------------------------------------------------- weights and classes files


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """A ``state_dict`` from a file: ``.safetensors``, or a ``torch.save`` file read
    with ``weights_only=True``. The dict may be bare or nested under
    ``state_dict`` or ``model``; a prefix every key shares (``module.``,
    ``model.``) is stripped. Every value must be a tensor.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a weights file (naming it and why).
    """
    path = Path(path)

    def bad(why: str) -> ValueError:
        return ValueError(f"zfcore.load: weights {os.fspath(path)!r} is not a state_dict file ({why})")

    if not path.is_file():
        raise FileNotFoundError(f"zfcore.load: weights {os.fspath(path)!r} does not exist" +
                                (" as a file" if path.exists() else ""))
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(os.fspath(path), device="cpu")
        except (SafetensorError, *_READ_ERRORS) as error:
            raise bad(f"unreadable safetensors: {_first_line(error)}") from None
    else:
        state = _torch_load(path, bad)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise bad(f"it holds a {type(state).__name__}, not a dict of tensors" if not isinstance(state, dict)
                  else "it is empty")
    others = [k for k, v in state.items() if not isinstance(v, Tensor) or not isinstance(k, str)]
    if others:
        raise bad(f"entries that are not tensors: {', '.join(map(repr, others[:5]))}"
                  + (", ..." if len(others) > 5 else ""))
    for prefix in ("module.", "model.", "module."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_classes(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (blank lines at the end
    ignored). The names are untrusted text; they are shown escaped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"zfcore.load: classes file {os.fspath(path)!r} does not exist")
    if path.stat().st_size > 16 * 2 ** 20:
        raise ValueError(f"zfcore.load: classes file {os.fspath(path)!r} is over 16 MiB; expected one name per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"zfcore.load: classes file {os.fspath(path)!r} is not UTF-8 text: "
                         f"{_first_line(error)}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip()[:200] for line in lines]
    if not names:
        raise ValueError(f"zfcore.load: classes file {os.fspath(path)!r} is empty; expected one name per line")
    return names


def _last_linear(model: nn.Module) -> str:
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not name:
        raise ValueError(f"zfcore.load: {type(model).__name__} has no final linear layer to size the classes by")
    return name[-1] + ".weight"


def load_weights_strictly(model: nn.Module, state: dict[str, Tensor], architecture: str, source) -> None:
    """``model.load_state_dict(state)``, strictly, with an error that names the
    missing and unexpected keys and the shape mismatches, and the architecture."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def named(keys):
            return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
        parts = [f"missing keys: {named(missing)}" if missing else "",
                 f"unexpected keys: {named(unexpected)}" if unexpected else "",
                 f"shape mismatches: {named(shapes)}" if shapes else ""]
        raise ValueError(f"zfcore.load: weights {os.fspath(source)!r} do not fit {architecture}: "
                         + "; ".join(p for p in parts if p))
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"zfcore.load: weights {os.fspath(source)!r} do not fit {architecture}: "
                         f"{_first_line(error)}") from None


# ----------------------------------------------------------------- exported programs


def _check_pt2(path: Path) -> None:
    """Refuse a ``.pt2`` archive any of whose payloads would be unpickled by
    ``torch.export.load``: pickled weights or constants, custom objects, and
    sample inputs that are not plain tensors."""
    def bad(why: str) -> ValueError:
        return ValueError(f"zfcore.load: {os.fspath(path)!r} is not a plain torch.export archive ({why})")

    if not zipfile.is_zipfile(path):
        raise bad("not a zip archive written by torch.export.save")
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                parts = name.split("/")
                if name.endswith("_config.json") and ("weights" in parts or "constants" in parts):
                    config = json.loads(archive.read(name)).get("config", {})
                    for key, entry in config.items():
                        if not isinstance(entry, dict) or entry.get("use_pickle") or \
                                not str(entry.get("path_name", "")).startswith(("weight_", "tensor_")):
                            raise bad(f"its payload {key!r} is a pickled object, which is never unpickled")
                elif name.endswith(".pt") or name.endswith(".pkl"):
                    try:
                        torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
                    except Exception as error:  # noqa: BLE001 - anything that is not plain tensors
                        raise bad(f"{name!r} holds objects other than tensors, which are never unpickled: "
                                  f"{_first_line(error)}") from None
    except (zipfile.BadZipFile, OSError, ValueError, AttributeError) as error:
        if isinstance(error, ValueError) and str(error).startswith("zfcore.load"):
            raise
        raise bad(f"unreadable: {_first_line(error)}") from None


def _exported(path: Path) -> tuple[nn.Module, tuple[int, int, int]]:
    """The program of a ``.pt2`` file as a module (``torch.export.unflatten``) and its input shape."""
    _check_pt2(path)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(os.fspath(path))
    except Exception as error:  # noqa: BLE001 - torch.export raises many kinds for a bad archive
        raise ValueError(f"zfcore.load: {os.fspath(path)!r} could not be read by torch.export.load: "
                         f"{type(error).__name__}: {_first_line(error)}") from None
    inputs = [spec for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    shape = None
    if len(inputs) == 1:
        value = placeholders[inputs[0].arg.name].meta.get("val")
        if value is not None and value.dim() == 4 and value.shape[1] == 3:
            try:
                shape = tuple(int(s) for s in value.shape[1:])
            except TypeError:  # a dynamic size
                shape = None
    if shape is None or shape[1] != shape[2]:
        raise ValueError(f"zfcore.load: {os.fspath(path)!r} must take one image batch [N, 3, S, S] with a "
                         f"fixed square size")
    if isinstance(value.shape[0], int):
        raise ValueError(f"zfcore.load: {os.fspath(path)!r} was exported for batches of exactly {value.shape[0]} "
                         f"image(s); export it with a dynamic batch: torch.export.export(model, (x,), "
                         f"dynamic_shapes=({{0: torch.export.Dim('batch')}},))")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.unflatten(program), shape


# ----------------------------------------------------------------- load


def _preprocessing(preprocess, size: int, run: Preprocess | None, default_resize: int | None) -> Preprocess:
    if preprocess is None:
        return run if run is not None else Preprocess.imagenet(size, default_resize or round(size * 256 / 224))
    if isinstance(preprocess, Preprocess):
        return preprocess
    if preprocess == "imagenet":
        return Preprocess.imagenet(size, round(size * 256 / 224))
    if preprocess == "run":
        if run is None:
            raise ValueError("zfcore.load: preprocess 'run' is a zfcore run's own; this model is not a zfcore run "
                             "(use 'imagenet' or a zfcore.Preprocess)")
        return run
    raise ValueError(f"zfcore.load: preprocess must be 'imagenet', 'run' or a zfcore.Preprocess (got {preprocess!r})")


def _classes(classes, count: int, where: str) -> list[str]:
    if classes is None:
        return [f"class {i}" for i in range(count)]
    names = read_classes(classes) if isinstance(classes, (str, os.PathLike)) else [str(c)[:200] for c in classes]
    if len(names) != count:
        raise ValueError(f"zfcore.load: classes has {len(names)} names; {where} has {count} outputs")
    return names


def load(source: str | os.PathLike, device: str | torch.device = "cpu", *, weights: str | os.PathLike | None = None,
         preprocess: str | Preprocess | None = None, classes: str | os.PathLike | list[str] | None = None) -> Subject:
    """A ``Subject`` from a zfcore run, a built-in architecture name (with a
    ``weights`` file), ``torchvision:NAME`` or a ``.pt2`` file (see the module).

    Args:
        source: what to load.
        device: where the model goes.
        weights: a ``state_dict`` file (``.pth``/``.pt``/``.bin`` by ``torch.save``,
            or ``.safetensors``) for an architecture name; without it the
            architecture is untrained (random).
        preprocess: ``"imagenet"``, ``"run"`` (a zfcore run's own, its default)
            or a ``Preprocess``; default ``"imagenet"`` at the model's input size.
        classes: a text file with one class name per line (or a list); default
            ``class 0`` .. ``class N-1`` (a run: its own).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: an unknown architecture (listing them), a file that is not
            what it should be, weights that do not fit (naming the keys).
    """
    from .models.zoo import ARCHITECTURES, architecture

    text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if text is None:
        raise TypeError(f"zfcore.load: source must be a path or an architecture name (got {type(source).__name__})")
    if text.startswith("torchvision:"):
        return _load_torchvision(text.split(":", 1)[1], device, weights, preprocess, classes)
    if text in ARCHITECTURES:
        spec = architecture(text)
        state = read_weights(weights) if weights is not None else None
        if state is not None and spec.classifier in state and state[spec.classifier].dim() == 2:
            count = int(state[spec.classifier].shape[0])
        elif classes is not None:
            count = len(read_classes(classes) if isinstance(classes, (str, os.PathLike)) else list(classes))
        else:
            count = 1000 if spec.layout == "torchvision" else (10 if spec.name == "zfnet_small" else 1000)
        model = spec.build(count)
        if state is not None:
            load_weights_strictly(model, state, f"{text} ({count} classes)", weights)
        prep = _preprocessing(preprocess, spec.input_size, None, None)
        names = _classes(classes, count, text)
        config = {"model": text, "weights": os.fspath(weights) if weights is not None else None,
                  "trained": weights is not None}
        return Subject(model.to(device).eval(), names, (3, prep.size, prep.size), config=config,
                       path=Path(weights) if weights is not None else None, preprocessing=prep,
                       scale=prep.pixel_step, resize=prep.resize, kind="architecture")
    path = Path(text)
    if not path.exists():
        if "/" in text or os.sep in text or path.suffix:
            raise FileNotFoundError(f"zfcore.load: {text!r} does not exist")
        architecture(text)  # the unknown-name error, listing the built-in architectures
    if path.suffix.lower() == ".pt2":
        if weights is not None:
            raise ValueError("zfcore.load: a .pt2 file holds its own weights; give no weights")
        model, shape = _exported(path)  # the module hierarchy restored: hooks and layer names work
        prep = _preprocessing(preprocess, shape[-1], None, None)
        if prep.size != shape[-1]:
            raise ValueError(f"zfcore.load: {text!r} takes {shape[-1]} px inputs; preprocess gives {prep.size}")
        with torch.no_grad():
            count = int(model(torch.zeros((1, *shape))).shape[-1])
        names = _classes(classes, count, text)
        return Subject(model.to(device).eval(), names, shape, config={"model": path.stem, "weights": text},
                       path=path, preprocessing=prep, scale=prep.pixel_step, resize=prep.resize, kind="exported")
    if weights is not None:
        raise ValueError(f"zfcore.load: {text!r} is a zfcore run with its own weights; weights go with an "
                         f"architecture name ({', '.join(ARCHITECTURES)})")
    return _load_run(path, device, preprocess, classes)


def _load_torchvision(name: str, device, weights, preprocess, classes) -> Subject:
    try:
        import torchvision
    except ImportError:
        raise ValueError("zfcore.load: torchvision:NAME needs torchvision installed (pip install torchvision); "
                         "the built-in architectures need nothing") from None
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"zfcore.load: torchvision has no classification model {name!r}; it has "
                         f"{', '.join(available)}")
    state = read_weights(weights) if weights is not None else None
    model = torchvision.models.get_model(name, weights=None)
    count = 1000
    if state is not None:
        key = _last_linear(model)
        if key in state and state[key].dim() == 2:
            count = int(state[key].shape[0])
            if count != 1000:
                model = torchvision.models.get_model(name, weights=None, num_classes=count)
        load_weights_strictly(model, state, f"torchvision {name} ({count} classes)", weights)
    prep = _preprocessing(preprocess, 224, None, None)
    names = _classes(classes, count, f"torchvision:{name}")
    return Subject(model.to(device).eval(), names, (3, prep.size, prep.size),
                   config={"model": f"torchvision:{name}", "weights": os.fspath(weights) if weights else None},
                   path=Path(weights) if weights is not None else None, preprocessing=prep, scale=prep.pixel_step,
                   resize=prep.resize, kind="torchvision")


def _load_run(path: Path, device, preprocess=None, classes=None) -> Subject:
    """A ``model.pt`` or training checkpoint (or a run folder holding a
    ``model.pt``) written by ``zfcore train``."""
    from .models import PRESETS
    from .train.config import parse_conv1, parse_remove

    state = read_state(path)
    path = path / "model.pt" if path.is_dir() else path
    config = state["config"]
    if not isinstance(config, dict) or config.get("model") not in PRESETS:
        raise _fail(path, f"unknown model {config.get('model') if isinstance(config, dict) else config!r}")
    prep = state.get("preprocess")
    saved_classes = state.get("classes")
    if not isinstance(prep, dict) or not isinstance(prep.get("mean"), Tensor) or saved_classes is None:
        raise _fail(path, "no 'preprocess' and 'classes' entries (written by an older zfcore: retrain, or "
                          "resume the run once to write a new model.pt)")
    saved_classes = [str(c) for c in saved_classes]
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
        model = PRESETS[config["model"]](len(saved_classes), **kwargs)
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, TypeError, KeyError) as error:
        raise _fail(path, f"its weights do not fit a {config['model']} with {len(saved_classes)} classes at "
                          f"{size} px: {str(error).splitlines()[0][:200]}") from None
    mean = prep["mean"].detach().to(torch.float32)
    if mean.dim() != 3 or mean.shape[0] != 3 or min(mean.shape[1:]) < size:
        raise _fail(path, f"its mean image has shape {tuple(mean.shape)}, expected [3, S, S] with S >= {size}")
    resize = prep.get("resize")
    resize = int(resize) if resize is not None else None
    scale = float(prep.get("scale", 1.0))
    own = Preprocess.run(mean, scale, resize, size)
    chosen = _preprocessing(preprocess, size, own, resize)
    names = _classes(classes, len(saved_classes), os.fspath(path)) if classes is not None else saved_classes
    return Subject(model=model.to(device).eval(), classes=names, input_shape=(3, size, size), mean=mean,
                   scale=scale if chosen is own else chosen.pixel_step, resize=chosen.resize, config=dict(config),
                   history=list(state.get("history") or []), path=path, preprocessing=chosen, kind="run")


# ----------------------------------------------------------------- data handed to the analyses


@dataclass
class Dataset:
    """Images an analysis runs on, held in memory, handed down by the caller
    (``zfcore analyze``, ``zfcore visualize``, ``zfcore demo``); no analysis finds
    its own data.

    Attributes:
        images: uint8 ``[N, 3, H, W]`` pixels (``Subject.preprocess`` brings them
            to the model's input).
        labels: int64 ``[N]``, indices into ``classes`` (the model's), or None
            where the images have none (a flat folder).
        classes: class names (untrusted text).
        description: one line saying where the images come from.
        boxes: int64 ``[N, 4]`` object boxes ``(x0, y0, x1, y1)`` in pixels (end-exclusive), or None.
        landmarks: float ``[N, P, 2]`` landmark points ``(x, y)`` in pixels (NaN where absent), or None.
        train: a disjoint split of the same source to fit on (the linear probes),
            or None.
        skipped: files that could not be decoded (an image folder).
        groups: int64 ``[N]``: the subfolder of each image where the folders
            are not the model's classes (indices into ``group_names``), or None.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    description: str = ""
    boxes: Tensor | None = None
    landmarks: Tensor | None = None
    train: "Dataset | None" = None
    skipped: list[str] = field(default_factory=list)
    groups: Tensor | None = None
    group_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"Dataset: images must be a uint8 Tensor[N, 3, H, W] (got {got})")
        if labels is not None and (not isinstance(labels, Tensor) or labels.shape != (len(images),)):
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"Dataset: labels must be a Tensor[{len(images)}] or None (got {got})")
        for name, value, tail in (("boxes", self.boxes, (4,)), ("landmarks", self.landmarks, None),
                                  ("groups", self.groups, ())):
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
        return Dataset(self.images[index], pick(self.labels), self.classes, self.description,
                       pick(self.boxes), pick(self.landmarks), self.train, self.skipped, pick(self.groups),
                       self.group_names)


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


def folder_dataset(subject: Subject, folder: str | os.PathLike, *, progress: bool = True,
                   workers: int | None = None) -> Dataset:
    """Every image of ``folder`` (a flat folder, or one with class subfolders),
    decoded once (``zfcore.data.read_folder``: worker processes, a progress
    bar) and brought to the model's pixels by ``subject.preprocessing.geometry``
    (an image smaller than the input is resized up first). Unreadable files
    are skipped and counted (``Dataset.skipped``).

    Labels: class subfolders named like the model's classes become those
    classes; other subfolders are kept as ``groups`` (their names in
    ``group_names``) but give no labels, since an analysis would read them as
    the model's classes; a flat folder has neither.

    Raises:
        FileNotFoundError / NotADirectoryError: no such folder.
        ValueError: no image in it, or none decodable.
    """
    from .data import read_folder

    prep = subject.preprocessing
    size = prep.size

    def prepare(image: Tensor) -> Tensor:
        if min(image.shape[-2:]) < size and (prep.resize is None or prep.resize == min(image.shape[-2:])):
            short = min(image.shape[-2:])
            target = prep.resize or size
            shape = tuple(max(target, int(target * s / short)) for s in image.shape[-2:])
            image = torch.nn.functional.interpolate(image[None].float(), size=shape, mode="bilinear",
                                                    antialias=True, align_corners=False)[0]
            image = image.round().clamp(0, 255).to(torch.uint8)
        return prep.geometry(image).contiguous()

    images, groups, names, skipped = read_folder(folder, prepare, workers=workers, progress=progress)
    where = f"image folder {os.fspath(folder)}"
    labels, classes = None, list(subject.classes)
    if groups is not None and all(n in subject.classes for n in names):
        index = {name: i for i, name in enumerate(subject.classes)}
        labels = torch.tensor([index[names[g]] for g in groups.tolist()], dtype=torch.int64)
        where += f" ({len(names)} class folders named as the model's classes)"
    elif groups is not None:
        where += f" ({len(names)} folders that are not the model's class names: unlabelled)"
    else:
        where += " (flat: unlabelled)"
    return Dataset(images, labels, classes, where, skipped=skipped, groups=groups, group_names=list(names))


class _Items(torch.utils.data.Dataset):
    """``(uint8 image, label)`` items of a ``Dataset`` (label -1 where it has none)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.labels = dataset.labels if dataset.labels is not None else torch.full((len(dataset),), -1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset.images[index], int(self.labels[index])


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


def open_dataset(loaded: Subject, data: str, *, progress: bool = True) -> PreparedDataset:
    """``"synthetic"``: the embedded validation images of a zfcore run (same
    seed, size and count as its training run's validation split); otherwise an
    image folder (``folder_dataset``), read once and prepared lazily."""
    from .data import SyntheticShapes

    config = loaded.config
    size = loaded.input_shape[-1]
    if data == "synthetic":
        if loaded.kind != "run":
            raise ValueError("visualize: data 'synthetic' is the embedded data of a zfcore run; give an image "
                             "folder (--data FOLDER)")
        per_class = max(1, int(config.get("per_class", 500)) // 5)
        base = SyntheticShapes("val", seed=int(config.get("seed", 0)), size=size, per_class=per_class)
        return PreparedDataset(base, loaded, list(SyntheticShapes.classes),
                               f"embedded validation images (seed {config.get('seed', 0)}, {size} px)")
    dataset = folder_dataset(loaded, data, progress=progress)
    return PreparedDataset(_Items(dataset), loaded, dataset.classes, dataset.description,
                           skipped=len(dataset.skipped))

"""The training configuration: the paper's recipe as defaults (section 3)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

PAPER_SNAPSHOTS = (1, 2, 5, 10, 20, 30, 40, 64)  # epochs of Fig. 4, out of ~70
REMOVABLE = ("conv3", "conv4", "fc6", "fc7")  # as zfcore.models.convnets.REMOVABLE (not imported: no torch here)
SYNTHETIC_CLASSES = 10  # the embedded data's classes (zfcore.data.CLASSES)


def parse_conv1(text: str) -> tuple[int, int] | None:
    """``--conv1``: ``""`` (the preset's) or ``"KxS"`` -> ``(kernel, stride)``."""
    if not text:
        return None
    parts = str(text).lower().split("x")
    ok = len(parts) == 2 and all(p.strip().isdigit() for p in parts)
    kernel, stride = (int(p) for p in parts) if ok else (0, 0)
    if not ok or kernel < 1 or stride < 1 or stride > kernel:
        raise ValueError(f"--conv1 must be KxS, the first layer's kernel and stride as positive integers with "
                         f"stride <= kernel, e.g. 11x4 or 7x2 (got {text!r})")
    return kernel, stride


def parse_remove(text: str) -> tuple[str, ...]:
    """``--remove``: comma-separated layers among conv3, conv4, fc6, fc7 -> a tuple in that order."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if any(n not in REMOVABLE for n in names) or len(set(names)) != len(names):
        raise ValueError(f"--remove must be comma-separated layers among {', '.join(REMOVABLE)}, each at most "
                         f"once (got {text!r})")
    return tuple(n for n in REMOVABLE if n in names)


def parse_classes(text: str, available: int | None = None) -> tuple[int, ...] | None:
    """``--classes``: ``""`` (all) or comma-separated distinct class indices, at
    least two, each below ``available`` when given -> a tuple in the given order."""
    if not text:
        return None
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts) or len(set(map(int, parts))) != len(parts) or len(parts) < 2:
        raise ValueError(f"--classes must be at least two distinct class indices, comma-separated, e.g. 0,1,2 "
                         f"(got {text!r})")
    indices = tuple(int(p) for p in parts)
    if available is not None and max(indices) >= available:
        raise ValueError(f"--classes must be indices in 0..{available - 1} of the data's {available} classes "
                         f"(got {text!r})")
    return indices


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class TrainConfig:
    out: str = _help("run folder: checkpoints, metrics.jsonl/.csv, snapshots/", default="runs/zfnet_small")
    data: str = _help("'synthetic' (the embedded dataset) or an image folder with train/ and val/ subfolders",
                      default="synthetic")
    model: str = _help("zfnet, alexnet or zfnet_small", default="zfnet_small")
    width: float = _help("scale of the conv channels (None: the preset's)", default=None)
    fc_width: int = _help("fc6/fc7 width (None: the preset's)", default=None)
    conv1: str = _help("first layer's kernel and stride as KxS, e.g. 11x4 (AlexNet-style) or 7x2 (ZFNet-style); "
                       "padding max(0, (K - S) // 2 - 1); '' = the preset's", default="")
    remove: str = _help("comma-separated layers to leave out, among conv3, conv4, fc6, fc7 (with their ReLU and "
                        "dropout; the other layers keep their names)", default="")
    classes: str = _help("comma-separated class indices of the data to train and validate on, relabelled "
                         "0..k-1 in the given order (the model has k outputs); '' = all", default="")
    image_size: int = _help("input side in pixels (synthetic images, or crops of image folders)", default=64)
    per_class: int = _help("synthetic training images per class (val/test: a fifth)", default=500)
    seed: int = _help("seed of the data, the initialization, the data order and dropout", default=0)
    epochs: int = _help("epochs to train", default=12)
    batch_size: int = _help("global mini-batch (split across processes under torchrun)", default=128)
    lr: float = _help("SGD learning rate", default=1e-2)
    momentum: float = _help("SGD momentum", default=0.9)
    weight_decay: float = _help("SGD weight decay", default=0.0)
    dropout: float = _help("dropout in fc6 and fc7", default=0.5)
    init: str = _help("initialization: paper (normal, std --init-std, biases 0), he (He normal, biases 0) or "
                      "torch (PyTorch's default); default: paper, but he for zfnet_small, whose narrow layers "
                      "do not start learning from std 1e-2 within a CPU budget", default=None)
    init_std: float = _help("std of the paper's normal initialization", default=1e-2)
    renorm_radius: float = _help("filter renormalization: conv filters with RMS above this are rescaled to it "
                                 "(0 disables)", default=0.1)
    input_scale: float = _help("multiplier of the mean-subtracted pixels (paper: 1, inputs in [-128, 128]); "
                               "default: 1, but 1/64 for zfnet_small", default=None)
    schedule: str = _help("learning-rate schedule: plateau (the paper: lowered when validation error stalls) or "
                          "cosine (decayed to 0 over the run, per step)", default="plateau")
    warmup_epochs: float = _help("linear learning-rate warm-up over this many epochs (0: none)", default=0.0)
    last_init_std: float = _help("std of fc8's normal initialization (0: as --init); a small fc8 keeps the first "
                                 "steps from killing ReLUs under He initialization", default=0.0)
    plateau_patience: int = _help("epochs without validation improvement before the lr is lowered", default=2)
    plateau_factor: float = _help("factor the lr is lowered by on a plateau", default=0.1)
    snapshot_epochs: str = _help("comma-separated epochs whose weights are kept in snapshots/ "
                                 "(default: the paper's 1,2,5,...,64 scaled to --epochs)", default="")
    checkpoint_every: int = _help("also checkpoint every N steps (0: at epoch ends only)", default=0)
    threads: int = _help("CPU threads (0: torch's default)", default=0)
    device: str = _help("cpu or cuda (under torchrun: cuda:<local rank>)", default="cpu")
    resume: bool = _help("continue from the run folder's last complete checkpoint", default=False)
    resume_from: str = _help("continue from this checkpoint file", default="")
    progress: bool = _help("show progress bars", default=True)

    def __post_init__(self):
        small = self.model == "zfnet_small"
        if self.init is None:
            self.init = "he" if small else "paper"
        if self.input_scale is None:
            self.input_scale = 1 / 64 if small else 1.0
        if self.init not in ("paper", "he", "torch"):
            raise ValueError(f"--init must be paper, he or torch (got {self.init!r})")
        if self.schedule not in ("plateau", "cosine"):
            raise ValueError(f"--schedule must be plateau or cosine (got {self.schedule!r})")
        checks = [("epochs", self.epochs >= 1, ">= 1"), ("batch-size", self.batch_size >= 1, ">= 1"),
                  ("lr", self.lr > 0, "> 0"), ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                  ("weight-decay", self.weight_decay >= 0, ">= 0"), ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
                  ("per-class", self.per_class >= 1, ">= 1"), ("image-size", self.image_size >= 32, ">= 32"),
                  ("init-std", self.init_std > 0, "> 0"), ("renorm-radius", self.renorm_radius >= 0, ">= 0"),
                  ("input-scale", self.input_scale > 0, "> 0"), ("warmup-epochs", self.warmup_epochs >= 0, ">= 0"),
                  ("last-init-std", self.last_init_std >= 0, ">= 0"),
                  ("plateau-patience", self.plateau_patience >= 0, ">= 0"),
                  ("plateau-factor", 0 < self.plateau_factor < 1, "in (0, 1)"), ("threads", self.threads >= 0, ">= 0"),
                  ("checkpoint-every", self.checkpoint_every >= 0, ">= 0"),
                  ("width", self.width is None or self.width > 0, "> 0"),
                  ("fc-width", self.fc_width is None or self.fc_width >= 1, ">= 1")]
        for name, ok, expected in checks:
            if not ok:
                value = getattr(self, name.replace("-", "_"))
                raise ValueError(f"--{name} must be {expected} (got {value!r})")
        conv1 = parse_conv1(self.conv1)
        self.conv1 = f"{conv1[0]}x{conv1[1]}" if conv1 else ""  # one spelling per variant: resume compares them
        self.remove = ",".join(parse_remove(self.remove))
        parse_classes(self.classes, SYNTHETIC_CLASSES if self.data == "synthetic" else None)

    def snapshots(self) -> list[int]:
        if self.snapshot_epochs:
            return sorted({int(e) for e in self.snapshot_epochs.split(",") if e.strip()})
        return sorted({max(1, min(self.epochs, round(e * self.epochs / 64))) for e in PAPER_SNAPSHOTS})

    def model_fingerprint(self) -> dict:
        """What a checkpoint must share with this run to be resumed by it (the
        variant fields only when set, so runs saved before they existed still match)."""
        base = {k: getattr(self, k) for k in ("model", "width", "fc_width", "image_size", "data")}
        return {**base, **{k: getattr(self, k) for k in ("conv1", "remove", "classes") if getattr(self, k)}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per TrainConfig field, with its help and default."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type).split(" ")[0].removesuffix(",")]
            parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"] + " (default: %(default)s)")


def from_arguments(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def demo_config(out: str, *, seed: int = 0, epochs: int | None = None, progress: bool = True) -> TrainConfig:
    """The recipe ``zfcore demo`` trains with: zfnet_small on the embedded data
    (64 px, 500 images per class), SGD lr 1e-2, momentum 0.9, batch 32, dropout
    0.5, filter renormalization 0.1 (the paper's), with He initialization and a
    small fc8 (std 1e-2), one epoch of linear warm-up and a cosine decay over 30
    epochs instead of the paper's plateau rule (under which the loss sits at
    ln 10 and the lr is cut before learning starts on this budget)."""
    return TrainConfig(out=out, model="zfnet_small", seed=seed, epochs=30 if epochs is None else epochs,
                       batch_size=32, schedule="cosine", warmup_epochs=1.0, last_init_std=0.01, progress=progress)

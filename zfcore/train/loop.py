"""The paper's training loop (section 3), resumable after any kill.

Everything random is derived from the seed: the initialization, each epoch's
data order and flips (from the seed and the epoch/step, so nothing needs
saving), and dropout (torch's RNG, saved in every checkpoint). A resumed run
therefore follows the uninterrupted run's loss trajectory exactly. Under
``torchrun`` each process takes an equal slice of every global batch and
DistributedDataParallel averages the gradients, so the result is the one
process's with the same global batch (up to the all-reduce's float order).
"""

from __future__ import annotations

import csv
import math
import shutil
import dataclasses
import io
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import models
from ..data import SyntheticShapes
from .checkpoint import atomic_torch_save, atomic_write_bytes, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, parse_classes, parse_conv1, parse_remove


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    if config.model not in models.PRESETS:
        raise ValueError(f"train: model must be one of {', '.join(models.PRESETS)} (got {config.model!r})")
    init_std = config.init_std if config.init == "paper" else None
    kwargs = {"input_size": config.image_size, "dropout": config.dropout, "init_std": init_std,
              "conv1": parse_conv1(config.conv1), "remove": parse_remove(config.remove)}
    if config.width is not None:
        kwargs["width"] = config.width
    if config.fc_width is not None:
        kwargs["fc_width"] = config.fc_width
    try:
        model = models.PRESETS[config.model](num_classes, **kwargs)
    except ValueError as error:
        raise ValueError(f"train: --image-size {config.image_size} with --conv1 {config.conv1 or '(preset)'} "
                         f"and --remove {config.remove or '(none)'}: {error}") from None
    if config.init == "he":
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    if config.last_init_std > 0:
        nn.init.normal_(last.weight, std=config.last_init_std)
        nn.init.zeros_(last.bias)
    return model


def step_lr(config: TrainConfig, base_lr: float, global_step: int, steps_per_epoch: int) -> float:
    """The lr of one step: the warm-up ramp, then (cosine schedule) the decay to 0."""
    lr = base_lr
    warm = config.warmup_epochs * steps_per_epoch
    if warm > 0:
        lr *= min(1.0, (global_step + 1) / warm)
    if config.schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * global_step / (config.epochs * steps_per_epoch)))
    return lr


@torch.no_grad()
def renormalize_filters(model: nn.Module, radius: float) -> None:
    """Rescale every conv filter whose RMS exceeds ``radius`` to that RMS (paper section 3)."""
    if radius <= 0:
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            rms = module.weight.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            module.weight.mul_((radius / rms).clamp(max=1.0))


def select_classes(labels: torch.Tensor, classes: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions of the images of ``classes`` (in data order) and their labels
    renumbered 0..k-1 in the order ``classes`` gives (``None``: all, unchanged)."""
    labels = torch.as_tensor(labels)
    if classes is None:
        return torch.arange(len(labels)), labels
    remap = torch.full((int(max(int(labels.max()), *classes)) + 1,), -1, dtype=torch.int64)
    remap[list(classes)] = torch.arange(len(classes))
    new = remap[labels]
    keep = torch.nonzero(new >= 0).flatten()
    return keep, new[keep]


class _Split:
    """Images and labels of one split of the embedded data, restricted to some classes."""

    def __init__(self, dataset: SyntheticShapes, classes: tuple[int, ...] | None):
        if classes is None:
            self.images, self.labels = dataset.images, dataset.labels
        else:
            keep, self.labels = select_classes(dataset.labels, classes)
            self.images = dataset.images[keep]

    def __len__(self) -> int:
        return len(self.labels)


class SyntheticData:
    """The embedded dataset as mean-subtracted float batches (``--classes``: only
    those classes' images, relabelled 0..k-1; the mean is theirs)."""

    def __init__(self, config: TrainConfig):
        val_per_class = max(1, config.per_class // 5)
        chosen = parse_classes(config.classes, len(SyntheticShapes.classes))
        self.train = _Split(SyntheticShapes("train", seed=config.seed, size=config.image_size,
                                            per_class=config.per_class), chosen)
        self.val = _Split(SyntheticShapes("val", seed=config.seed, size=config.image_size,
                                          per_class=val_per_class), chosen)
        indices = chosen if chosen is not None else range(len(SyntheticShapes.classes))
        self.classes = [SyntheticShapes.classes[i] for i in indices]
        self.num_classes = len(self.classes)
        self.mean = self.train.images.double().mean(0).float()
        self.scale = config.input_scale
        self.resize = None

    def __len__(self) -> int:
        return len(self.train)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) * self.scale

    def train_batch(self, indices: torch.Tensor, flips: torch.Tensor, seeds: torch.Tensor):
        x = self._prepare(self.train.images[indices])
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        return x, self.train.labels[indices]

    def val_batches(self, batch_size: int):
        for start in range(0, len(self.val), batch_size):
            yield self._prepare(self.val.images[start:start + batch_size]), self.val.labels[start:start + batch_size]


class FolderData:
    """An image folder with ``train/`` and ``val/`` subfolders, prepared as in the
    paper: short side resized, centre crop, mean image subtracted, random crops
    and flips for training, the 10 crops for validation (their softmax averaged)."""

    def __init__(self, config: TrainConfig):
        from ..data import ImageFolderDataset, PaperTransform, mean_image

        root = Path(config.data)
        if not root.is_dir():
            raise FileNotFoundError(f"train: data folder {root} does not exist (expected {root}/train and {root}/val)")
        resize = round(config.image_size * 256 / 224)  # the paper's 256 -> 224 ratio
        self.train = ImageFolderDataset(root / "train", resize=resize)
        self.val = ImageFolderDataset(root / "val", resize=resize)
        if self.train.classes != self.val.classes:
            raise ValueError(f"train: {root}/train and {root}/val have different class folders")
        chosen = parse_classes(config.classes, len(self.train.classes))
        if chosen is not None:
            for split in (self.train, self.val):  # keep only those classes' files, relabelled 0..k-1
                keep, labels = select_classes(torch.tensor(split.targets), chosen)
                split.samples = [(split.samples[i][0], int(label)) for i, label in zip(keep.tolist(), labels.tolist())]
                split.targets = labels.tolist()
                split.classes = [split.classes[i] for i in chosen]
                split.class_to_idx = {name: i for i, name in enumerate(split.classes)}
        self.num_classes = len(self.train.classes)
        self.classes = list(self.train.classes)
        self.resize = resize
        self.mean = mean_image(self.train, max_images=2000)
        self.crop, self.scale = config.image_size, config.input_scale
        self._transform = PaperTransform

    def __len__(self) -> int:
        return len(self.train)

    def train_batch(self, indices: torch.Tensor, flips: torch.Tensor, seeds: torch.Tensor):
        images, labels = [], []
        for index, seed in zip(indices.tolist(), seeds.tolist()):
            image, label = self.train[index]
            transform = self._transform(self.mean, self.crop, train=True,
                                        generator=torch.Generator().manual_seed(seed))
            images.append(transform(image) * self.scale)
            labels.append(label)
        return torch.stack(images), torch.tensor(labels)

    def val_batches(self, batch_size: int):
        transform = self._transform(self.mean, self.crop, train=False)
        for start in range(0, len(self.val), max(1, batch_size // 10)):
            items = [self.val[i] for i in range(start, min(start + max(1, batch_size // 10), len(self.val)))]
            yield (torch.stack([transform.ten_crops(image) for image, _ in items]) * self.scale,
                   torch.tensor([label for _, label in items]))


@torch.no_grad()
def evaluate(model: nn.Module, batches, device) -> dict:
    """Top-1/top-5 error and mean loss of ``model`` (eval mode) over ``batches``;
    a batch of crops ``[B, K, C, H, W]`` is scored by its K crops' mean softmax."""
    model.eval()
    total = top1 = top5 = 0
    loss = 0.0
    for x, y in batches:
        if x.dim() == 5:
            probs = F.softmax(model(x.flatten(0, 1).to(device)), dim=1).view(*x.shape[:2], -1).mean(1)
            logits = probs.clamp_min(1e-12).log()
        else:
            logits = model(x.to(device))
        y = y.to(device)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (ranked[:, 0] == y).sum().item()
        top5 += (ranked == y[:, None]).any(1).sum().item()
        total += len(y)
    model.train()
    return {"val_top1_error": 1 - top1 / total, "val_top5_error": 1 - top5 / total, "val_loss": loss / total}


def _prepare_output(config: TrainConfig) -> Path:
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"train: cannot write to the output folder {out} ({error.strerror})") from None
    if not (config.resume or config.resume_from) and (out / "LATEST").exists():
        raise FileExistsError(f"train: {out} already holds a run; pass --resume to continue it or choose "
                              "another --out (nothing was overwritten)")
    return out


def _write_metrics(out: Path, history: list[dict]) -> None:
    atomic_write_bytes(out / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history).encode())
    text = io.StringIO()
    if history:
        writer = csv.DictWriter(text, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    atomic_write_bytes(out / "metrics.csv", text.getvalue().encode())


def _seeded(*parts: int) -> torch.Generator:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % (2**62)
    return torch.Generator().manual_seed(seed)


def train(config: TrainConfig) -> dict:
    """Train ``config.model`` with the paper's recipe; returns the last epoch's metrics.

    Example:
        >>> train(TrainConfig(out="runs/demo", epochs=2, per_class=50))
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if config.device.startswith("cuda") else "gloo")
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if distributed and config.device == "cuda"
                          else config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.batch_size % world:
        raise ValueError(f"train: batch_size {config.batch_size} must divide among {world} processes")
    created = not Path(config.out).exists()
    out = _prepare_output(config) if rank == 0 else Path(config.out)
    try:
        return _train(config, out, world, rank, distributed, device)
    except BaseException:
        # a run that failed before its first checkpoint leaves no folder behind (only one it created)
        if rank == 0 and created and out.is_dir() and not (out / "LATEST").exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def _saved(config: TrainConfig, data, model: nn.Module) -> dict:
    """What every saved file carries for ``zfcore.load``: plain values and tensors only."""
    return {"zfcore": 1, "model": model.state_dict(), "classes": list(data.classes),
            "preprocess": {"mean": data.mean.detach().float().clone(), "scale": float(config.input_scale),
                           "crop": int(config.image_size), "resize": data.resize},
            "config": {**dataclasses.asdict(config), "fingerprint": config.model_fingerprint()}}


def _train(config: TrainConfig, out: Path, world: int, rank: int, distributed: bool, device) -> dict:
    if distributed:
        dist.barrier()

    data = SyntheticData(config) if config.data == "synthetic" else FolderData(config)
    steps = len(data) // config.batch_size
    if steps == 0:
        raise ValueError(f"train: batch_size {config.batch_size} exceeds the {len(data)} training images")

    torch.manual_seed(config.seed)
    model = build_model(config, data.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor,
                                                           patience=config.plateau_patience)
    epoch, step, history, running = 0, 0, [], 0.0
    resumed = load_checkpoint(Path(config.resume_from)) if config.resume_from else None
    source = Path(config.resume_from) if config.resume_from else None
    if resumed is None and config.resume:
        found = latest_checkpoint(out)
        if found:
            source, resumed = found
    if resumed is not None:
        if resumed["config"].get("fingerprint") != config.model_fingerprint():
            raise ValueError(f"train: checkpoint {source} is of another model or data "
                             f"({resumed['config'].get('fingerprint')}), not {config.model_fingerprint()}")
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        torch.set_rng_state(resumed["rng"])
        epoch, step, history = resumed["epoch"], resumed["step"], resumed["history"]
        # The loss summed over the epoch's steps before the checkpoint: an
        # epoch's train_loss is the mean over all its steps, interrupted or not.
        running = float(resumed.get("running_loss", 0.0))
    net = nn.parallel.DistributedDataParallel(model) if distributed else model
    snapshots = set(config.snapshots())
    local = config.batch_size // world

    def checkpoint(epoch_: int, step_: int, running_: float) -> None:
        if rank == 0:
            state = {**_saved(config, data, model), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch_,
                     "step": step_, "running_loss": running_, "history": history}
            save_checkpoint(out, state, epoch_ * steps + step_)
        if distributed:
            dist.barrier()

    net.train()
    result = history[-1] if history else {}
    while epoch < config.epochs:
        started = time.time()
        order = torch.randperm(len(data), generator=_seeded(config.seed, epoch))
        bar = tqdm(range(step, steps), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=not config.progress or rank != 0, leave=False)
        running = running if step else 0.0
        for step in bar:
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            flips = torch.rand(len(batch), generator=_seeded(config.seed, epoch, step)) < 0.5
            seeds = torch.randint(2**62, (len(batch),), generator=_seeded(config.seed, epoch, step, 1))
            mine = slice(rank * local, (rank + 1) * local)
            global_step = epoch * steps + step
            if config.schedule == "cosine" or global_step < config.warmup_epochs * steps:
                for group in optimizer.param_groups:  # from the step count alone: a resumed run is identical
                    group["lr"] = step_lr(config, config.lr, global_step, steps)
            x, y = data.train_batch(batch[mine], flips[mine], seeds[mine])
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            renormalize_filters(model, config.renorm_radius)
            running += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            done = step + 1
            if config.checkpoint_every and (epoch * steps + done) % config.checkpoint_every == 0 and done < steps:
                checkpoint(epoch, done, running)
        metrics = evaluate(model, data.val_batches(256), device)
        if config.schedule == "plateau":
            scheduler.step(metrics["val_top1_error"])
        epoch, step = epoch + 1, 0
        result = {"epoch": epoch, "train_loss": running / max(1, steps), **metrics,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 2)}
        history.append(result)
        if rank == 0 and epoch in snapshots:
            (out / "snapshots").mkdir(exist_ok=True)
            atomic_torch_save({**_saved(config, data, model), "epoch": epoch},
                              out / "snapshots" / f"epoch-{epoch:03d}.pt")
        checkpoint(epoch, 0, 0.0)
        if rank == 0:
            _write_metrics(out, history)
            print(f"epoch {epoch}: train loss {result['train_loss']:.3f}, val top-1 error "
                  f"{result['val_top1_error']:.3f}, top-5 {result['val_top5_error']:.3f}, lr {result['lr']:g}, "
                  f"{result['seconds']:.1f} s", flush=True)
    if rank == 0:
        atomic_torch_save({**_saved(config, data, model), "history": history}, out / "model.pt")
    return result

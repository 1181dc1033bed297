"""``train_or_reuse``: train a configuration into its folder once.

The analyses that train their own models (architecture, ablation,
generalization) call it for each run: a finished run of the same
configuration is reused, an interrupted one resumed from its last checkpoint,
and a folder holding a run of another configuration is refused, naming the
differences.

Example:
    >>> reused, seconds = train_or_reuse(demo_config("runs/x"), "ablation")
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .loop import train

__all__ = ["comparable_config", "output_folder", "train_or_reuse"]

IRRELEVANT = ("out", "resume", "resume_from", "progress", "threads", "device", "checkpoint_every", "fingerprint")
"""Saved configuration fields that do not change what is trained: a finished
run is reused whatever they are."""


def comparable_config(config: dict) -> dict:
    """The fields of a saved configuration that decide what is trained (all but ``IRRELEVANT``)."""
    return {k: v for k, v in config.items() if k not in IRRELEVANT}


def _differences(saved: dict, wanted: TrainConfig) -> list[str]:
    want = comparable_config(dataclasses.asdict(wanted))
    have = comparable_config(saved)
    return [f"{k}: {have.get(k)!r} there, {want[k]!r} wanted" for k in want if have.get(k) != want[k]]


def output_folder(out: str | os.PathLike, caller: str) -> Path:
    """``out`` as a created folder; one that cannot be created is a
    ``PermissionError`` naming it."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"{caller}: cannot create the output folder {out} ({error.strerror})") from None
    return out


def train_or_reuse(config: TrainConfig, caller: str = "ablation") -> tuple[bool, float]:
    """Train ``config`` into its folder ``config.out`` unless a finished run of
    the same configuration is there (reused), resuming an interrupted one from
    its last checkpoint; a run of another configuration there is a ValueError
    naming the differences (``caller`` first). Returns ``(reused, training seconds)``."""
    folder = Path(config.out)
    done = folder / "model.pt"
    if done.is_file():
        saved = torch.load(done, map_location="cpu", weights_only=True)["config"]
        wrong = _differences(saved, config)
        if wrong:
            raise ValueError(f"{caller}: {folder} holds a finished run of another configuration ({'; '.join(wrong)});"
                             f" delete it or choose another out")
        return True, 0.0
    resume = False
    if (folder / "LATEST").exists():
        found = latest_checkpoint(folder)
        if found is not None:
            wrong = _differences(found[1]["config"], config)
            if wrong:
                raise ValueError(f"{caller}: {folder} holds an interrupted run of another configuration "
                                 f"({'; '.join(wrong)}); delete it or choose another out")
            resume = True
    started = time.time()
    train(dataclasses.replace(config, resume=resume))
    return False, time.time() - started

"""Checkpoints that survive a kill at any moment.

A checkpoint is written to a temporary file in the run folder, flushed and
fsync'ed, renamed into place, and only then committed by an atomically
replaced marker (``LATEST``) that names it, with the folder fsync'ed after each
step. A reader trusts only what ``LATEST`` names, falling back to older
complete checkpoints, so a kill during a save leaves the previous checkpoint
in force and nothing half-written is ever loaded.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from pathlib import Path

import torch

MARKER = "LATEST"


class UnsafeCheckpointError(ValueError):
    """A checkpoint that only arbitrary unpickling could load: refused."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, whole."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        try:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
    _fsync_dir(path.parent)


def atomic_torch_save(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_checkpoint(folder: Path, state: dict, step: int, keep: int = 2) -> Path:
    """Save ``state`` as ``checkpoint-<step>.pt``, commit it in ``LATEST``, and
    remove all but the ``keep`` newest complete checkpoints."""
    folder = Path(folder)
    path = folder / f"checkpoint-{step:09d}.pt"
    atomic_torch_save(state, path)
    history = _committed(folder)
    history = [name for name in history if name != path.name] + [path.name]
    atomic_write_bytes(folder / MARKER, json.dumps({"checkpoints": history[-keep:]}).encode())
    for name in history[:-keep]:
        (folder / name).unlink(missing_ok=True)
    for stray in folder.glob("checkpoint-*.pt"):  # files of saves killed before their commit
        if stray.name not in history[-keep:]:
            stray.unlink(missing_ok=True)
    for stray in folder.glob(".checkpoint-*.tmp"):  # and of saves killed while writing (one writer: not ours)
        stray.unlink(missing_ok=True)
    return path


def _committed(folder: Path) -> list[str]:
    try:
        return list(json.loads((Path(folder) / MARKER).read_text())["checkpoints"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def load_checkpoint(path: Path) -> dict:
    """Load one checkpoint file; a truncated or foreign file is a clear error naming it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # untrusted: never unpickle code
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as error:
        if "weights_only" not in str(error).lower().replace(" ", "_"):
            raise ValueError(f"checkpoint {path} is truncated or not a zfcore checkpoint") from None
        raise UnsafeCheckpointError(
            f"checkpoint {path} holds objects other than tensors, numbers and strings (loading it would run code "
            f"from the file); it was refused and never unpickled") from None
    except Exception as error:  # torch raises several types for damaged files
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"checkpoint {path} is truncated, not a zfcore checkpoint, or holds objects other than "
                         f"tensors, numbers and strings, which are never unpickled ({first})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"checkpoint {path} is not a zfcore training checkpoint")
    return state


def latest_checkpoint(folder: Path) -> tuple[Path, dict] | None:
    """The newest committed checkpoint of a run folder that loads, or None. A
    committed checkpoint that would need arbitrary unpickling is not skipped: it
    stops the resume (UnsafeCheckpointError), since zfcore never writes one."""
    for name in reversed(_committed(folder)):
        try:
            return Path(folder) / name, load_checkpoint(Path(folder) / name)
        except UnsafeCheckpointError:
            raise
        except (FileNotFoundError, ValueError):
            continue
    return None

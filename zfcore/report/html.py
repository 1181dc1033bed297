"""What every page of the report is written with: the Jinja2 templates
(autoescaping: every name in a page is untrusted text), safe file-name stems,
PNG files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["TEMPLATES", "environment", "save_png", "slug"]

TEMPLATES = Path(__file__).with_name("templates")


def slug(name: str, index: int) -> str:
    """A safe file-name stem for an untrusted name: its page number and the
    name's letters, digits, ``_`` and ``-`` (nothing else; at most 40)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_")[:40]
    return f"{index:02d}-{cleaned or 'layer'}"


def save_png(array, path: Path) -> tuple[int, int]:
    """uint8 ``[3, H, W]`` (channels first, Tensor or ndarray) -> PNG; returns (width, height)."""
    from PIL import Image

    array = np.ascontiguousarray(np.asarray(array).transpose(1, 2, 0))
    image = Image.fromarray(array)
    image.save(path, compress_level=1)
    return image.size


def environment():
    """The templates' Jinja2 environment (autoescape, strict undefined)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)

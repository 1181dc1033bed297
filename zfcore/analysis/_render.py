"""What every analysis renderer starts with."""

from __future__ import annotations

from pathlib import Path


def begin(result, cls: type, assets) -> tuple:
    """``(pyplot, result, assets)``: matplotlib's pyplot on the file-only Agg
    backend, ``result`` as a ``cls`` (rebuilt by ``cls.from_dict`` when it is
    the saved dict form) and the folder ``assets`` as a created ``Path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # class names are untrusted text (folder names): "$...$" must stay text, not mathtext
    matplotlib.rcParams["text.parse_math"] = False

    if isinstance(result, dict):
        result = cls.from_dict(result)
    assets = Path(assets)
    assets.mkdir(parents=True, exist_ok=True)
    return plt, result, assets

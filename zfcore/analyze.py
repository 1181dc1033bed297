"""``zfcore analyze NAME``: run one of the paper's analyses on a trained model
and add its page to a report folder.

Each analysis's result is saved as ``results/analysis-NAME.pt`` (plain tensors
and values, read back with ``weights_only=True``), its figures go to
``assets/analysis-NAME/`` under fixed names, its page is
``analysis-NAME.html``. ``zfcore report --from DIR`` re-renders the pages from
the saved results without recomputing anything.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from pathlib import Path

import torch

ANALYSES = {
    "occlusion": "occlusion sensitivity (Fig. 7)",
    "invariance": "translation, scale and rotation invariance (Fig. 5)",
    "correspondence": "correspondence of face parts (Fig. 8, Table 1)",
    "probes": "linear probes per layer (Table 7)",
    "evolution": "feature evolution over the run's snapshots (Fig. 4)",
}
DEMO_ANALYSES = ("occlusion", "invariance", "correspondence", "probes", "evolution")


def _embedded_val(loaded):
    from .visualize import open_dataset

    return open_dataset(loaded, "synthetic")


def _run(name: str, loaded, *, quick: bool, progress: bool):
    """The analysis ``name`` on the embedded validation data of ``loaded``'s run."""
    size = loaded.input_shape[-1]
    if name == "occlusion":
        from .analysis.occlusion import occlusion

        base = _embedded_val(loaded).base
        index = torch.arange(len(base.labels))[:10 if quick else 40]
        images = loaded.preprocess(base.images[index])
        patch = max(1, round(size / 4))
        layer = [n for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Conv2d)][-1]
        result = occlusion(loaded.model, images, base.labels[index], layer=layer, patch_size=patch,
                           stride=max(1, patch // 2), progress=progress)
        return result, {"images": base.images[index], "boxes": base.boxes[index], "classes": loaded.classes}
    if name == "invariance":
        from .analysis.invariance import EMBEDDED_ROTATION_SYMMETRIC, embedded_images, invariance

        images, labels = embedded_images(loaded, per_class=1 if quick else 4)
        symmetric = [c for c in EMBEDDED_ROTATION_SYMMETRIC if c in loaded.classes]
        return invariance(loaded.model, images, labels, preprocess=loaded.preprocess, classes=loaded.classes,
                          rotation_symmetric=symmetric, progress=progress), {}
    if name == "correspondence":
        from .analysis.correspondence import correspondence

        base = _embedded_val(loaded).base
        if "face" not in loaded.classes:
            raise ValueError("analyze: correspondence needs a model trained on the embedded data (its 'face' class)")
        face = base.labels == loaded.classes.index("face")
        return correspondence(loaded.model, loaded.preprocess(base.images[face]), base.landmarks[face],
                              display=base.images[face], progress=progress), {}
    if name == "probes":
        from .analysis.probes import depth_layers, embedded_splits, linear_probes

        train, test = embedded_splits(loaded, 20 if quick else 100, 20 if quick else 100)
        return linear_probes(loaded.model, train, test, depth_layers(loaded.model), progress=progress), {}
    if name == "evolution":
        from .analysis.evolution import feature_evolution

        if loaded.run_folder is None:
            raise ValueError("analyze: evolution needs the run folder of the model (its snapshots/)")
        data = _embedded_val(loaded)
        return feature_evolution(loaded.run_folder, data, maps_per_layer=4 if quick else 8, progress=progress), {}
    raise ValueError(f"analyze: unknown analysis {name!r}; choose one of {', '.join(ANALYSES)}")


def analyze(name: str, checkpoint: str | os.PathLike, out: str | os.PathLike, *, quick: bool = False,
            progress: bool = True, render: bool = True) -> Path:
    """Run analysis ``name`` on the model at ``checkpoint`` (its run's embedded
    validation data), save its result in ``out/results/`` and (``render``)
    write the report's pages; returns the page's path."""
    from . import load
    from .train.checkpoint import atomic_torch_save

    if name not in ANALYSES:
        raise ValueError(f"analyze: unknown analysis {name!r}; choose one of {', '.join(ANALYSES)}")
    loaded = load(checkpoint)
    start = time.perf_counter()
    result, extra = _run(name, loaded, quick=quick, progress=progress)
    seconds = time.perf_counter() - start
    saved = {"result": result.as_dict(), "extra": extra, "checkpoint": os.fspath(checkpoint), "seconds": seconds}
    folder = Path(out) / "results"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(saved, folder / f"analysis-{name}.pt")
    if render:
        rerender(out, progress=progress)
    return Path(out) / f"analysis-{name}.html"


def rerender(out: str | os.PathLike, *, progress: bool = True) -> None:
    """The whole report folder re-rendered when it holds ``zfcore visualize``
    results (so the overview links every analysis), else the analysis pages."""
    from .report import render

    if (Path(out) / "results" / "meta.json").is_file():
        render(out, progress=progress)
    else:
        render_analyses(out)


def saved_analyses(out: str | os.PathLike) -> list[str]:
    folder = Path(out) / "results"
    return [name for name in ANALYSES if (folder / f"analysis-{name}.pt").is_file()]


def render_analyses(source: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """(Re)write every analysis page into ``out`` (default ``source``) from the
    results saved in the report folder ``source``; nothing is recomputed."""
    from . import __version__
    from .report import _TEMPLATES, _environment

    source = Path(source)
    out = Path(out) if out is not None else source
    names = saved_analyses(source)
    if not names:
        return []
    shutil.copyfile(_TEMPLATES / "style.css", out / "style.css")
    entries = [{"name": name, "file": f"analysis-{name}.html"} for name in names]
    env = _environment()
    written = []
    for name in names:
        saved = torch.load(source / "results" / f"analysis-{name}.pt", weights_only=True)
        module = importlib.import_module(f".analysis.{name}", __package__)
        cls = next(v for v in vars(module).values() if isinstance(v, type) and hasattr(v, "from_dict")
                   and v.__module__ == module.__name__)
        result = cls.from_dict(saved["result"])
        assets = out / "assets" / f"analysis-{name}"
        if assets.exists():
            shutil.rmtree(assets)
        assets.mkdir(parents=True)
        page = module.render(result, assets, **saved.get("extra", {}))
        for figure in page["figures"]:
            figure["file"] = f"assets/analysis-{name}/{figure['file']}"
        html = env.get_template("analysis.html").render(
            page=page, analyses=entries, current=f"analysis-{name}.html", has_index=(out / "index.html").is_file(),
            checkpoint=saved.get("checkpoint", ""), seconds=float(saved.get("seconds", 0.0)), version=__version__)
        (out / f"analysis-{name}.html").write_text(html, encoding="utf-8")
        written.append(out / f"analysis-{name}.html")
    return written

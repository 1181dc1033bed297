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
    "architecture": "first-layer choices compared: 11x11 stride 4 against 7x7 stride 2 (Fig. 6; trains 2 models)",
    "ablation": "layers removed or resized (Tables 2-3; trains a model per variant)",
    "generalization": "frozen features with a new softmax on new classes against training from scratch "
                      "(Tables 4-6; trains models)",
}
TOOLBOX = {
    "neighbours": "nearest neighbours in feature space against pixel space (the lecture's semantic check)",
    "embedding": "PCA and t-SNE of a layer's features, coloured by class",
    "gradcam": "Grad-CAM and guided Grad-CAM (Selvaraju et al.)",
    "adversarial": "FGSM and PGD adversarial examples, accuracy against epsilon",
    "inversion": "images reconstructed from a layer's features (Mahendran & Vedaldi)",
    "class_model": "inputs maximising each class score (Simonyan et al.)",
    "deepdream": "DeepDream: what a layer detects, amplified over octaves",
    "style": "texture synthesis and style transfer by Gram matrices (Gatys et al.)",
    "pointing": "the pointing game: where each saliency method's maximum falls, against the object's box",
}
"""The wider toolbox beside the paper (issue 14): each is ``zfcore.analysis.NAME``
with ``analyze_embedded(loaded, quick=, progress=, seed=)`` and ``render``."""
ANALYSES.update(TOOLBOX)
TRAINING = ("architecture", "ablation", "generalization")
"""The analyses that train their own models (into ``runs``); ``checkpoint`` is
not needed by them (generalization takes one as its pretrained run)."""
DEMO_ANALYSES = ("occlusion", "invariance", "correspondence", "probes", "evolution",
                 "neighbours", "embedding", "gradcam", "inversion", "class_model", "adversarial")
"""The quick versions ``zfcore demo`` adds to its report."""


def _embedded_val(loaded):
    from .visualize import open_dataset

    return open_dataset(loaded, "synthetic")


def _run(name: str, loaded, *, quick: bool, progress: bool, seed: int = 0):
    """The analysis ``name`` on the embedded validation data of ``loaded``'s run."""
    if name in TOOLBOX:
        module = importlib.import_module(f".analysis.{name}", __package__)
        return module.analyze_embedded(loaded, quick=quick, progress=progress, seed=seed)
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
        return result, {"images": base.images[index], "boxes": base.boxes[index], "classes": loaded.classes,
                        "projections": _map_projections(loaded, images, result)}
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


def _map_projections(loaded, images, result):
    """Fig. 7 (c): the deconvnet projection of each image's chosen map (the
    whole map, all its activations kept), for display (``display_signed``)."""
    from .deconv import Deconvnet, Request
    from .report import display_signed

    net = Deconvnet(loaded.model, loaded.input_shape)
    requests = [Request(i, result.layer, int(c), "map") for i, c in enumerate(result.channel.tolist())]
    return display_signed(net.project_many(images, requests))


def _train_and_run(name: str, checkpoint, runs: Path, *, quick: bool, progress: bool, seed: int,
                   variants: tuple[str, ...] | None):
    """The analyses that train models, into ``runs`` (finished runs there are
    reused, interrupted ones resumed)."""
    if variants is not None and name != "ablation":
        raise ValueError(f"analyze: variants are ablation's; {name} takes none")
    if name == "architecture":
        from .analysis.architecture import architecture

        return architecture(runs, quick=quick, seed=seed, progress=progress), {}
    if name == "ablation":
        from .analysis.ablation import DEFAULT, ablation

        return ablation(runs, variants=variants or DEFAULT, quick=quick, progress=progress,
                        base=_demo_recipe(runs, seed, progress)), {}
    from .analysis.generalization import generalization

    return generalization(Path(checkpoint) if checkpoint is not None else None, runs, quick=quick, seed=seed,
                          progress=progress, base=_demo_recipe(runs, seed, progress)), {}


def _demo_recipe(runs: Path, seed: int, progress: bool):
    """The ``zfcore demo`` training recipe with ``seed`` (looked up at call time)."""
    from . import train

    return train.demo_config(str(runs), seed=seed, progress=progress)


def analyze(name: str, checkpoint: str | os.PathLike | None, out: str | os.PathLike, *, quick: bool = False,
            progress: bool = True, render: bool = True, runs: str | os.PathLike | None = None, seed: int = 0,
            variants: tuple[str, ...] | None = None) -> Path:
    """Run analysis ``name`` and save its result in ``out/results/``; with
    ``render`` write the report's pages; returns the page's path.

    The analyses of a trained model (occlusion, invariance, correspondence,
    probes, evolution) need ``checkpoint`` (its run's embedded validation data
    is used). Those in ``TRAINING`` train their own models into ``runs``
    (default ``out/runs/NAME``): ``seed`` seeds them, ``variants`` chooses
    ablation's, and generalization takes ``checkpoint`` as its pretrained run
    when given (else it trains one). The toolbox analyses (``TOOLBOX``) need
    ``checkpoint`` too; ``seed`` seeds whatever they draw at random."""
    from . import load
    from .train.checkpoint import atomic_torch_save

    if name not in ANALYSES:
        raise ValueError(f"analyze: unknown analysis {name!r}; choose one of {', '.join(ANALYSES)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 31:
        raise ValueError(f"analyze: seed must be a non-negative int below 2**31 (got {seed!r})")
    start = time.perf_counter()
    if name in TRAINING:
        runs = Path(runs) if runs is not None else Path(out) / "runs" / name
        result, extra = _train_and_run(name, checkpoint, runs, quick=quick, progress=progress, seed=seed,
                                       variants=variants)
    else:
        if checkpoint is None:
            raise ValueError(f"analyze: {name} needs --checkpoint, a model.pt written by zfcore train")
        result, extra = _run(name, load(checkpoint), quick=quick, progress=progress, seed=seed)
    seconds = time.perf_counter() - start
    saved = {"result": result.as_dict(), "extra": extra,
             "checkpoint": "" if checkpoint is None else os.fspath(checkpoint), "seconds": seconds,
             "runs": os.fspath(runs) if name in TRAINING else ""}
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


def nav_entries(names: list[str]) -> list[dict]:
    """The report's navigation links to the analysis pages ``names``: the
    paper's analyses first, then the toolbox's under a label of their own."""
    paper = [n for n in names if n not in TOOLBOX]
    tools = [n for n in names if n in TOOLBOX]
    return ([{"name": n, "file": f"analysis-{n}.html", "group": "paper", "description": ANALYSES[n], "first": False}
             for n in paper]
            + [{"name": n.replace("_", " "), "file": f"analysis-{n}.html", "group": "toolbox",
                "description": ANALYSES[n], "first": i == 0} for i, n in enumerate(tools)])


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
    entries = nav_entries(names)
    env = _environment()
    written = []
    for name in names:
        saved = torch.load(source / "results" / f"analysis-{name}.pt", weights_only=True)
        module = importlib.import_module(f".analysis.{name}", __package__)
        assets = out / "assets" / f"analysis-{name}"
        if assets.exists():
            shutil.rmtree(assets)
        assets.mkdir(parents=True)
        page = module.render(saved["result"], assets, **saved.get("extra", {}))
        for figure in page["figures"]:
            figure["file"] = f"assets/analysis-{name}/{figure['file']}"
        page.setdefault("claims_title", "The method's claims, checked on these numbers" if name in TOOLBOX
                        else "The paper's claims, checked on these numbers")
        html = env.get_template("analysis.html").render(
            page=page, analyses=entries, current=f"analysis-{name}.html", has_index=(out / "index.html").is_file(),
            checkpoint=saved.get("checkpoint", ""), runs=saved.get("runs", ""),
            seconds=float(saved.get("seconds", 0.0)), version=__version__)
        (out / f"analysis-{name}.html").write_text(html, encoding="utf-8")
        written.append(out / f"analysis-{name}.html")
    return written

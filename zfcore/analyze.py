"""``zfcore analyze NAME``: run one analysis of the registry
(``zfcore.analysis.registry``) and add its page to a report folder.

The caller chooses the subject and the data: ``analyze`` loads the checkpoint
as a ``Subject`` and hands it, with the run's embedded validation images as
one ``Dataset``, to the analysis; an analysis that cannot run on them says why
in one sentence. Each result is saved as ``results/analysis-NAME.pt`` (its
``to_plain()`` form, read back with ``weights_only=True``), its figures go to
``assets/analysis-NAME/``, its page is ``analysis-NAME.html``. ``zfcore report
--from DIR`` re-renders the pages from the saved results without recomputing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .analysis.registry import analyses, get
from .load import Dataset, Subject, embedded_dataset, folder_dataset, load
from .report import rerender
from .train.checkpoint import atomic_torch_save

__all__ = ["ANALYSES", "DEMO_ANALYSES", "TOOLBOX", "TRAINING", "analyze", "analyze_subject", "embedded_data",
           "rerender", "run_analysis"]

ANALYSES = {name: spec.description for name, spec in analyses().items()}
"""Every analysis by name, with its one-line description (the paper's first)."""
TOOLBOX = {name: spec.description for name, spec in analyses().items() if spec.group == "toolbox"}
TRAINING = tuple(name for name, spec in analyses().items() if spec.trains)
"""The analyses that train their own models (into ``runs``)."""
DEMO_ANALYSES = tuple(name for name, spec in analyses().items() if spec.demo)
"""The quick versions ``zfcore demo`` adds to its report."""

TRAIN_PER_CLASS = 100
"""Training images per class handed along (``Dataset.train``) to the analyses that fit on a split."""


def embedded_data(subject: Subject, name: str) -> Dataset:
    """The embedded validation images of ``subject``'s run, as analysis
    ``name`` gets them (with a training split where it needs one)."""
    needs = get(name).needs
    return embedded_dataset(subject, train_per_class=TRAIN_PER_CLASS if "train split" in needs else None)


def run_analysis(name: str, subject: Subject | None, dataset: Dataset | None, *, quick: bool = False,
                 progress: bool = True, seed: int = 0, **options):
    """Analysis ``name`` on ``subject`` and ``dataset``: ``(result, extra)``. What
    it cannot run on is a ``ValueError`` saying why in one sentence; ``options``
    are those it declares (``runs``, ``variants``, ``base``, ``checkpoint``)."""
    spec = get(name)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 31:
        raise ValueError(f"analyze: seed must be a non-negative int below 2**31 (got {seed!r})")
    for key in sorted(k for k, v in options.items() if v is not None and k not in spec.options):
        owners = " and ".join(n for n, a in analyses().items() if key in a.options) or "no analysis"
        raise ValueError(f"analyze: {key} {'are' if key.endswith('s') else 'is'} {owners}'s; {name} takes none")
    reason = spec.refusal(subject, dataset)
    if reason is not None:
        raise ValueError(f"analyze: {reason}")
    chosen = {k: v for k, v in options.items() if k in spec.options}
    return spec.run(subject, dataset, quick=quick, progress=progress, seed=seed, **chosen)


def analyze(name: str, checkpoint: str | os.PathLike | Subject | None, out: str | os.PathLike, *,
            quick: bool = False, progress: bool = True, render: bool = True, runs: str | os.PathLike | None = None,
            seed: int = 0, variants: tuple[str, ...] | None = None, data: str | os.PathLike | None = None) -> Path:
    """Run analysis ``name`` and save its result in ``out/results/``; with
    ``render`` write the report's pages; returns the page's path.

    Most analyses need a model: ``checkpoint`` is a ``Subject`` (``zfcore.load``:
    any model) or a zfcore run's path. They run on the image folder ``data``
    (``zfcore.load.folder_dataset``) or, by default, on a zfcore run's embedded
    validation images. Those in ``TRAINING`` train their own models into
    ``runs`` (default ``out/runs/NAME``): ``seed`` seeds them, ``variants``
    chooses ablation's, and generalization takes ``checkpoint`` as its
    pretrained run when given (else it trains one). The toolbox's ``seed``
    seeds whatever they draw at random."""
    spec = get(name)
    if checkpoint is None and "subject" in spec.needs:
        raise ValueError(f"analyze: {name} needs a model: --model SPEC [--weights FILE] or --checkpoint model.pt")
    subject = checkpoint if isinstance(checkpoint, Subject) or checkpoint is None else load(checkpoint)
    dataset = None
    if subject is not None and not spec.trains:
        if data is not None:
            dataset = folder_dataset(subject, data, progress=progress)
        elif subject.kind == "run":
            dataset = embedded_data(subject, name)
        else:
            raise ValueError(f"analyze: {name} needs images: give an image folder (--data FOLDER); the embedded "
                             f"images belong to zfcore runs")
    elif spec.trains and subject is not None and subject.kind != "run":
        raise ValueError(f"analyze: {name} trains zfcore models of its own; --model is for the analyses of a given "
                         f"model (it takes a zfcore run as --checkpoint)")
    return analyze_subject(name, subject, dataset, out, quick=quick, progress=progress, render=render, runs=runs,
                           seed=seed, variants=variants)


def analyze_subject(name: str, subject: Subject | None, dataset: Dataset | None, out: str | os.PathLike, *,
                    quick: bool = False, progress: bool = True, render: bool = True,
                    runs: str | os.PathLike | None = None, seed: int = 0,
                    variants: tuple[str, ...] | None = None) -> Path:
    """``analyze`` on a subject and dataset the caller has already chosen
    (``zfcore demo`` loads its model and data once for all its analyses)."""
    spec = get(name)
    start = time.perf_counter()
    options = {"variants": variants}
    if spec.trains:
        runs = Path(runs) if runs is not None else Path(out) / "runs" / name
        options["runs"] = runs
    result, extra = run_analysis(name, subject, dataset, quick=quick, progress=progress, seed=seed, **options)
    seconds = time.perf_counter() - start
    path = getattr(subject, "path", None)
    saved = {"result": result.to_plain(), "extra": extra, "checkpoint": "" if path is None else os.fspath(path),
             "seconds": seconds, "runs": os.fspath(runs) if spec.trains else ""}
    folder = Path(out) / "results"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(saved, folder / f"analysis-{name}.pt")
    if render:
        rerender(out, progress=progress)
    return Path(out) / f"analysis-{name}.html"

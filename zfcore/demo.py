"""``zfcore demo`` as a function: train the small ZFNet on the embedded data,
visualize it, and add the quick versions of the registry's demo analyses to
its report. It sits above ``visualize`` and ``analyze`` and chooses what they
get: the checkpoint it trained and the embedded validation images.

    >>> from zfcore.demo import demo
    >>> index, timings = demo("demo")
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .analyze import DEMO_ANALYSES, TRAIN_PER_CLASS, analyze_subject
from .load import embedded_dataset, load
from .report import rerender
from .train import demo_config, train
from .visualize import visualize

__all__ = ["demo"]


def demo(out: str | os.PathLike = "demo", *, checkpoint: str | os.PathLike | None = None, epochs: int | None = None,
         seed: int = 0, progress: bool = True, analyses: bool = True) -> tuple[Path, dict[str, float]]:
    """Train ``zfnet_small`` on the embedded data into ``out/run/`` (unless
    ``checkpoint`` is given; a finished run there is reused, an interrupted one
    resumed), then ``visualize`` its validation images into ``out/report/`` and
    (``analyses``) add the quick versions of the paper's analyses to it.
    Returns the report's ``index.html`` and the wall time of each stage."""
    out = Path(out)
    timings: dict[str, float] = {}
    if checkpoint is None:
        run = out / "run"
        checkpoint = run / "model.pt"
        mark = time.perf_counter()
        if not checkpoint.is_file():
            config = demo_config(os.fspath(run), seed=seed, epochs=epochs, progress=progress)
            config.resume = (run / "LATEST").is_file()
            train(config)
        timings["training"] = time.perf_counter() - mark
    index = visualize(checkpoint, "synthetic", out / "report", progress=progress)
    meta = json.loads((out / "report" / "results" / "meta.json").read_text())
    timings.update(meta["timings"])
    if analyses:
        subject = load(checkpoint)
        dataset = embedded_dataset(subject, train_per_class=TRAIN_PER_CLASS)  # one dataset for all the analyses
        for name in DEMO_ANALYSES:
            mark = time.perf_counter()
            try:
                analyze_subject(name, subject, dataset, out / "report", quick=True, progress=progress, render=False,
                                seed=seed)
            except ValueError as error:  # e.g. evolution of a checkpoint without snapshots
                print(f"zfcore demo: analysis {name} skipped: {error}", file=sys.stderr)
                continue
            timings[f"analysis {name}"] = time.perf_counter() - mark
        mark = time.perf_counter()
        rerender(out / "report", progress=progress)
        timings["analysis pages"] = time.perf_counter() - mark
    return index, timings

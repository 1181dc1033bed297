"""The analyses, each declared once where it is written.

A module of ``zfcore.analysis`` that defines ``ANALYSIS = Analysis(...)`` is
an analysis of ``zfcore analyze``: the registry finds it by that name, the
report finds its page in ``zfcore.report.pages`` by the same name. Adding an
analysis touches its module and its page, nothing else.

    >>> from zfcore.analysis.registry import analyses
    >>> spec = analyses()["occlusion"]
    >>> spec.refusal(subject, dataset)          # None, or one sentence saying why not
    >>> result, extra = spec.run(subject, dataset, quick=True, progress=False, seed=0)
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from .result import Result

__all__ = ["NEEDS", "Analysis", "analyses", "get"]

NEEDS = {
    "subject": "a trained model (a checkpoint)",
    "labels": "class labels",
    "boxes": "object boxes",
    "landmarks": "landmarks",
    "train split": "a training split to fit on",
    "snapshots": "the run folder of the model with its snapshots/",
    "training": "a folder to train its own models in",
}
"""What an analysis may need, and how its refusal names it."""

GROUPS = ("paper", "toolbox")


@dataclass(frozen=True)
class Analysis:
    """One analysis.

    Attributes:
        name: its name on the command line and in file names.
        group: ``"paper"`` (the paper's experiments) or ``"toolbox"`` (beside it).
        description: one line for ``zfcore analyze --help`` and the report's navigation.
        result: its ``Result`` class (saved with ``to_plain``, read back with ``from_plain``).
        run: ``run(subject, dataset, *, quick, progress, seed, **options) -> (result, extra)``;
            ``extra`` holds plain values its page shows beside the result (images, class names).
        needs: keys of ``NEEDS``.
        claims: what its page checks, in words.
        order: its place in listings (the paper's figure order, then the toolbox's).
        demo: ``zfcore demo`` adds its quick version to the report.
        options: the keyword options ``run`` takes beyond the common ones (``runs``, ``variants``).
        check: ``check(subject, dataset) -> str | None``: a reason beyond ``needs``
            that it cannot run (one sentence), or None.
    """

    name: str
    group: str
    description: str
    result: type[Result]
    run: Callable
    needs: frozenset[str] = frozenset({"subject", "labels"})
    claims: tuple[str, ...] = ()
    order: int = 0
    demo: bool = False
    options: tuple[str, ...] = ()
    check: Callable | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(NEEDS)
        if self.group not in GROUPS or unknown or not issubclass(self.result, Result):
            raise ValueError(f"Analysis {self.name!r}: group must be one of {GROUPS}, needs among "
                             f"{sorted(NEEDS)} (unknown: {sorted(unknown)}), result a Result class")

    @property
    def trains(self) -> bool:
        return "training" in self.needs

    def refusal(self, subject, dataset) -> str | None:
        """None when this analysis can run on ``subject`` and ``dataset``, else one
        sentence saying why it cannot (e.g. "correspondence needs landmarks; this
        dataset has none")."""
        if "subject" in self.needs and subject is None:
            return f"{self.name} needs {NEEDS['subject']}; none was given (--checkpoint)"
        if "snapshots" in self.needs:
            folder = getattr(subject, "run_folder", None)
            if folder is None or not (folder / "snapshots").is_dir():
                return f"{self.name} needs {NEEDS['snapshots']}; this model has none"
        data_needs = [n for n in ("labels", "boxes", "landmarks", "train split") if n in self.needs]
        if data_needs and dataset is None:
            return f"{self.name} needs a dataset with {', '.join(NEEDS[n] for n in data_needs)}; none was given"
        for need, attribute in (("labels", "labels"), ("boxes", "boxes"), ("landmarks", "landmarks"),
                                ("train split", "train")):
            if need in self.needs and getattr(dataset, attribute, None) is None:
                return f"{self.name} needs {NEEDS[need]}; this dataset has none"
        return self.check(subject, dataset) if self.check is not None else None


@cache
def analyses() -> dict[str, Analysis]:
    """Every analysis of ``zfcore.analysis`` by name: the paper's first, then
    the toolbox's, each in its ``order``."""
    package = importlib.import_module(__package__)
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name in ("registry", "result"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        spec = getattr(module, "ANALYSIS", None)
        if isinstance(spec, Analysis):
            if spec.name != info.name:
                raise RuntimeError(f"zfcore.analysis.{info.name} declares an analysis named {spec.name!r}; "
                                   f"the names must agree (the report finds its page by it)")
            found.append(spec)
    found.sort(key=lambda a: (GROUPS.index(a.group), a.order, a.name))
    return {a.name: a for a in found}


def get(name: str) -> Analysis:
    """The analysis ``name``; an unknown name is a ``ValueError`` listing them."""
    table = analyses()
    if name not in table:
        raise ValueError(f"analyze: unknown analysis {name!r}; choose one of {', '.join(table)}")
    return table[name]

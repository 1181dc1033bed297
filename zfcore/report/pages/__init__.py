"""The analysis pages: ``zfcore.report.pages.NAME.render(result, assets,
**extra)`` draws the figures of analysis ``NAME`` into ``assets`` and returns
its page (title, intro, claims checked, figures, tables), reading only the
saved ``Result``; ``render_analyses`` writes every saved analysis's page.

A page module belongs to the analysis of the same name in
``zfcore.analysis.registry``: adding an analysis adds one module here.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import torch

from ...analysis.registry import analyses
from ...version import __version__
from ..html import TEMPLATES, environment

__all__ = ["nav_entries", "page_module", "render_analyses", "saved_analyses"]


def page_module(name: str):
    """The page module of analysis ``name`` (a registered name only)."""
    if name not in analyses():
        raise ValueError(f"report: no analysis named {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def nav_entries(names: list[str]) -> list[dict]:
    """The report's navigation links to the analysis pages ``names``: the
    paper's analyses first, then the toolbox's under a label of their own."""
    table = analyses()
    paper = [n for n in table if n in names and table[n].group == "paper"]
    tools = [n for n in table if n in names and table[n].group == "toolbox"]
    return ([{"name": n, "file": f"analysis-{n}.html", "group": "paper", "description": table[n].description,
              "first": False} for n in paper]
            + [{"name": n.replace("_", " "), "file": f"analysis-{n}.html", "group": "toolbox",
                "description": table[n].description, "first": i == 0} for i, n in enumerate(tools)])


def saved_analyses(out: str | os.PathLike) -> list[str]:
    """The analyses whose results are saved in the report folder ``out``."""
    folder = Path(out) / "results"
    return [name for name in analyses() if (folder / f"analysis-{name}.pt").is_file()]


def render_analyses(source: str | os.PathLike, out: str | os.PathLike | None = None) -> list[Path]:
    """(Re)write every analysis page into ``out`` (default ``source``) from the
    results saved in the report folder ``source``; nothing is recomputed."""
    source = Path(source)
    out = Path(out) if out is not None else source
    names = saved_analyses(source)
    if not names:
        return []
    shutil.copyfile(TEMPLATES / "style.css", out / "style.css")
    entries = nav_entries(names)
    env = environment()
    table = analyses()
    written = []
    for name in names:
        path = source / "results" / f"analysis-{name}.pt"
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            result = table[name].result.from_plain(saved["result"])
        except Exception as error:  # noqa: BLE001 - named, never unpickled beyond weights
            raise ValueError(f"report: {os.fspath(path)!r} is not a saved {name} result "
                             f"({type(error).__name__}: {str(error)[:200]})") from None
        assets = out / "assets" / f"analysis-{name}"
        if assets.exists():
            shutil.rmtree(assets)
        assets.mkdir(parents=True)
        page = page_module(name).render(result, assets, **saved.get("extra", {}))
        for figure in page["figures"]:
            figure["file"] = f"assets/analysis-{name}/{figure['file']}"
        page.setdefault("claims_title", "The paper's claims, checked on these numbers" if table[name].group == "paper"
                        else "The method's claims, checked on these numbers")
        html = env.get_template("analysis.html").render(
            page=page, analyses=entries, current=f"analysis-{name}.html", has_index=(out / "index.html").is_file(),
            checkpoint=saved.get("checkpoint", ""), runs=saved.get("runs", ""),
            seconds=float(saved.get("seconds", 0.0)), version=__version__)
        (out / f"analysis-{name}.html").write_text(html, encoding="utf-8")
        written.append(out / f"analysis-{name}.html")
    return written

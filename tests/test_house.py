"""The house (docs/architecture.md): the import contract holds and catches an
upward import, no module takes another's private names, every registered
analysis has a page, a Result that survives ``weights_only`` and a clear
refusal, and ``eval_mode`` restores the training flags."""

from __future__ import annotations

import ast
import dataclasses
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from zfcore.analysis import Result
from zfcore.analysis._args import eval_mode
from zfcore.analysis.registry import NEEDS, Analysis, analyses
from zfcore.load import Dataset

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "zfcore"
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


# ----------------------------------------------------------------- the import contract


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("importlinter")
    return subprocess.run([sys.executable, "-c", LINT], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=300)


def _copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "zfcore", ignore=shutil.ignore_patterns("*.so", "__pycache__", "templates"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contract_holds(tmp_path):
    found = _lint(_copy_of_the_package(tmp_path))
    assert found.returncode == 0, found.stdout + found.stderr
    assert "BROKEN" not in found.stdout and "KEPT" in found.stdout


@pytest.mark.parametrize("where, line, broken", [
    # an upward import, hidden inside a function
    ("ops/pooling.py", "def _upward():\n    from ..analyze import ANALYSES\n", "layers"),
    # a cycle between two analyses at the same layer
    ("analysis/topk.py", "def _cycle():\n    from . import projections\n", "cycles"),
    # a private module of another package
    ("visualize.py", "from .analysis import _stream\n", "private"),
])
def test_the_contract_catches_a_break(tmp_path, where, line, broken):
    copy = _copy_of_the_package(tmp_path)
    path = copy / "zfcore" / where
    path.write_text(path.read_text() + "\n\n" + line)
    found = _lint(copy)
    assert found.returncode != 0
    names = {"layers": "layers: imports go only downward BROKEN", "cycles": "no import cycles, in any package BROKEN",
             "private": "private modules stay inside their package BROKEN"}
    assert names[broken] in found.stdout, found.stdout


def _private_imports() -> list[str]:
    """``from M import _name`` of another zfcore module, anywhere in the package."""
    found = []
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        package = parts if parts[-1] == "__init__" else parts[:-1]
        package = package[:-1] if package[-1] == "__init__" else package
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "zfcore":
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{'.'.join(parts)}:{node.lineno} takes {target}.{alias.name}")
    return found


def test_no_module_takes_another_modules_private_names(tmp_path):
    assert _private_imports() == []
    # the scan sees one when there is one
    probe = PACKAGE / "analysis" / "_probe_private_import.py"
    try:
        probe.write_text("def f():\n    from ..analyze import _private\n")
        assert [p for p in _private_imports() if "_probe_private_import" in p] == [
            "zfcore.analysis._probe_private_import:2 takes zfcore.analyze._private"]
    finally:
        probe.unlink()


# ----------------------------------------------------------------- the registry


def test_every_registered_analysis_has_a_page_and_its_declaration_is_complete():
    import importlib

    table = analyses()
    assert len(table) >= 17
    groups = [spec.group for spec in table.values()]
    assert groups == sorted(groups, key=("paper", "toolbox").index)  # the paper's first
    for name, spec in table.items():
        assert isinstance(spec, Analysis) and spec.description and spec.claims, name
        assert set(spec.needs) <= set(NEEDS), name
        page = importlib.import_module(f"zfcore.report.pages.{name}")
        assert callable(page.render), name
        module = importlib.import_module(f"zfcore.analysis.{name}")
        assert not hasattr(module, "render") and not hasattr(module, "analyze_embedded"), name


def _example(tp, depth: int = 0):
    """A value of the annotated type ``tp`` (random where it can be)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        chosen = [a for a in args if a is not type(None)]
        return _example(chosen[0], depth) if chosen else None
    if tp is Tensor:
        return torch.randn(2, 3)
    if tp is bool:
        return True
    if tp is int:
        return 7
    if tp is float:
        return 0.25
    if tp is str:
        return "conv1"
    if tp is typing.Any or tp is object:
        return 1.5
    if isinstance(tp, type) and issubclass(tp, Result):
        return _instance(tp, depth + 1)
    if isinstance(tp, type) and issubclass(tp, Path):
        return "runs/x"
    if origin in (list, typing.List) or origin is getattr(__import__("collections.abc").abc, "Sequence"):
        return [_example(args[0] if args else float, depth)]
    if origin in (tuple, typing.Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return (_example(args[0], depth),)
        return tuple(_example(a, depth) for a in args) if args else (1,)
    if origin in (dict, typing.Dict) or origin is getattr(__import__("collections.abc").abc, "Mapping"):
        key, value = args if args else (str, float)
        return {_example(key, depth): _example(value, depth)}
    return None


def _instance(cls, depth: int = 0):
    hints = typing.get_type_hints(cls)
    values = {f.name: _example(hints.get(f.name, float), depth) for f in dataclasses.fields(cls) if f.init}
    return cls(**values)


def _same(a, b) -> bool:
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and torch.equal(a, b)
    if isinstance(a, Result):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name))
                                          for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_every_result_survives_to_plain_and_weights_only_loading(tmp_path):
    for name, spec in analyses().items():
        result = _instance(spec.result)
        torch.save({"result": result.to_plain()}, tmp_path / f"{name}.pt")
        back = spec.result.from_plain(torch.load(tmp_path / f"{name}.pt", weights_only=True)["result"])
        assert type(back) is spec.result and _same(result, back), name


def test_from_plain_refuses_what_is_not_its_result():
    spec = analyses()["neighbours"]
    with pytest.raises(ValueError, match="Neighbours.from_plain: the saved result lacks"):
        spec.result.from_plain({"layer": "relu7"})
    with pytest.raises(ValueError, match="unknown result class 'os.system'"):
        spec.result.from_plain({**_instance(spec.result).to_plain(), "labels": {"__result__": "os.system"}})
    with pytest.raises(TypeError, match="holds a socket"):
        import socket

        with socket.socket() as s:
            spec.result(**{**dataclasses.asdict(_instance(spec.result)), "layer": s}).to_plain()


class _Subject:
    """A subject without snapshots (what refusal reads of it)."""

    run_folder = None


def test_an_analysis_that_cannot_run_says_why_in_one_sentence():
    from zfcore.analyze import run_analysis

    bare = Dataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], "two images")
    table = analyses()
    assert table["correspondence"].refusal(_Subject(), bare) == \
        "correspondence needs landmarks; this dataset has none"
    assert table["pointing"].refusal(_Subject(), bare) == "pointing needs object boxes; this dataset has none"
    assert table["probes"].refusal(_Subject(), bare) == \
        "probes needs a training split to fit on; this dataset has none"
    assert "evolution needs the run folder of the model with its snapshots/" in \
        table["evolution"].refusal(_Subject(), bare)
    assert table["occlusion"].refusal(None, bare).startswith("occlusion needs a trained model")
    for name, spec in table.items():
        if spec.trains:
            continue
        reason = spec.refusal(_Subject(), None)
        assert reason is not None and reason.startswith(f"{name} needs ") and reason.count(". ") == 0, name
    with pytest.raises(ValueError, match="^analyze: correspondence needs landmarks; this dataset has none$"):
        run_analysis("correspondence", _Subject(), bare)
    with pytest.raises(ValueError, match="^analyze: unknown analysis 'nonsense'; choose one of occlusion, "):
        run_analysis("nonsense", _Subject(), bare)


# ----------------------------------------------------------------- shared helpers


def test_eval_mode_restores_every_modules_flag_even_when_the_body_raises():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout(), nn.Sequential(nn.BatchNorm2d(1)))
    model.train()
    model[1].eval()                     # a mixed state, restored module by module
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == before
    with eval_mode(model) as same:
        assert same is model
    assert [m.training for m in model.modules()] == before

"""Record what real torchvision says about the architectures zfcore rebuilds in
its layout, into tests/fixtures/torchvision/, for tests/test_torchvision_fixtures.py
(which needs no torchvision).

What it records:

- ``architectures.json``: for each torchvision-layout name (alexnet, vgg11 ..
  vgg19_bn, resnet18 .. resnet152), built by
  ``torchvision.models.get_model(name, weights=None)`` on the meta device
  (1000 classes): the ordered ``state_dict`` keys with their shapes, the
  parameter count and the key of the last linear layer's weight; and for
  37-class builds of resnet18 and alexnet, the entries whose shapes differ
  from the 1000-class build.
- ``logits.pt``: for alexnet, resnet18, vgg11_bn and resnet50 in eval mode,
  filled with ``tests/deterministic.py``'s weights (a formula of each key, no
  torchvision needed to redo it), the logits ``Tensor[2, 1000]`` on its fixed
  input, in float32 and float64, with fingerprints of the weights and the input
  (so a test can tell "the deterministic values changed" from "the
  architecture differs"). Plain tensors, floats and strings: loads with
  ``torch.load(..., weights_only=True)``.

How to rerun (torchvision stays out of zfcore's dependencies; a side
environment that sees the system torch)::

    python -m venv --system-site-packages /tmp/tvenv
    /tmp/tvenv/bin/pip install --no-deps torchvision==0.28.0
    /tmp/tvenv/bin/python tools/record_torchvision_fixtures.py

About a minute on two cores. Rerun after changing tests/deterministic.py; the
recorded files change only when torchvision's architectures or that module do.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "torchvision"
sys.path.insert(0, str(ROOT / "tests"))
import deterministic  # noqa: E402  (tests/deterministic.py, without importing the tests package)

NAMES = ["alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
         "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
LOGITS = ["alexnet", "resnet18", "vgg11_bn", "resnet50"]
FEW_CLASSES = 37
FEW_CLASSES_NAMES = ["resnet18", "alexnet"]


def import_torchvision() -> types.ModuleType:
    """torchvision, also where its native library does not load (the wheel on the
    package index is a CUDA build; the system torch may be a CPU build): then the
    module that registers shapes for its native detection ops (nms, roi_align, ...)
    would fail on import, and none of them is used here, so it is skipped."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        sys.exit("torchvision is not installed here: see this script's docstring for the side environment")
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
        print(f"torchvision {torchvision.__version__}: native ops unavailable ({error}); models only", file=sys.stderr)
    return torchvision


def last_linear_weight(model: nn.Module) -> str:
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return f"{name}.weight"


def shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def record_architectures(tv) -> dict:
    architectures = {}
    for name in NAMES:
        with torch.device("meta"):
            model = tv.models.get_model(name, weights=None)
        architectures[name] = {"parameters": sum(p.numel() for p in model.parameters()),
                               "classifier": last_linear_weight(model),
                               "keys": [[k, s] for k, s in shapes(model).items()]}
    few = {}
    for name in FEW_CLASSES_NAMES:
        with torch.device("meta"):
            changed = shapes(tv.models.get_model(name, weights=None, num_classes=FEW_CLASSES))
        default = dict(architectures[name]["keys"])
        few[name] = {k: s for k, s in changed.items() if default[k] != s}
    return {"torch": str(torch.__version__), "torchvision": str(tv.__version__),
            "architectures": architectures, "num_classes": {"value": FEW_CLASSES, "changed": few}}


def record_logits(tv) -> dict:
    models = {}
    for name in LOGITS:
        start = time.perf_counter()
        entry = {}
        for dtype, label in ((torch.float32, "float32"), (torch.float64, "float64")):
            model = tv.models.get_model(name, weights=None).to(dtype).eval()
            weights = deterministic.state_dict_for(model, dtype)
            model.load_state_dict(weights, strict=True)
            with torch.no_grad():
                entry[label] = model(deterministic.fixed_input(dtype)).clone()
            if dtype == torch.float32:
                entry["weights_fingerprint"] = deterministic.fingerprint(weights)
        models[name] = entry
        print(f"{name}: logits in {time.perf_counter() - start:.1f} s, max |logit| "
              f"{entry['float32'].abs().max():.4g}, float32 vs float64 "
              f"{(entry['float32'].double() - entry['float64']).abs().max() / entry['float64'].abs().max():.2e}",
              file=sys.stderr)
    return {"torch": str(torch.__version__), "torchvision": str(tv.__version__),
            "input_fingerprint": deterministic.fingerprint({"input": deterministic.fixed_input()}),
            "models": models}


def write_json(path: Path, data: dict) -> None:
    """One line per state_dict entry: small, and a changed key is a one-line diff."""
    lines = ["{", f'  "torch": {json.dumps(data["torch"])},', f'  "torchvision": {json.dumps(data["torchvision"])},',
             f'  "num_classes": {json.dumps(data["num_classes"])},', '  "architectures": {']
    names = list(data["architectures"])
    for i, name in enumerate(names):
        a = data["architectures"][name]
        lines.append(f'    {json.dumps(name)}: {{"parameters": {a["parameters"]}, '
                     f'"classifier": {json.dumps(a["classifier"])}, "keys": [')
        lines += [f"      {json.dumps(k)}," for k in a["keys"][:-1]] + [f"      {json.dumps(a['keys'][-1])}"]
        lines.append("    ]}" + ("," if i < len(names) - 1 else ""))
    lines += ["  }", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == json.loads(json.dumps(data))
    path.write_text(text)


def main() -> None:
    torch.manual_seed(0)  # the default initialization before the deterministic weights replace it
    tv = import_torchvision()
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "architectures.json", record_architectures(tv))
    torch.save(record_logits(tv), OUT / "logits.pt")
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()

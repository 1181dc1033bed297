"""zfcore's torchvision-layout architectures against fixtures recorded once from
real torchvision (tools/record_torchvision_fixtures.py; torchvision is not
needed here): the ordered state_dict keys and shapes, the parameter counts, the
classifier key, what a 37-class build changes, and the logits of
deterministic weights (tests/deterministic.py) on a fixed input, in float32 and
float64."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.deterministic import fingerprint, fixed_input, state_dict_for
from zfcore.models.zoo import ARCHITECTURES

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision"
RECORDED = json.loads((FIXTURES / "architectures.json").read_text())
LOGITS = torch.load(FIXTURES / "logits.pt", weights_only=True)
RERUN = "rerun tools/record_torchvision_fixtures.py (its docstring says how)"
TORCHVISION_LAYOUT = sorted(name for name, a in ARCHITECTURES.items() if a.layout == "torchvision")


def _meta(name: str, num_classes: int = 1000) -> nn.Module:
    """zfcore's build of ``name`` on the meta device: shapes only, no memory, no time."""
    with torch.device("meta"):
        return ARCHITECTURES[name].build(num_classes)


def _keys(model: nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def test_every_torchvision_layout_architecture_is_recorded():
    assert sorted(RECORDED["architectures"]) == TORCHVISION_LAYOUT, f"new or removed architecture: {RERUN}"


@pytest.mark.parametrize("name", sorted(RECORDED["architectures"]))
def test_state_dict_keys_shapes_and_parameters_match_torchvision(name):
    recorded = RECORDED["architectures"][name]
    model = _meta(name)
    keys = _keys(model)
    missing = [k for k, _ in recorded["keys"] if k not in dict(keys)]
    extra = [k for k, _ in keys if k not in dict(recorded["keys"])]
    assert not missing and not extra, f"{name}: missing {missing[:5]}, unexpected {extra[:5]}"
    wrong = [(k, s, dict(recorded["keys"])[k]) for k, s in keys if s != dict(recorded["keys"])[k]]
    assert not wrong, f"{name}: (key, zfcore's shape, torchvision's) {wrong[:5]}"
    assert keys == recorded["keys"], f"{name}: same entries in another order"
    assert sum(p.numel() for p in model.parameters()) == recorded["parameters"]
    assert ARCHITECTURES[name].classifier == recorded["classifier"]


@pytest.mark.parametrize("name", sorted(RECORDED["num_classes"]["changed"]))
def test_num_classes_changes_what_it_changes_in_torchvision(name):
    n = RECORDED["num_classes"]["value"]
    default, few = dict(_keys(_meta(name))), _keys(_meta(name, n))
    changed = {k: s for k, s in few if default[k] != s}
    assert changed == RECORDED["num_classes"]["changed"][name]
    assert dict(few)[ARCHITECTURES[name].classifier][0] == n


def test_the_deterministic_input_is_the_recorded_one():
    assert fingerprint({"input": fixed_input()}) == pytest.approx(LOGITS["input_fingerprint"], rel=1e-12), (
        f"tests/deterministic.py's input changed (or torch's CPU generator did): {RERUN}")


# float32 (every recorded model): the error a changed summation order would make; float64 (the two cheapest: a
# BatchNorm epsilon or a bias off by little shows only there): the same ops in the same order, to rounding
LOGIT_CASES = ([pytest.param(name, torch.float32, 1e-4, id=f"{name}-float32") for name in sorted(LOGITS["models"])]
               + [pytest.param(name, torch.float64, 1e-10, id=f"{name}-float64") for name in ("alexnet", "resnet18")])


@pytest.mark.parametrize("name,dtype,tolerance", LOGIT_CASES)
def test_logits_of_deterministic_weights_match_torchvision(name, dtype, tolerance):
    recorded = LOGITS["models"][name]
    model = _meta(name)
    weights = state_dict_for(model, dtype)
    if dtype == torch.float32:
        assert fingerprint(weights) == pytest.approx(recorded["weights_fingerprint"], rel=1e-12), (
            f"{name}: tests/deterministic.py's weights changed (or torch's CPU generator did): {RERUN}")
    model.load_state_dict(weights, strict=True, assign=True)  # assign: the meta model takes the tensors as they are
    with torch.no_grad():
        logits = model.eval()(fixed_input(dtype))
    expected = recorded[str(dtype).removeprefix("torch.")]
    assert logits.dtype == dtype and logits.shape == expected.shape == (2, 1000)
    error = float((logits.double() - expected.double()).abs().max() / expected.double().abs().max())
    assert error <= tolerance, f"{name} in {dtype}: max relative error {error:.3g} against torchvision's logits"

"""Model variants for the paper's architecture studies (Fig. 6, Table 3): the
first layer's kernel/stride (``conv1``), left-out layers (``remove``), training on
a subset of classes (``classes``), through the model factories, the trainer, its
command line and ``zfcore.load``."""

import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.helpers import output_shapes
import zfcore
from zfcore.data import SyntheticShapes
from zfcore.models import LayerSpec, alexnet, zfnet, zfnet_small
from zfcore.train import TrainConfig, build_model
from zfcore.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2", "conv3", "relu3", "conv4", "relu4",
        "conv5", "relu5", "pool5", "flatten", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]
COMPANIONS = {"conv3": ["conv3", "relu3"], "conv4": ["conv4", "relu4"], "fc6": ["fc6", "relu6", "drop6"],
              "fc7": ["fc7", "relu7", "drop7"]}


@pytest.mark.parametrize("remove", [(), ("fc6",), ("fc7",), ("fc6", "fc7"), ("conv3",), ("conv4",),
                                    ("conv3", "conv4"), ("conv3", "conv4", "fc6", "fc7")])
def test_removed_layers_are_absent_and_the_rest_keep_their_names_and_shapes(remove):
    torch.manual_seed(0)
    model = zfnet_small(10, remove=remove).eval()
    expected = [n for n in FULL if not any(n in COMPANIONS[r] for r in remove)]
    assert [name for name, _ in model.named_children()] == expected
    shapes = output_shapes(model, torch.randn(3, 3, 64, 64))
    spec = LayerSpec.of(model, (3, 64, 64))
    for info in spec.layers:  # the layer spec walks the variant as the forward does
        assert tuple(info.shape) == shapes[info.name], info.name
    full = output_shapes(zfnet_small(10).eval(), torch.randn(1, 3, 64, 64))
    for name in ("conv1", "pool1", "conv2", "pool2", "conv5", "pool5"):  # conv3/4 keep the map: nothing moves
        assert shapes[name] == full[name], name
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(a.out_channels == b.in_channels for a, b in zip(convs, convs[1:]))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[0].in_features == 64 * 3 * 3 and linears[-1].out_features == 10
    assert all(a.out_features == b.in_features for a, b in zip(linears, linears[1:]))
    assert len(linears) == 3 - sum(r.startswith("fc") for r in remove)


def test_conv1_variant_sets_kernel_stride_and_the_documented_padding():
    # 7x2 is the preset's own first layer: the same model, weight for weight
    torch.manual_seed(1)
    same = zfnet(10, conv1=(7, 2))
    torch.manual_seed(1)
    preset = zfnet(10)
    assert str(same) == str(preset)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), preset.state_dict().values()))
    # AlexNet's 11x4 inside ZFNet: padding 2 as in AlexNet, 224 -> 55
    model = zfnet(10, conv1=(11, 4)).eval()
    assert model.conv1.kernel_size == (11, 11) and model.conv1.stride == (4, 4) and model.conv1.padding == (2, 2)
    shapes = output_shapes(model, torch.randn(1, 3, 224, 224))
    assert shapes["conv1"][1:] == (55, 55) and shapes["fc8"] == (10,)
    # and ZFNet's 7x2 inside AlexNet
    alex = alexnet(10, conv1=(7, 2)).eval()
    assert output_shapes(alex, torch.randn(1, 3, 224, 224))["conv1"][1:] == (110, 110)
    small = zfnet_small(10, conv1=(5, 1), remove=("fc7",)).eval()
    assert small.conv1.padding == (1, 1) and small(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_bad_variants_are_rejected_naming_the_argument():
    for kwargs, match in [({"conv1": (2, 4)}, "conv1"), ({"conv1": (0, 1)}, "conv1"), ({"conv1": (7,)}, "conv1"),
                          ({"remove": ("fc8",)}, "remove"), ({"remove": ("conv3", "conv3")}, "remove"),
                          ({"conv1": (11, 4), "input_size": 32}, "input_size 32 is too small")]:
        with pytest.raises(ValueError, match=re.escape(match)):
            zfnet_small(10, **kwargs)


@pytest.mark.parametrize("field,value,expected", [
    ("conv1", "11", "--conv1 must be KxS"), ("conv1", "4x11", "--conv1 must be KxS"),
    ("conv1", "0x0", "--conv1 must be KxS"), ("conv1", "axb", "--conv1 must be KxS"),
    ("remove", "fc8", "--remove must be comma-separated layers among conv3, conv4, fc6, fc7"),
    ("remove", "fc6,fc6", "--remove must be"), ("classes", "3", "--classes must be at least two"),
    ("classes", "1,1", "--classes must be at least two"), ("classes", "-1,2", "--classes must be"),
    ("classes", "0,10", "--classes must be indices in 0..9")])
def test_bad_flag_values_are_rejected_naming_the_flag(field, value, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        TrainConfig(**{field: value})


def test_variant_flags_are_normalized_and_enter_the_fingerprint():
    a = TrainConfig(conv1="11X4", remove="fc7, fc6")
    assert a.conv1 == "11x4" and a.remove == "fc6,fc7"
    assert a.model_fingerprint() == TrainConfig(conv1="11x4", remove="fc6,fc7").model_fingerprint()
    assert a.model_fingerprint() != TrainConfig().model_fingerprint()
    assert TrainConfig(classes="1,0").model_fingerprint() != TrainConfig(classes="0,1").model_fingerprint()
    # the plain preset's fingerprint is the one saved before variants existed: old runs still resume
    assert set(TrainConfig().model_fingerprint()) == {"model", "width", "fc_width", "image_size", "data"}


def test_classes_selects_those_images_and_relabels_them_in_the_given_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ZFCORE_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(out=str(tmp_path / "run"), image_size=32, per_class=6, classes="7,2,9")
    data = loop.SyntheticData(config)
    full = SyntheticShapes("train", seed=0, size=32, per_class=6)
    assert data.classes == [SyntheticShapes.classes[i] for i in (7, 2, 9)] and data.num_classes == 3
    for new, old in enumerate((7, 2, 9)):
        assert torch.equal(data.train.images[data.train.labels == new], full.images[full.labels == old])
    assert len(data) == 18 and sorted(data.train.labels.tolist()) == [0] * 6 + [1] * 6 + [2] * 6
    val = SyntheticShapes("val", seed=0, size=32, per_class=1)
    assert torch.equal(data.val.images, val.images[torch.isin(val.labels, torch.tensor([2, 7, 9]))])
    assert torch.allclose(data.mean, full.images[torch.isin(full.labels, torch.tensor([2, 7, 9]))].double()
                          .mean(0).float())
    x, y = data.train_batch(torch.arange(4), torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.int64))
    assert x.shape == (4, 3, 32, 32) and y.max() < 3
    model = build_model(config, data.num_classes)
    assert model.fc8.out_features == 3
    assert torch.equal(loop.select_classes(torch.tensor([5, 3, 5, 1]), (5, 1))[1], torch.tensor([0, 0, 1]))


def test_variant_run_from_the_command_line_is_saved_and_reloaded_identically(tmp_path, monkeypatch):
    out = tmp_path / "run"
    env = {**os.environ, "ZFCORE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "zfcore", "train", "--out", str(out), "--image-size", "48",
                             "--per-class", "10", "--width", "0.125", "--fc-width", "32", "--batch-size", "8",
                             "--threads", "1", "--no-progress", "--epochs", "1", "--conv1", "11x4",
                             "--remove", "conv3,conv4", "--classes", "0,1,2"],
                            env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["config"]["conv1"] == "11x4" and saved["config"]["remove"] == "conv3,conv4"
    assert saved["config"]["classes"] == "0,1,2" and saved["classes"] == ["circle", "square", "triangle"]

    loaded = zfcore.load(out)
    names = [name for name, _ in loaded.model.named_children()]
    assert "conv3" not in names and "conv4" not in names and "conv5" in names and "fc7" in names
    assert loaded.model.conv1.kernel_size == (11, 11) and loaded.model.conv1.stride == (4, 4)
    assert loaded.model.fc8.out_features == 3 and loaded.classes == ["circle", "square", "triangle"]
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in saved["model"].items())

    # the reloaded model reproduces the run's own validation error, on the same three classes' images
    monkeypatch.setenv("ZFCORE_CACHE", env["ZFCORE_CACHE"])
    val = SyntheticShapes("val", seed=0, size=48, per_class=2)
    keep = val.labels < 3
    with torch.no_grad():
        logits = loaded.model(loaded.preprocess(val.images[keep]))
    error = (logits.argmax(1) != val.labels[keep]).double().mean().item()
    assert error == pytest.approx(saved["history"][-1]["val_top1_error"], abs=1e-9)
    checkpoint = zfcore.load(sorted(out.glob("checkpoint-*.pt"))[-1])
    with torch.no_grad():
        assert torch.equal(checkpoint.model(loaded.preprocess(val.images[keep])), logits)

    again = subprocess.run([sys.executable, "-m", "zfcore", "train", "--out", str(out), "--image-size", "48",
                            "--per-class", "10", "--width", "0.125", "--fc-width", "32", "--batch-size", "8",
                            "--no-progress", "--epochs", "2", "--conv1", "11x4", "--remove", "conv3",
                            "--classes", "0,1,2", "--resume"], env=env, capture_output=True, text=True, cwd=REPO,
                           timeout=300)
    assert again.returncode == 2 and "is of another model" in again.stderr  # another variant does not resume
    bad = subprocess.run([sys.executable, "-m", "zfcore", "train", "--out", str(tmp_path / "bad"), "--conv1", "3"],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("zfcore train: --conv1 must be KxS")
    assert not (tmp_path / "bad").exists()

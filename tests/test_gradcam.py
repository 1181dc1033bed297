"""Grad-CAM and guided Grad-CAM (Selvaraju et al.) against their definitions:
the ReLU of the maps weighted by the spatial mean of the class logit's
gradient (closed form through a linear head, explicit autograd per image
otherwise, float64), guided backprop by autograd hooks times the upsampled
map; batching over classes equals separate calls; bad arguments are named."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfcore.analysis.gradcam import (GradCam, default_layer, grad_cam, grad_cam_analysis, guided_backprop,
                                     guided_grad_cam, peaks)
from zfcore.analysis.pointing import pointing_hits
from zfcore.report.pages.gradcam import render
from zfcore.models import zfnet_small
from zfcore.nn import MaxPool2dSwitches


def tiny(head: str = "linear", inplace: bool = False) -> nn.Sequential:
    """conv -> relu -> conv -> relu ("feat": 4 maps of 5x5 on a 9x9 input) -> a
    linear head (or relu, linear), float64."""
    torch.manual_seed(3)
    layers = [("conv1", nn.Conv2d(3, 5, 3)), ("relu1", nn.ReLU(inplace=inplace)), ("conv2", nn.Conv2d(5, 4, 3)),
              ("feat", nn.ReLU(inplace=inplace)), ("flatten", nn.Flatten())]
    if head == "linear":
        layers += [("fc", nn.Linear(4 * 5 * 5, 6))]
    else:
        layers += [("fc1", nn.Linear(4 * 5 * 5, 12)), ("relu3", nn.ReLU(inplace=inplace)), ("fc", nn.Linear(12, 6))]
    return nn.Sequential(OrderedDict(layers)).double().eval()


def test_grad_cam_is_the_weighted_sum_of_a_linear_heads_weights():
    """Through Flatten + Linear the gradient of logit c w.r.t. A[k, i, j] is the
    weight W[c, (k, i, j)], so alpha_k is the mean of W[c] over map k: no autograd."""
    model = tiny("linear")
    x = torch.randn(5, 3, 9, 9, dtype=torch.float64)
    target = torch.tensor([0, 5, 2, 2, 4])
    with torch.no_grad():
        a = model[:4](x)                                        # the activations of "feat", [5, 4, 5, 5]
    weights = model.fc.weight.view(6, 4, 5, 5).mean((2, 3))[target]  # alpha [5, 4]
    expected = torch.relu((weights[:, :, None, None] * a).sum(1))
    got = grad_cam(model, x, "feat", target)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    assert (expected > 0).any() and (expected == 0).any()  # the ReLU matters on this data


def test_grad_cam_with_a_nonlinear_head_matches_per_image_autograd():
    model = tiny("mlp")
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    target = torch.tensor([1, 1, 3, 0])
    expected = []
    for n in range(4):  # one image at a time, the activations kept in the graph by a hook
        kept = {}
        handle = model.feat.register_forward_hook(lambda _m, _i, out: kept.__setitem__("a", out))
        score = model(x[n:n + 1])[0, target[n]]
        handle.remove()
        grad, = torch.autograd.grad(score, kept["a"])
        alpha = grad[0].mean((1, 2))
        expected.append(torch.relu(torch.einsum("k,khw->hw", alpha, kept["a"][0].detach())))
    torch.testing.assert_close(grad_cam(model, x, "feat", target, batch_size=3), torch.stack(expected),
                               rtol=1e-12, atol=1e-14)


def test_target_none_is_the_predicted_class_and_an_int_is_every_images_class():
    model = tiny("mlp")
    x = 4 * torch.randn(12, 3, 9, 9, dtype=torch.float64)
    predicted = model(x).argmax(1)
    assert len(set(predicted.tolist())) > 1
    torch.testing.assert_close(grad_cam(model, x, "feat"), grad_cam(model, x, "feat", predicted), rtol=0, atol=0)
    torch.testing.assert_close(grad_cam(model, x, "feat", 2), grad_cam(model, x, "feat", torch.full((12,), 2)),
                               rtol=0, atol=0)


def test_several_classes_per_image_equal_separate_calls():
    model = tiny("mlp")
    x = torch.randn(5, 3, 9, 9, dtype=torch.float64)
    classes = torch.tensor([[0, 1, 2], [5, 5, 0], [3, 4, 1], [2, 0, 5], [1, 3, 3]])
    together = grad_cam(model, x, "feat", classes, batch_size=2)
    assert together.shape == (5, 3, 5, 5)
    for k in range(3):
        torch.testing.assert_close(together[:, k], grad_cam(model, x, "feat", classes[:, k]), rtol=1e-12, atol=1e-14)
    assert (together[:, 0] - together[:, 2]).abs().max() > 0  # the classes' maps differ


def test_an_in_place_relu_above_the_layer_leaves_the_map_unchanged():
    """The map of conv2 (before an in-place ReLU) is that of the same model without in-place layers."""
    x = torch.randn(3, 3, 9, 9, dtype=torch.float64)
    plain, inplace = tiny("mlp"), tiny("mlp", inplace=True)
    torch.testing.assert_close(grad_cam(inplace, x, "conv2", 1), grad_cam(plain, x, "conv2", 1), rtol=0, atol=0)
    assert grad_cam(plain, x, "conv2", 1).abs().max() > 0


def test_the_model_is_left_as_it_was():
    model = tiny("mlp").train()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    grad_cam(model, x, "feat")
    guided_grad_cam(model, x, "feat")
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def guided_by_backward_hooks(model: nn.Module, x, target):
    """Guided backprop the classic way: every ReLU's input gradient clamped at 0 by a full backward hook."""
    handles = [m.register_full_backward_hook(lambda _m, grad_in, _out: (grad_in[0].clamp_min(0),))
               for m in model.modules() if isinstance(m, nn.ReLU)]
    x = x.clone().requires_grad_()
    score = model(x).gather(1, target[:, None]).sum()
    grad, = torch.autograd.grad(score, x)
    for h in handles:
        h.remove()
    return grad


def pooled() -> nn.Sequential:
    """A small walkable CNN with max pooling and LRN (float64, 20 px): the engine's layers."""
    torch.manual_seed(5)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", MaxPool2dSwitches(3, 2)),
        ("norm1", nn.LocalResponseNorm(3, alpha=0.5)), ("conv2", nn.Conv2d(6, 8, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)), ("flatten", nn.Flatten()), ("fc1", nn.Linear(8 * 4 * 4, 16)),
        ("relu3", nn.ReLU()), ("drop", nn.Dropout()), ("fc2", nn.Linear(16, 5))])).double().eval()


@pytest.mark.parametrize("backend", ["deconvnet", "autograd"])
def test_guided_grad_cam_is_guided_backprop_times_the_upsampled_map(backend):
    model = pooled()
    x = torch.randn(4, 3, 20, 20, dtype=torch.float64)
    target = torch.tensor([4, 0, 3, 3])
    gb = guided_by_backward_hooks(model, x, target)
    cam = grad_cam(model, x, "relu2", target)
    up = F.interpolate(cam[:, None], size=(20, 20), mode="bilinear", align_corners=False)
    expected = gb * up
    assert (cam > 0).any() and (cam == 0).any()
    torch.testing.assert_close(guided_grad_cam(model, x, "relu2", target, backend=backend), expected,
                               rtol=1e-10, atol=1e-12 * float(expected.abs().max()))
    # guided, not the plain gradient (the test would not see a missing rectification otherwise)
    xg = x.clone().requires_grad_()
    gradient, = torch.autograd.grad(model(xg).gather(1, target[:, None]).sum(), xg)
    assert (gb - gradient).abs().max() > 1e-3 * gradient.abs().max()


def test_guided_backprop_falls_back_to_autograd_for_a_model_the_engine_refuses():
    torch.manual_seed(0)
    class Sorted(nn.Module):  # torch.sort: outside the engine's table
        def forward(self, x):
            return torch.sort(x, dim=1).values

    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 4, 3)), ("sort", Sorted()), ("relu", nn.ReLU()),
                                       ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * 6 * 6, 3))])).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([2, 1])
    with pytest.raises(ValueError, match="guided_backprop: the deconvnet engine cannot capture this model"):
        guided_backprop(model, x, target, backend="deconvnet")
    torch.testing.assert_close(guided_backprop(model, x, target), guided_by_backward_hooks(model, x, target),
                               rtol=1e-12, atol=1e-14)


def test_analysis_keeps_the_targets_and_top_classes_maps():
    model = tiny("mlp")
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    result = grad_cam_analysis(model, x, "feat", labels, labels=labels, top=2, guided=2, progress=False)
    torch.testing.assert_close(result.maps, grad_cam(model, x, "feat", labels).float())
    probs = model(x).softmax(1)
    top = probs.topk(2, 1).indices
    assert torch.equal(result.top_classes, top) and torch.equal(result.predicted, top[:, 0])
    torch.testing.assert_close(result.top_maps, grad_cam(model, x, "feat", top).float())
    torch.testing.assert_close(result.target_prob, probs.gather(1, labels[:, None])[:, 0].float())
    assert result.guided.shape == (2, 3, 9, 9) and result.guided.dtype == torch.uint8


def test_pointing_hits_by_hand():
    """4x4 maps on 8x8 images: unit (i, j) is centred on pixel (2i + 1, 2j + 1)."""
    maps = torch.zeros(4, 4, 4)
    maps[0, 1, 1] = 1.0   # pixel (3, 3): inside box 0
    maps[1, 3, 3] = 1.0   # pixel (7, 7): outside box 1
    maps[2, 0, 2] = 2.0   # pixel (1, 5): inside box 2, though the upsampled map is as high at the edge (0, 5)
    boxes = torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4], [4, 1, 8, 3], [0, 0, 8, 8]])  # map 3 is zero: a miss
    y, x = peaks(maps[:3], (8, 8))
    assert y.tolist() == [3, 7, 1] and x.tolist() == [3, 7, 5]
    hit, chance, mass = pointing_hits(maps, boxes, (8, 8))
    assert hit.tolist() == [True, False, True, False]
    torch.testing.assert_close(chance, torch.tensor([0.25, 0.25, 0.125, 1.0], dtype=torch.float64))
    up = F.interpolate(maps[:2, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(mass[:2], (up[:, :4, :4].sum((1, 2)) / up.sum((1, 2))).double())
    assert mass[0] > 0.5 > mass[1] and mass[3].isnan()


def test_bad_arguments_are_named():
    model = tiny("mlp")
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    cases = [(dict(target=torch.tensor([0.5, 1.0])), "grad_cam: target must be None, an int"),
             (dict(target=torch.tensor([0, 1, 2])), "grad_cam: target must be None"),
             (dict(target=torch.tensor([0, 6])), "grad_cam: target holds class 6, outside the model's 6 classes"),
             (dict(target=-1), "grad_cam: target holds class -1"),
             (dict(layer="conv9"), "grad_cam: no layer named 'conv9'"),
             (dict(layer="fc1"), r"grad_cam: the layer's output must be a Tensor\[N, C, h, w\]"),
             (dict(batch_size=0), "grad_cam: batch_size must be a positive int")]
    for kwargs, text in cases:
        args = dict(layer="feat") | kwargs
        with pytest.raises(ValueError, match=text):
            grad_cam(model, x, **args)
    with pytest.raises(ValueError, match=r"grad_cam: images must be a float Tensor\[N, C, H, W\]"):
        grad_cam(model, x[0], "feat")
    with pytest.raises(TypeError, match="grad_cam: model must be a torch.nn.Module"):
        grad_cam(lambda t: t, x, "feat")
    with pytest.raises(ValueError, match="guided_grad_cam: backend must be"):
        guided_grad_cam(model, x, "feat", backend="hooks")
    with pytest.raises(ValueError, match="guided_grad_cam: target must be None, an int or a LongTensor"):
        guided_grad_cam(model, x, "feat", torch.zeros(2, 2, dtype=torch.long))
    nan = x.clone()
    nan[1, 0, 4, 4] = float("nan")
    with pytest.raises(ValueError, match="grad_cam: images hold NaN or infinite values"):
        grad_cam(model, nan, "feat")
    with pytest.raises(ValueError, match=r"grad_cam_analysis: images must be a float Tensor\[N, C, H, W\] with N >= 1"):
        grad_cam_analysis(model, x[:0], "feat")


def test_render_writes_its_figures_and_the_dict_survives_saving(tmp_path):
    model = tiny("mlp")
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    result = grad_cam_analysis(model, x, "feat", labels=torch.tensor([0, 1, 2, 3]), top=3, guided=2, progress=False)
    torch.save(result.as_dict(), tmp_path / "r.pt")
    saved = torch.load(tmp_path / "r.pt", weights_only=True)
    boxes = torch.tensor([[0, 0, 5, 5]] * 4)
    images = torch.randint(0, 256, (4, 3, 9, 9), dtype=torch.uint8)
    page = render(saved, tmp_path / "assets", images=images, boxes=boxes, classes=[f"c{i}" for i in range(6)])
    files = [f["file"] for f in page["figures"]]
    assert files == ["gradcam_overlays.png", "gradcam_guided.png", "gradcam_classes.png"]
    assert all((tmp_path / "assets" / f).stat().st_size > 0 for f in files)
    hit, chance, _ = pointing_hits(result.maps, boxes, (9, 9))
    assert page["claims"][0]["holds"] == (hit.double().mean() > chance.mean())
    assert [len(t["rows"]) for t in page["tables"]] == [len(result.target.unique()), 4]
    assert isinstance(GradCam.from_dict(saved), GradCam)


def test_default_layer_is_the_last_convs_relu():
    assert default_layer(zfnet_small(init_std=None)) == "relu5"
    assert default_layer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())) == "0"


def test_run_explains_the_true_classes_and_hands_the_boxes_to_the_page(monkeypatch, tmp_path):
    from tests.helpers import untrained_subject
    from zfcore.analysis.gradcam import run
    from zfcore.load import Dataset, embedded_dataset

    loaded = untrained_subject(monkeypatch, tmp_path)
    data = embedded_dataset(loaded)
    result, extra = run(loaded, data, quick=True, progress=False, seed=0)
    assert result.layer == "relu5" and torch.equal(result.index, torch.arange(16))
    assert torch.equal(result.target, data.labels[:16]) and torch.equal(result.labels, data.labels[:16])
    assert result.top_classes.shape == (16, 3) and len(result.guided) == 8
    want = grad_cam(loaded.model, loaded.preprocess(data.images[:16]), "relu5", data.labels[:16], progress=False)
    torch.testing.assert_close(result.maps, want.float())
    assert torch.equal(extra["images"], data.images[:16]) and torch.equal(extra["boxes"], data.boxes[:16])
    assert extra["classes"] == list(data.classes)
    page = render(result.to_plain(), tmp_path / "assets", **extra)
    assert page["claims"] and len(page["tables"]) == 2
    # a dataset without boxes: the page has no pointing game
    _, extra = run(loaded, Dataset(data.images[:4], data.labels[:4], data.classes), quick=True, progress=False,
                   seed=0)
    assert extra["boxes"] is None and torch.equal(extra["images"], data.images[:4])

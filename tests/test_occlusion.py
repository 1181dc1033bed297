"""Occlusion (Fig. 7): the incremental inference equals the plain loop
(occlude, forward, softmax) on awkward geometries, and bad arguments are named."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from zfcore.analysis.occlusion import grid_size, occlusion, occlusion_plain
from zfcore.models import zfnet_small
from zfcore.nn import MaxPool2dSwitches

from .helpers import untrained_subject


def awkward_model() -> nn.Sequential:
    """Padded and ceil-mode pools, a dilated conv, stride > kernel, LRN, an in-place ReLU."""
    torch.manual_seed(1)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 5, 2, 2)), ("relu1", nn.ReLU(inplace=True)),
        ("pool1", MaxPool2dSwitches(3, 2, padding=1, ceil_mode=True)), ("norm1", nn.LocalResponseNorm(3)),
        ("conv2", nn.Conv2d(6, 8, 3, 1, 2, dilation=2)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2, 3, ceil_mode=True)),
        ("conv3", nn.Conv2d(8, 8, 3, 1, 1)), ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(8 * 4 * 4, 5))])).eval()


@pytest.mark.parametrize("patch_size,stride", [(8, 4), (13, 5), (5, 9), (1, 3), (37, 1), (37, 37)])
@pytest.mark.parametrize("which", ["zfnet_small", "awkward"])
def test_incremental_equals_the_plain_loop(which, patch_size, stride):
    torch.manual_seed(0)
    if which == "zfnet_small":
        model, size, layer = zfnet_small(init_std=None).eval(), 64, "conv5"
    else:
        model, size, layer = awkward_model(), 37, "relu2"
    images = torch.randn(2, 3, size, size)
    labels = torch.tensor([1, 3])
    fast = occlusion(model, images, labels, layer=layer, patch_size=patch_size, stride=stride, fill=0.3,
                     batch_size=7, method="incremental", progress=False)
    plain = occlusion_plain(model, images, labels, layer=layer, patch_size=patch_size, stride=stride, fill=0.3,
                            batch_size=5, progress=False)
    assert fast.activation.shape == (2, *grid_size(size, size, patch_size, stride))
    assert torch.equal(fast.channel, plain.channel)
    scale = plain.activation.abs().max()
    torch.testing.assert_close(fast.activation, plain.activation, rtol=0, atol=1e-5 * float(scale))
    torch.testing.assert_close(fast.true_prob, plain.true_prob, rtol=0, atol=1e-5)
    assert (fast.top_class == plain.top_class).float().mean() > 0.99
    # the occlusion changes something: the test would see a wrong window
    assert (plain.true_prob - plain.base_prob[:, None, None]).abs().max() > 0


def test_bad_arguments_are_named():
    model = zfnet_small(init_std=None).eval()
    images, labels = torch.randn(1, 3, 64, 64), torch.tensor([0])
    for kwargs, text in [(dict(patch_size=65, stride=1), "patch_size 65 is larger"),
                         (dict(patch_size=8, stride=0), "stride must be a positive int"),
                         (dict(patch_size=0, stride=1), "patch_size must be a positive int")]:
        with pytest.raises(ValueError, match=text):
            occlusion(model, images, labels, layer="conv5", progress=False, **kwargs)
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        occlusion(model, images, labels, layer="conv9", patch_size=8, stride=4, progress=False)
    with pytest.raises(ValueError, match="labels must be"):
        occlusion(model, images, torch.tensor([0.5]), layer="conv5", patch_size=8, stride=4, progress=False)


def test_occluding_the_object_lowers_the_true_class_probability_more_than_background(demo_folder):
    """Fig. 7's claim on the demo model: squares over the object's centre (the
    generator's box) cost far more true-class probability than squares that do
    not touch the box, on average and in most images."""
    import zfcore
    from zfcore.analysis.occlusion import object_share
    from zfcore.load import embedded_dataset

    out, _ = demo_folder
    loaded = zfcore.load(out / "run" / "model.pt")
    val = embedded_dataset(loaded)
    index = torch.arange(0, len(val.labels), 4)[:100]
    images = torch.stack([loaded.preprocess(val.images[i]) for i in index])
    result = occlusion(loaded.model, images, val.labels[index], layer="conv5", patch_size=16, stride=8,
                       progress=False)
    on, off = object_share(result, val.boxes[index])
    both = ~(on.isnan() | off.isnan())
    assert int(both.sum()) >= 90
    on, off = on[both], off[both]
    print(f"\nprobability drop: object {float(on.mean()):.3f}, background {float(off.mean()):.3f}, "
          f"object > background in {float((on > off).double().mean()):.0%} of {len(on)} images")
    assert float(on.mean()) > float(off.mean()) + 0.05
    assert float((on > off).double().mean()) > 0.6


def test_run_occludes_the_first_images_at_the_last_conv_layer_and_renders(monkeypatch, tmp_path):
    """``run`` (zfcore analyze occlusion): the first 10 images (quick) at conv5,
    squares of a quarter of the side at half that stride; the page gets the
    images, boxes, class names and the deconvnet projection of each chosen map.
    Without boxes it runs the same, and the page checks no claim."""
    from zfcore.analysis.occlusion import ANALYSIS, run
    from zfcore.analysis.result import display_signed
    from zfcore.deconv import Deconvnet
    from zfcore.load import Dataset, embedded_dataset
    from zfcore.report.pages.occlusion import render

    subject = untrained_subject(monkeypatch, tmp_path)
    dataset = embedded_dataset(subject)
    assert ANALYSIS.refusal(subject, dataset) is None
    boxless = Dataset(dataset.images[:10], dataset.labels[:10], dataset.classes)
    assert ANALYSIS.refusal(subject, boxless) is None  # the boxes only serve the page's claim
    result, extra = run(subject, dataset, quick=True, progress=False, seed=0)
    assert (result.layer, result.patch_size, result.stride) == ("conv5", 16, 8) and len(result.labels) == 10
    images = subject.preprocess(dataset.images[:10])
    direct = occlusion(subject.model, images, dataset.labels[:10], layer="conv5", patch_size=16, stride=8,
                       progress=False)
    assert torch.equal(direct.true_prob, result.true_prob) and torch.equal(direct.channel, result.channel)
    assert set(extra) == {"images", "boxes", "classes", "projections"}
    assert torch.equal(extra["images"], dataset.images[:10]) and torch.equal(extra["boxes"], dataset.boxes[:10])
    assert extra["classes"] == dataset.classes
    net = Deconvnet(subject.model, subject.input_shape)
    expected = display_signed(net.project(images[3:4], "conv5", int(result.channel[3]), position="map")[0])
    assert extra["projections"].dtype == torch.uint8 and extra["projections"].shape == (10, 3, 64, 64)
    assert (extra["projections"][3].int() - expected.int()).abs().max() <= 1
    page = render(result.to_plain(), tmp_path / "assets", **extra)
    assert [f["file"] for f in page["figures"]] == ["occlusion_maps.png"]
    assert (tmp_path / "assets" / "occlusion_maps.png").stat().st_size > 1000
    assert len(page["tables"][0]["rows"]) == 10 and len(page["claims"]) <= 1
    plain, plain_extra = run(subject, boxless, quick=True, progress=False, seed=0)
    assert plain_extra["boxes"] is None and torch.equal(plain.true_prob, result.true_prob)
    page = render(plain.to_plain(), tmp_path / "boxless", **plain_extra)
    assert page["claims"] == [] and "no object boxes" in page["intro"]

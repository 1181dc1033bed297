"""The pointing game: saliency maps equal their definitions (autograd-hook
references, a brute-force occlusion average), points are the maps' first
maxima, hits and chance equal a pixel-by-pixel count, a model whose saliency
is known by construction hits and misses where it must, and bad arguments are
named."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfcore.analysis import pointing
from zfcore.analysis.gradcam import grad_cam
from zfcore.analysis.occlusion import occlusion
from zfcore.analysis.pointing import PointingGame, default_tolerance, hits, pointing_game, saliency
from zfcore.report.pages.pointing import render


def small_model() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 5, 2, 2)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ("norm1", nn.LocalResponseNorm(3)), ("conv2", nn.Conv2d(6, 8, 3, 1, 1)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(8 * 8 * 8, 5))])).double().eval()


def hooked_saliency(model, images, target, mode):
    """Autograd with ReLU's backward replaced as ``mode`` says, the class score's
    gradient, largest absolute value over channels."""
    def hook(module, grad_in, grad_out):
        if mode == "deconvnet":
            return (grad_out[0].clamp(min=0),)
        if mode == "guided":
            return (grad_in[0].clamp(min=0),)  # grad_in is already masked by input > 0
        return None
    handles = [m.register_full_backward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        x = images.clone().requires_grad_()
        score = model(x).gather(1, target[:, None]).sum()
        grad, = torch.autograd.grad(score, x)
    finally:
        for h in handles:
            h.remove()
    return grad.abs().amax(1)


@pytest.mark.parametrize("mode", ["deconvnet", "guided", "gradient"])
def test_backprop_saliency_equals_the_hooked_autograd_reference(mode):
    model = small_model()
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([0, 3, 4, 1])
    got = saliency(model, images, target, mode)
    want = hooked_saliency(model, images, target, mode)
    assert got.shape == (4, 32, 32)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert want.std() > 0


def test_occlusion_saliency_is_the_mean_drop_over_the_squares_covering_each_pixel():
    model = small_model().float()
    images = torch.randn(2, 3, 32, 32)
    target = torch.tensor([2, 0])
    got = saliency(model, images, target, "occlusion", layer="relu2", patch_size=8, stride=5)
    result = occlusion(model, images, target, layer="relu2", patch_size=8, stride=5, progress=False)
    drop = result.base_prob[:, None, None] - result.true_prob
    gh, gw = drop.shape[1:]
    want = torch.full((2, 32, 32), float("-inf"))
    for y in range(32):
        for x in range(32):
            cover = [(i, j) for i in range(gh) for j in range(gw)
                     if i * 5 <= y < i * 5 + 8 and j * 5 <= x < j * 5 + 8]
            if cover:
                want[:, y, x] = torch.stack([drop[:, i, j] for i, j in cover], 1).mean(1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.isinf(got).any() and drop.abs().max() > 0  # 32 - 8 is not a multiple of 5: a strip is uncovered


def test_hits_and_chance_equal_a_pixel_by_pixel_count():
    boxes = torch.tensor([[3, 4, 9, 7], [0, 0, 1, 1], [10, 2, 16, 16]])
    for tolerance in (0, 1, 3):
        chance = pointing.chance(boxes, 16, 16, tolerance)
        for k, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            count = 0
            for y in range(16):
                for x in range(16):
                    dx = max(x0 - x, 0, x - (x1 - 1))
                    dy = max(y0 - y, 0, y - (y1 - 1))
                    inside = dx * dx + dy * dy <= tolerance * tolerance
                    count += inside
                    assert bool(hits(torch.tensor([[y, x]]), boxes[k:k + 1], tolerance)[0]) == inside, (k, y, x)
            assert abs(float(chance[k]) - count / 256) < 1e-12
    assert default_tolerance(224, 224) == 15 and default_tolerance(64, 80) == 4


def test_a_model_whose_saliency_is_known_hits_and_misses_where_it_must():
    # score_c = sum(w_c * x): the gradient is w_c, whose largest |value| sits where the test puts it
    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 3, 1, bias=False)), ("flatten", nn.Flatten()),
                                       ("fc", nn.Linear(3 * 16 * 16, 2, bias=False))])).double().eval()
    with torch.no_grad():
        model.conv.weight.copy_(torch.eye(3)[:, :, None, None])
        w = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 0.5
        w[0, 1, 5, 6] = 3.0   # class 0 peaks at (y=5, x=6)
        w[1, 2, 14, 1] = -4.0  # class 1 peaks at (y=14, x=1) (absolute value)
        model.fc.weight.copy_(w.reshape(2, -1))
    images = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    boxes = torch.tensor([[4, 4, 8, 8], [4, 4, 8, 8], [0, 10, 3, 16]])
    result = pointing_game(model, images, labels, boxes, methods=["gradient", "guided", "deconvnet"], tolerance=0,
                           progress=False)
    for i in range(3):
        assert result.points[i].tolist() == [[5, 6], [14, 1], [5, 6]]
        assert result.hit[i].tolist() == [True, False, False]
    assert result.accuracy()["gradient"] == pytest.approx(1 / 3)
    # (5, 6) is sqrt(4^2 + 5^2) = 6.4 px from the third box, (14, 1) sqrt(3^2 + 7^2) = 7.6 px from the second
    wider = pointing_game(model, images, labels, boxes, methods=["gradient"], tolerance=7, progress=False)
    assert wider.hit[0].tolist() == [True, False, True]


def test_points_are_the_first_maxima_of_each_method_map_and_the_page_renders(tmp_path):
    model = small_model().float()
    torch.manual_seed(0)
    images = torch.randn(5, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 4])
    boxes = torch.tensor([[2, 2, 20, 20], [10, 5, 30, 31], [0, 0, 32, 32], [5, 5, 6, 6], [16, 0, 32, 16]])
    methods = ["gradient", "gradcam", "occlusion"]
    state = torch.get_rng_state()
    result = pointing_game(model, images, labels, boxes, methods=methods, layer="relu2", batch_size=2, examples=3,
                           progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the engine's probe draws from a forked generator
    assert result.tolerance == default_tolerance(32, 32)
    for i, method in enumerate(methods):
        maps = saliency(model, images, labels, method, layer="relu2")
        index = maps.flatten(1).argmax(1)
        if method == "gradcam":  # the centre of the strongest of the 8 x 8 units: pixel 4 * i + 2
            cam = grad_cam(model, images, "relu2", target=labels, progress=False)
            unit = cam.flatten(1).argmax(1)
            want = torch.stack([4 * (unit // 8) + 2, 4 * (unit % 8) + 2], 1)
            assert torch.allclose(maps, F.interpolate(cam[:, None], size=(32, 32), mode="bilinear")[:, 0])
        else:
            want = torch.stack([index // 32, index % 32], 1)
        assert result.points[i].tolist() == want.tolist(), method
        assert result.hit[i].tolist() == hits(result.points[i], boxes, result.tolerance).tolist()
    assert bool(result.hit[:, 2].all())  # the whole image is the box
    saved = tmp_path / "r.pt"
    torch.save(result.as_dict(), saved)
    page = render(torch.load(saved, weights_only=True), tmp_path / "assets",
                  images=torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8),
                  classes=["$\\notacommand{$", "$1$2", "c", "d", "e"])  # untrusted names: text, never mathtext
    for figure in page["figures"]:
        assert (tmp_path / "assets" / figure["file"]).stat().st_size > 1000
    assert [row[0] for row in page["tables"][0]["rows"]][:3] == methods
    assert page["claims"] and all(isinstance(c["holds"], bool) for c in page["claims"])


def test_bad_arguments_are_named():
    model = small_model().float()
    images, labels, boxes = torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.tensor([[0, 0, 4, 4]] * 2)
    for kwargs, text in [(dict(labels=torch.tensor([0.5, 1.0])), "labels must be an integer Tensor"),
                         (dict(boxes=torch.tensor([[0, 0, 4, 4]])), "boxes must be an integer Tensor"),
                         (dict(boxes=torch.tensor([[4, 0, 4, 4]] * 2)), "0 <= x0 < x1 <= 32"),
                         (dict(methods=["lime"]), "methods must be"),
                         (dict(methods="gradient"), "methods must be"),
                         (dict(tolerance=-1), "tolerance must be"),
                         (dict(batch_size=0), "batch_size must be"),
                         (dict(images=torch.randn(2, 32, 32)), "images must be a float Tensor"),
                         (dict(layer="conv9"), "no layer named 'conv9'")]:
        args = dict(images=images, labels=labels, boxes=boxes)
        args.update(kwargs)
        with pytest.raises(ValueError, match=text):
            pointing_game(model, args.pop("images"), args.pop("labels"), args.pop("boxes"), progress=False, **args)
    with pytest.raises(ValueError, match="method must be one of"):
        saliency(model, images, labels, "lime")
    assert isinstance(PointingGame.from_dict(pointing_game(model, images, labels, boxes, methods=["gradient"],
                                                           progress=False).as_dict()), PointingGame)


def test_run_plays_every_method_on_a_seeded_subset(monkeypatch, tmp_path):
    from tests.helpers import untrained_subject
    from zfcore.analysis.pointing import METHODS, run
    from zfcore.load import embedded_dataset

    loaded = untrained_subject(monkeypatch, tmp_path)
    data = embedded_dataset(loaded).subset(slice(0, 30, 6))  # 5 images: every method is slow on zfnet_small
    result, extra = run(loaded, data, quick=True, progress=False, seed=3)
    index = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(index, torch.arange(5))
    assert result.methods == list(METHODS) and result.layer == "relu5" and result.size == [64, 64]
    assert torch.equal(result.labels, data.labels[index]) and torch.equal(result.boxes, data.boxes[index])
    assert torch.equal(extra["images"], data.images[index]) and extra["classes"] == list(data.classes)
    page = render(result.to_plain(), tmp_path / "assets", **extra)
    assert [f["file"] for f in page["figures"]] == ["pointing_scores.png", "pointing_maps.png"]

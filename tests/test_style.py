"""Texture synthesis and style transfer (Gatys et al.): the Gram matrix and the
losses against their definitions (hand loops, the papers' unnormalised
formula, finite differences in float64), the optimisation (losses fall, batched
Adam equals per-image runs, seeds), the model left untouched, bad arguments
named, and the page's files and claims."""

from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from zfcore.analysis._priors import graph_tap
from zfcore.analysis.style import (StyleStudy, Synthesis, content_loss, embedded_textures, feature_layers, gram,
                                   style_loss, synthesize_texture, transfer_style)
from zfcore.models import zfnet_small
from zfcore.report.pages.style import render


def tiny_model(dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 3, padding=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(6, 8, 3, stride=2)), ("relu2", nn.ReLU(inplace=True)),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(8 * 5 * 5, 4))])).to(dtype).eval()


def smooth_model(dtype=torch.float64) -> nn.Sequential:
    """Tanh instead of ReLU: the loss is smooth, as finite differences need."""
    torch.manual_seed(4)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 4, 3, padding=1)), ("act1", nn.Tanh()),
        ("conv2", nn.Conv2d(4, 5, 3, stride=2)), ("act2", nn.Tanh())])).to(dtype).eval()


def features(model, x, layers):
    with graph_tap(model, layers) as tap:
        return tap(x)


def test_gram_equals_the_hand_computation_in_float64():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = torch.zeros(2, 3, 3, dtype=torch.float64)
    for n in range(2):
        for i in range(3):
            for j in range(3):
                expected[n, i, j] = sum(float(f[n, i, h, w] * f[n, j, h, w]) for h in range(4) for w in range(5)) / 60
    torch.testing.assert_close(gram(f), expected, rtol=0, atol=1e-14)


def test_style_loss_is_the_papers_unnormalised_formula():
    """E_l = 1 / (4 N_l^2 M_l^2) sum (G - A)^2 with G = F F^T (Gatys 2015, eq. 4), weighted."""
    torch.manual_seed(1)
    feats = {"a": torch.randn(2, 3, 4, 4, dtype=torch.float64), "b": torch.randn(2, 5, 2, 3, dtype=torch.float64)}
    other = {"a": torch.randn(1, 3, 6, 6, dtype=torch.float64), "b": torch.randn(1, 5, 3, 3, dtype=torch.float64)}
    weights = {"a": 0.3, "b": 2.0}
    expected = torch.zeros(2, dtype=torch.float64)
    for name, f in feats.items():
        _, c, h, w = f.shape
        g = torch.einsum("nihw,njhw->nij", f, f)  # unnormalised, per image
        t = other[name]
        a = torch.einsum("nihw,njhw->nij", t, t) * (c * h * w) / (c * t.shape[2] * t.shape[3])  # same N_l M_l
        expected += weights[name] * ((g - a) ** 2).sum((1, 2)) / (4 * c ** 2 * (h * w) ** 2)
    got = style_loss(feats, {k: gram(v) for k, v in other.items()}, weights)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    # default weights: 1 / number of layers
    torch.testing.assert_close(style_loss(feats, {k: gram(v) for k, v in other.items()}),
                               style_loss(feats, {k: gram(v) for k, v in other.items()}, {"a": 0.5, "b": 0.5}))


def test_losses_of_an_image_with_itself_are_zero():
    model = zfnet_small(init_std=None).eval()
    torch.manual_seed(2)
    x = torch.randn(3, 3, 64, 64)
    feats = features(model, x, ["relu1", "norm2", "relu5"])
    assert torch.equal(style_loss(feats, {k: gram(v) for k, v in feats.items()}), torch.zeros(3))
    assert torch.equal(content_loss(feats["relu5"], feats["relu5"]), torch.zeros(3))
    # and not zero against another image (the test would not see a loss that is always 0)
    other = features(model, x.roll(1, 0), ["relu1", "norm2", "relu5"])
    assert (style_loss(feats, {k: gram(v) for k, v in other.items()}) > 0).all()


def test_content_loss_is_half_the_squared_distance():
    torch.manual_seed(5)
    f, p = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    expected = torch.tensor([0.5 * sum(float((f[n] - p[0]).flatten()[k]) ** 2 for k in range(48)) for n in range(2)],
                            dtype=torch.float64)
    torch.testing.assert_close(content_loss(f, p), expected, rtol=1e-12, atol=0)


def test_the_objectives_gradients_match_finite_differences():
    model = smooth_model()
    torch.manual_seed(6)
    style_x, content_x = torch.randn(1, 3, 9, 9, dtype=torch.float64), torch.randn(2, 3, 5, 5, dtype=torch.float64)
    targets = {k: gram(v) for k, v in features(model, style_x, ["act1", "act2"]).items()}
    content_target = features(model, content_x, ["act2"])["act2"]
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)

    def objective(image):
        feats = features(model, image, ["act1", "act2"])
        return style_loss(feats, targets, {"act1": 0.7, "act2": 0.3}) * 10 + content_loss(feats["act2"], content_target)

    assert torch.autograd.gradcheck(objective, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("optimizer,scale", [("lbfgs", 1.0), ("adam", 1.0), ("lbfgs", 1e-3)])
def test_a_few_steps_lower_the_style_loss_and_the_gram_distance(optimizer, scale):
    """Also on images (and so Gram matrices) of a tiny scale, where L-BFGS's
    absolute thresholds would stall on the raw loss."""
    model = tiny_model()
    for p in model.parameters():
        p.data *= 1 if scale == 1 else 0.1
    torch.manual_seed(7)
    textures = torch.randn(2, 3, 12, 12).cumsum(-1) * 0.3 * scale  # some structure
    result = synthesize_texture(model, textures, ["relu1", "relu2"], steps=15, optimizer=optimizer, progress=False,
                                lr=0.3 if optimizer == "adam" else None)
    assert (result.style_loss < 0.5 * result.start_style_loss).all()
    assert (result.gram_distance < result.noise_gram_distance).all()
    # the start is the noise: its recorded loss is the noise's
    noise_loss = style_loss(features(model, result.noise, ["relu1", "relu2"]),
                            {k: gram(v) for k, v in features(model, textures, ["relu1", "relu2"]).items()})
    torch.testing.assert_close(result.start_style_loss, noise_loss)
    # the recorded final loss is that of the outputs
    final = style_loss(features(model, result.outputs, ["relu1", "relu2"]),
                       {k: gram(v) for k, v in features(model, textures, ["relu1", "relu2"]).items()})
    torch.testing.assert_close(result.style_loss, final)


def test_batched_adam_equals_per_image_runs():
    """Adam steps each pixel by its own gradient, and image n's gradient depends on
    image n alone: a batch equals per-image runs (image n's noise is the n-th draw)."""
    model = tiny_model(torch.float64)
    torch.manual_seed(8)
    a, b, c = torch.randn(3, 1, 3, 10, 10, dtype=torch.float64)
    kwargs = dict(steps=8, optimizer="adam", seed=3, progress=False)
    both = synthesize_texture(model, torch.cat([a, b]), ["relu1", "relu2"], **kwargs)
    alone = synthesize_texture(model, a, ["relu1", "relu2"], **kwargs)
    torch.testing.assert_close(both.outputs[:1], alone.outputs, rtol=0, atol=1e-12)
    torch.testing.assert_close(both.style_curve[:, :1], alone.style_curve, rtol=1e-10, atol=0)
    other = synthesize_texture(model, torch.cat([c, b]), ["relu1", "relu2"], **kwargs)
    torch.testing.assert_close(both.outputs[1:], other.outputs[1:], rtol=0, atol=1e-12)
    # transfer: one style for all equals that style repeated per image
    content = torch.cat([a, c])
    one = transfer_style(model, content, b, content_layer="relu2", style_layers=["relu1"], style_weight=50.0,
                         **kwargs)
    each = transfer_style(model, content, torch.cat([b, b]), content_layer="relu2", style_layers=["relu1"],
                          style_weight=50.0, **kwargs)
    torch.testing.assert_close(one.outputs, each.outputs, rtol=0, atol=1e-12)
    assert not torch.allclose(one.outputs, content)  # it did move
    # pairwise styles: image n takes style n, as a run of image n alone (from the content: no noise involved)
    pairs = transfer_style(model, content, torch.cat([b, a]), content_layer="relu2", style_layers=["relu1"],
                           style_weight=50.0, **kwargs)
    second = transfer_style(model, c, a, content_layer="relu2", style_layers=["relu1"], style_weight=50.0, **kwargs)
    torch.testing.assert_close(pairs.outputs[1:], second.outputs, rtol=0, atol=1e-12)
    torch.testing.assert_close(pairs.outputs[:1], one.outputs[:1], rtol=0, atol=1e-12)


def test_the_seed_fixes_the_result():
    model = tiny_model()
    torch.manual_seed(9)
    textures = torch.randn(2, 3, 24, 24) * torch.tensor([[[[0.5]]], [[[2.0]]]]) + torch.tensor([-1.0, 3.0])[:, None,
                                                                                                        None, None]
    first = synthesize_texture(model, textures, ["relu1"], steps=4, seed=5, progress=False)
    again = synthesize_texture(model, textures, ["relu1"], steps=4, seed=5, progress=False)
    other = synthesize_texture(model, textures, ["relu1"], steps=4, seed=6, progress=False)
    assert torch.equal(first.outputs, again.outputs) and torch.equal(first.noise, again.noise)
    assert not torch.allclose(first.noise, other.noise) and not torch.allclose(first.outputs, other.outputs)
    # image n's noise has its texture's mean and standard deviation (up to sampling)
    for n in range(2):
        assert abs(float(first.noise[n].mean() - textures[n].mean())) < 0.15 * float(textures[n].std())
        assert abs(float(first.noise[n].std() / textures[n].std()) - 1) < 0.1


def test_transfer_with_no_style_weight_keeps_the_content():
    model = tiny_model()
    torch.manual_seed(10)
    content, style = torch.randn(2, 3, 10, 10), torch.randn(1, 3, 8, 8)
    kept = transfer_style(model, content, style, content_layer="relu2", style_layers=["relu1"], style_weight=0.0,
                          steps=5, optimizer="adam", progress=False)
    assert torch.equal(kept.outputs, content)  # the content is the optimum: zero gradient, Adam does not move
    assert torch.equal(kept.content_loss, torch.zeros(2))
    from_noise = transfer_style(model, content, style, content_layer="relu2", style_layers=["relu1"],
                                style_weight=0.0, steps=10, init="noise", progress=False)
    assert (from_noise.content_loss < 0.2 * from_noise.content_curve[0]).all()


def test_the_model_is_left_as_it_was():
    model = zfnet_small(init_std=None).train()
    model.fc8.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(11)
    x = torch.randn(2, 3, 64, 64)
    synthesize_texture(model, x, ["relu1", "relu3"], steps=2, progress=False)
    transfer_style(model, x, x[:1], content_layer="relu2", style_layers=["relu1"], steps=2, optimizer="adam",
                   progress=False)
    assert model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert p.requires_grad == (name != "fc8.weight"), name


def test_bad_arguments_are_named():
    model = tiny_model()
    x = torch.randn(2, 3, 12, 12)
    for kwargs, text in [(dict(layers=["conv9"]), "synthesize_texture: no layer named 'conv9'"),
                         (dict(layers=[]), "synthesize_texture: layers is empty"),
                         (dict(layers=["relu1", "relu1"]), "names a layer twice"),
                         (dict(layers=["fc"]), "layer 'fc' gives Tensor\\[2, 4\\], not feature maps"),
                         (dict(steps=0), "steps must be a positive int"),
                         (dict(steps=True), "steps must be a positive int"),
                         (dict(optimizer="sgd"), "optimizer must be 'lbfgs' or 'adam'"),
                         (dict(lr=-1.0), "lr must be a positive number"),
                         (dict(layer_weights=[1.0, 2.0]), "layer_weights must be None"),
                         (dict(layer_weights=[-1.0]), "layer_weights must be finite"),
                         (dict(size=0), "size must be None"),
                         (dict(textures=torch.randn(3, 10, 10)), "textures must be a float Tensor\\[N, C, H, W\\]"),
                         (dict(textures=torch.randn(2, 5, 10, 10)), "cannot run on the style images")]:
        args = dict(textures=x, layers=["relu1"], steps=1, progress=False) | kwargs
        with pytest.raises(ValueError, match=text):
            synthesize_texture(model, args.pop("textures"), args.pop("layers"), **args)
    with pytest.raises(TypeError, match="synthesize_texture: model must be a torch.nn.Module"):
        synthesize_texture(lambda t: t, x, ["relu1"], progress=False)
    for kwargs, text in [(dict(style=torch.randn(3, 3, 8, 8)), "style must be a Tensor\\[2 or 1, 3, h, w\\]"),
                         (dict(style=torch.randn(1, 4, 8, 8)), "style must be a Tensor\\[2 or 1, 3, h, w\\]"),
                         (dict(content_layer="nope"), "transfer_style: no layer named 'nope'"),
                         (dict(style_layers=[]), "transfer_style: layers is empty"),
                         (dict(init="zeros"), "init must be 'content' or 'noise'"),
                         (dict(style_weight=-1.0), "style_weight must be a non-negative number"),
                         (dict(style_weight=0.0, content_weight=0.0), "both 0"),
                         (dict(steps=-3), "transfer_style: steps must be a positive int"),
                         (dict(optimizer="LBFGS"), "transfer_style: optimizer must be")]:
        args = dict(style=torch.randn(1, 3, 8, 8), content_layer="relu2", style_layers=["relu1"], steps=1,
                    progress=False) | kwargs
        with pytest.raises(ValueError, match=text):
            transfer_style(model, x, args.pop("style"), **args)
    with pytest.raises(ValueError, match="gram: features must be a float Tensor\\[N, C, H, W\\]"):
        gram(torch.randn(3, 4))
    with pytest.raises(ValueError, match="style_loss: target_grams must be a Tensor\\[2 or 1, 3, 3\\]"):
        style_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="style_loss: target_grams has layers"):
        style_loss({"a": torch.randn(2, 3, 4, 4)}, {"b": torch.randn(1, 3, 3)})
    with pytest.raises(ValueError, match="content_loss: target must have the shape of features"):
        content_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5))


class _Log(nn.Module):
    def forward(self, x):
        return x.log()


def test_a_diverging_loss_is_an_error_not_junk():
    model = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 4, 3)), ("log", _Log())])).eval()
    with pytest.raises(ValueError, match="synthesize_texture: the loss became nan"):
        synthesize_texture(model, torch.randn(1, 3, 8, 8), ["log"], steps=2, progress=False)


def test_embedded_helpers():
    assert feature_layers(zfnet_small(init_std=None)) == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    assert feature_layers(smooth_model()) == ["conv1", "conv2"]  # no ReLU after the convolutions
    boxes = torch.tensor([[0, 0, 10, 10], [40, 50, 64, 64], [5, 5, 30, 30], [2, 2, 6, 6]])
    base = SimpleNamespace(images=torch.arange(4, dtype=torch.uint8)[:, None, None, None].expand(4, 3, 64, 64),
                           labels=torch.tensor([0, 1, 1, 0]), boxes=boxes, classes=("a", "b"))
    images, windows = embedded_textures(base, ["b", "a"], 32)
    # class b: the larger box is image 2 (25 px against 24); class a: image 0
    assert images[:, 0, 0, 0].tolist() == [2, 0]
    assert windows.tolist() == [[1, 1, 33, 33], [0, 0, 32, 32]]  # centred, moved inside the image


def _results():
    model = tiny_model()
    torch.manual_seed(12)
    textures = torch.randn(2, 3, 10, 10).cumsum(-1) * 0.3
    texture = synthesize_texture(model, textures, ["relu1", "relu2"], steps=6, progress=False, label="t")
    transfer = transfer_style(model, torch.randn(2, 3, 10, 10), textures, content_layer="relu2",
                              style_layers=["relu1", "relu2"], style_weight=100.0, steps=6, progress=False)
    return texture, transfer


def test_render_writes_its_figures_and_the_dict_survives_a_safe_load(tmp_path):
    texture, transfer = _results()
    torch.save(StyleStudy([texture, transfer]).as_dict(), tmp_path / "r.pt")
    saved = torch.load(tmp_path / "r.pt", weights_only=True)
    page = render(saved, tmp_path / "assets")
    assert len(page["figures"]) == 3
    for figure in page["figures"]:
        assert (tmp_path / "assets" / figure["file"]).stat().st_size > 1000
    assert len(page["tables"][0]["rows"]) == 4
    # the claims are computed from the numbers
    assert [c["holds"] for c in page["claims"]] == [
        x for s in (texture, transfer) for x in (bool((s.gram_distance < s.noise_gram_distance).all()),
                                                 bool((s.start_style_loss >= 10 * s.style_loss).all()))]
    # a result whose Gram matrices moved away from the target, and whose loss fell less than tenfold, fails
    worse = texture.as_dict() | {"gram_distance": texture.noise_gram_distance * 2,
                                 "style_loss": texture.start_style_loss / 5}
    claims = render(Synthesis.from_dict(worse), tmp_path / "worse")["claims"]
    assert [c["holds"] for c in claims] == [False, False]
    with pytest.raises(ValueError, match="render: display must hold one dict per synthesis"):
        render(saved, tmp_path / "bad", display=[{}])

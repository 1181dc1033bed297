"""Inversion (Mahendran & Vedaldi) and the image priors it shares with the
class models and DeepDream: the priors against hand computations and finite
differences, the objective against its closed form on a linear model, the
optimisation lowering it, seeds, the reported errors against their
definitions, bad arguments, and the page."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zfcore.analysis._priors import alpha_norm, layer_output, total_variation
from zfcore.analysis.inversion import Inversion, depth_claim, invert, inversion_objective
from zfcore.report.pages.inversion import render


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 3, 1, 1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(6, 8, 3, 2, 1)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(8 * 4 * 4, 5))])).eval()


# -- the priors ---------------------------------------------------------------

def test_total_variation_of_a_small_image_by_hand():
    x = torch.tensor([[0.0, 1.0, 3.0],
                      [2.0, 2.0, 0.0],
                      [1.0, 0.0, 0.0]])
    # per pixel (horizontal difference, vertical difference); past the last column/row: 0
    #   (1, 2) (2, 1) (0, -3)
    #   (0, -1) (-2, -2) (0, 0)
    #   (-1, 0) (0, 0) (0, 0)
    squares = [5, 5, 9, 1, 8, 0, 1, 0, 0]
    image = torch.stack([x, 2 * x])[None]                 # a second channel: 4 times the squares
    assert total_variation(image, beta=2.0).item() == pytest.approx(5 * sum(squares))
    expected_b1 = sum(math.sqrt(s) for s in squares) * (1 + 2)
    assert total_variation(image, beta=1.0).item() == pytest.approx(expected_b1)
    assert total_variation(image, beta=3.0).item() == pytest.approx(sum(s ** 1.5 for s in squares) * (1 + 8))
    # per image of a batch
    batch = torch.cat([image, torch.zeros_like(image), -image])
    torch.testing.assert_close(total_variation(batch, 1.0), torch.tensor([expected_b1, 0.0, expected_b1]))


def test_total_variation_of_a_constant_image_is_zero_with_zero_gradient():
    for beta in (1.0, 1.5, 2.0):
        x = torch.full((2, 3, 5, 4), 0.7, dtype=torch.float64, requires_grad=True)
        tv = total_variation(x, beta)
        assert torch.equal(tv, torch.zeros(2, dtype=torch.float64))
        grad, = torch.autograd.grad(tv.sum(), x)
        assert torch.equal(grad, torch.zeros_like(grad))   # not NaN at the kink of beta < 2


def test_alpha_norm_by_hand():
    x = torch.tensor([1.0, -2.0, 0.5, 0.0]).view(1, 1, 2, 2)
    assert alpha_norm(x, 3.0).item() == pytest.approx(1 + 8 + 0.125)
    assert alpha_norm(x, 6.0).item() == pytest.approx(1 + 64 + 0.5 ** 6)
    zero = torch.zeros(1, 1, 2, 2, requires_grad=True)
    grad, = torch.autograd.grad(alpha_norm(zero, 1.0).sum(), zero)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0, 3.0])
def test_total_variation_gradient_matches_finite_differences(beta):
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: total_variation(t, beta), (x,))


@pytest.mark.parametrize("alpha", [1.5, 2.0, 6.0])
def test_alpha_norm_gradient_matches_finite_differences(alpha):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: alpha_norm(t, alpha), (x,))


def test_prior_arguments_are_named():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="total_variation: beta must be a positive number"):
        total_variation(x, 0.0)
    with pytest.raises(ValueError, match="alpha_norm: alpha must be a positive number"):
        alpha_norm(x, -1.0)
    with pytest.raises(ValueError, match=r"total_variation: x must be a float Tensor\[N, C, H, W\]"):
        total_variation(x[0])


# -- the objective ------------------------------------------------------------

def test_objective_on_a_linear_model_equals_its_closed_form():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc", nn.Linear(3 * 4 * 4, 7))])).double()
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    x0 = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    target = x0.flatten(1) @ w.T + b
    # at x = x0 the feature term is 0, and so is its gradient
    at_x0 = x0.clone().requires_grad_(True)
    total, term = inversion_objective(model, at_x0, "fc", target, scale=1.0, alpha_weight=0.0, tv_weight=0.0)
    assert torch.equal(term, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(torch.autograd.grad(total.sum(), at_x0)[0], torch.zeros_like(x0))
    # elsewhere: ||W (x - x0)||^2 / ||W x0 + b||^2, gradient 2 W^T W (x - x0) / ||W x0 + b||^2
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    total, term = inversion_objective(model, x, "fc", target, scale=1.0, alpha_weight=0.0, tv_weight=0.0)
    d = (x - x0).detach().flatten(1)
    norm2 = target.square().sum(1)
    torch.testing.assert_close(term, (d @ w.T).square().sum(1) / norm2)
    grad, = torch.autograd.grad(total.sum(), x)
    torch.testing.assert_close(grad.flatten(1), 2 * (d @ w.T @ w) / norm2[:, None])
    # the priors enter with the documented normalisation (values C H W, V = B / 6.5)
    scale, values = 0.8, 3 * 4 * 4
    total, term = inversion_objective(model, x, "fc", target, scale=scale, alpha=4.0, alpha_weight=0.3,
                                      tv_beta=1.5, tv_weight=0.2)
    xd = x.detach()
    prior_a = (xd / scale).abs().pow(4).sum((1, 2, 3)) / values
    prior_tv = total_variation(xd * 6.5 / scale, 1.5) / values
    torch.testing.assert_close(total, term + 0.3 * prior_a + 0.2 * prior_tv)


def test_objective_gradient_matches_finite_differences_on_a_cnn():
    model = tiny_cnn().double()
    x0 = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = model.conv2(model.relu1(model.conv1(x0)))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)

    def f(t):
        return inversion_objective(model, t, "conv2", target, scale=0.9, alpha_weight=0.1, tv_weight=0.05)[0]

    assert torch.autograd.gradcheck(f, (x,))


# -- the optimisation ---------------------------------------------------------

def test_steps_lower_the_objective_and_errors_follow_their_definitions():
    model = tiny_cnn()
    was = [p.detach().clone() for p in model.parameters()]
    model.train()
    images = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    result = invert(model, images, ["relu1", "fc"], steps=40, lr=0.1, progress=False)
    assert model.training                                        # restored
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), was))
    model.eval()
    assert result.reconstructions.shape == (2, 3, 3, 8, 8)
    assert result.scale == pytest.approx(float(images.square().mean().sqrt()))
    for l, layer in enumerate(result.layers):
        assert result.curve[l, -1] < 0.5 * result.curve[l, 0]
        with torch.no_grad():
            target = layer_output(model, images, layer)
            total, term = inversion_objective(model, result.reconstructions[l], layer, target, scale=result.scale)
        torch.testing.assert_close(result.feature_error[l], term.sqrt())
        assert float(total.mean()) < result.curve[l, 0]
        expected = (result.reconstructions[l] - images).flatten(1).norm(dim=1) / images.flatten(1).norm(dim=1)
        torch.testing.assert_close(result.pixel_error[l], expected)
    assert torch.equal(result.originals, images)


def test_batched_images_are_independent():
    """Adam acts per value: with B fixed, an image reconstructs the same alone or in a batch
    (its start is the batch's noise, so the single run gets the same start by its own seed draw: image 0)."""
    model = tiny_cnn()
    images = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    both = invert(model, images, "relu2", steps=10, scale=1.0, progress=False)
    alone = invert(model, images[:1], "relu2", steps=10, scale=1.0, progress=False)
    torch.testing.assert_close(both.reconstructions[0, :1], alone.reconstructions[0], atol=1e-5, rtol=1e-5)


def test_seed_decides_the_start():
    model = tiny_cnn()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    a = invert(model, images, "relu2", steps=5, seed=1, progress=False)
    b = invert(model, images, "relu2", steps=5, seed=1, progress=False)
    c = invert(model, images, "relu2", steps=5, seed=2, progress=False)
    assert torch.equal(a.reconstructions, b.reconstructions)
    assert not torch.allclose(a.reconstructions, c.reconstructions)


def test_bad_arguments_are_named():
    model = tiny_cnn()
    images = torch.randn(1, 3, 8, 8)
    for kwargs, text in [(dict(layers="conv9"), "no layer named 'conv9'"),
                         (dict(layers=[]), "layers is empty"),
                         (dict(steps=0), "invert: steps must be a positive int"),
                         (dict(alpha_weight=-1.0), "invert: alpha_weight must be a non-negative number"),
                         (dict(tv_weight=-0.1), "invert: tv_weight must be a non-negative number"),
                         (dict(lr=0.0), "invert: lr must be a positive number"),
                         (dict(alpha=0.5), "invert: alpha must be >= 1"),
                         (dict(scale=-1.0), "invert: scale must be a positive number"),
                         (dict(images=images[0]), r"invert: images must be a float Tensor\[N, C, H, W\] with N >= 1"),
                         (dict(images=torch.full((1, 3, 8, 8), float("nan"))), "invert: images hold NaN")]:
        args = dict(layers="relu1", images=images) | kwargs
        with pytest.raises(ValueError, match=text):
            invert(model, args.pop("images"), args.pop("layers"), progress=False, **args)
    dead = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 2, 1)), ("relu", nn.ReLU())]))
    with torch.no_grad():
        dead.conv.weight.zero_()
        dead.conv.bias.fill_(-1.0)
    with pytest.raises(ValueError, match=r"invert: images \[0\] have all-zero features at 'relu'"):
        invert(dead, images, "relu", progress=False)


def test_render_writes_its_figures_and_the_dict_survives_saving(tmp_path):
    model = tiny_cnn()
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(10))
    result = invert(model, images, ["conv1", "relu2"], steps=3, progress=False)
    path = tmp_path / "saved.pt"
    torch.save(result.as_dict(), path)
    saved = torch.load(path, weights_only=True)
    for extra in ({}, {"images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
                       "reconstructions": torch.zeros(2, 2, 3, 8, 8, dtype=torch.uint8),
                       "classes": ["a", "b"], "labels": torch.tensor([1, 0])}):
        page = render(saved, tmp_path / "assets", **extra)
        assert page["figures"] and all((tmp_path / "assets" / f["file"]).is_file() for f in page["figures"])
    claim, = page["claims"]
    means = result.pixel_error.mean(1)
    assert claim["holds"] == bool(means[1] > means[0])
    # the claim follows the errors: rising within the tolerance holds, a fall beyond it does not
    for errors, holds in (([0.3, 0.8, 1.05, 1.04], True), ([0.3, 0.8, 0.7, 1.0], False), ([0.5, 0.49], False)):
        pixel_error = torch.tensor(errors)[:, None].expand(-1, 3)
        assert depth_claim([f"l{i}" for i in range(len(errors))], pixel_error)["holds"] == holds
    assert isinstance(Inversion.from_dict(saved), Inversion)

"""Class models (Simonyan et al.): the objective's gradient against its closed
form on a linear model, convergence to the known maximiser w_c / (2 l2), the
batch against one class at a time, the jitter and blur it uses (shared with
DeepDream), seeds, bad arguments, and the page."""

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from zfcore.analysis._priors import gaussian_blur, jitter
from zfcore.analysis.class_model import ClassModels, class_model_objective, class_models
from zfcore.report.pages.class_model import render

SHAPE = (3, 4, 5)


def linear_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc", nn.Linear(math.prod(SHAPE), 4))])).double()


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 3, 1, 1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(6, 8, 3, 2, 1)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(8 * 4 * 4, 5))])).eval()


def test_objective_gradient_on_a_linear_model_is_w_minus_2_l2_i():
    model = linear_model()
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    images = torch.randn(3, *SHAPE, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([2, 0, 2])
    objective, logits = class_model_objective(model, images, classes, l2=0.3)
    flat = images.detach().flatten(1)
    torch.testing.assert_close(objective, (flat * w[classes]).sum(1) + b[classes] - 0.3 * flat.square().sum(1))
    torch.testing.assert_close(logits, flat @ w.T + b)
    grad, = torch.autograd.grad(objective.sum(), images)
    torch.testing.assert_close(grad.flatten(1), w[classes] - 2 * 0.3 * flat)


def test_ascent_on_a_linear_model_converges_to_the_maximiser():
    model = linear_model()
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    l2 = 0.5
    result = class_models(model, [3, 1], SHAPE, steps=60, lr=0.5, l2=l2, init_std=1.0, progress=False)
    expected = w[[3, 1]] / (2 * l2)
    torch.testing.assert_close(result.images.flatten(1), expected)
    torch.testing.assert_close(result.all_scores, expected @ w.T + b)
    torch.testing.assert_close(result.scores, result.all_scores[[0, 1], [3, 1]])
    # the objective at the maximiser: ||w_c||^2 / (4 l2) + b_c, approached from below
    best = w[[3, 1]].square().sum(1) / (4 * l2) + b[[3, 1]]
    assert result.curve[-1] == pytest.approx(float(best.mean()), rel=1e-6)
    assert (result.curve[1:] >= result.curve[:-1] - 1e-9).all()
    assert result.target_wins().tolist() == (result.all_scores.argmax(1) == torch.tensor([3, 1])).tolist()


def test_a_too_large_step_is_reported_as_divergence():
    with pytest.raises(ValueError, match="class_models: the ascent diverged at step"):
        class_models(linear_model().float(), [0], SHAPE, steps=200, lr=10.0, l2=1.0, progress=False)


def test_the_batch_equals_one_class_at_a_time():
    model = tiny_cnn()
    kwargs = dict(steps=12, lr=0.5, l2=0.05, jitter=2, blur_sigma=0.6, blur_every=3, init_std=0.0, seed=3,
                  progress=False)
    batch = class_models(model, [0, 4, 2], (3, 8, 8), **kwargs)
    for k, c in enumerate([0, 4, 2]):
        alone = class_models(model, [c], (3, 8, 8), **kwargs)
        torch.testing.assert_close(alone.images[0], batch.images[k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.all_scores[0], batch.all_scores[k], atol=1e-5, rtol=1e-5)
    assert batch.images.abs().amax() > 0      # it moved: the test would see a broken gradient


def test_seed_decides_the_noise_and_the_jitter_and_the_model_is_left_alone():
    model = tiny_cnn()
    was = [p.detach().clone() for p in model.parameters()]
    model.train()
    kwargs = dict(steps=5, lr=0.5, l2=0.05, jitter=2, progress=False)
    a = class_models(model, [1, 3], (3, 8, 8), seed=7, **kwargs)
    b = class_models(model, [1, 3], (3, 8, 8), seed=7, **kwargs)
    c = class_models(model, [1, 3], (3, 8, 8), seed=8, **kwargs)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), was))


def test_jitter_rolls_by_a_seeded_shift_and_draws_nothing_at_zero():
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).view(2, 1, 5, 6)
    rolled, (dy, dx) = jitter(x, 2, torch.Generator().manual_seed(5))
    assert [dy, dx] == torch.randint(-2, 3, (2,), generator=torch.Generator().manual_seed(5)).tolist()
    assert torch.equal(rolled, x.roll((dy, dx), (2, 3)))
    generator = torch.Generator().manual_seed(5)
    same, shift = jitter(x, 0, generator)
    assert same is x and shift == (0, 0)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(5).get_state())
    shifts = {jitter(x, 1, generator)[1] for _ in range(60)}
    assert shifts == {(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)}


def test_gaussian_blur_by_hand():
    sigma = 0.8
    delta = torch.zeros(1, 2, 9, 9, dtype=torch.float64)
    delta[0, 0, 4, 4] = 1.0
    out = gaussian_blur(delta, sigma)
    t = torch.arange(-3, 4, dtype=torch.float64)          # radius ceil(3 * 0.8) = 3
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[1:8, 1:8] = k[:, None] * k[None, :]
    torch.testing.assert_close(out[0, 0], expected)
    assert torch.equal(out[0, 1], torch.zeros(9, 9, dtype=torch.float64))   # channels stay apart
    flat = torch.full((1, 3, 6, 7), 2.5)
    torch.testing.assert_close(gaussian_blur(flat, 1.3), flat)           # the border replicated, weights sum to 1
    assert gaussian_blur(flat, 0.0) is flat


def test_bad_arguments_are_named():
    model = tiny_cnn()
    for args, kwargs, text in [
            (([5], (3, 8, 8)), {}, r"class_models: classes must be ints in \[0, 5\)"),
            (([-1], (3, 8, 8)), {}, r"class_models: classes must be ints in \[0, 5\)"),
            (([], (3, 8, 8)), {}, "class_models: classes is empty"),
            ((torch.tensor([0.0]), (3, 8, 8)), {}, "class_models: classes must be a LongTensor"),
            (([0], (8, 8)), {}, r"class_models: input_shape must be \(C, H, W\)"),
            (([0], (3, 8, 8)), dict(l2=-0.1), "class_models: l2 must be a non-negative number"),
            (([0], (3, 8, 8)), dict(steps=0), "class_models: steps must be a positive int"),
            (([0], (3, 8, 8)), dict(lr=0.0), "class_models: lr must be a positive number"),
            (([0], (3, 8, 8)), dict(jitter=-2), "class_models: jitter must be an int >= 0"),
            (([0], (3, 8, 8)), dict(blur_sigma=-1.0), "class_models: blur_sigma must be a non-negative number"),
            (([0], (3, 8, 8)), dict(blur_every=0), "class_models: blur_every must be a positive int"),
            (([0], (3, 8, 8)), dict(seed=-1), "class_models: seed must be a non-negative int")]:
        with pytest.raises(ValueError, match=text):
            class_models(model, *args, progress=False, **kwargs)
    maps = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 2, 3))]))
    with pytest.raises(ValueError, match=r"class_models: the model must return logits Tensor\[N, classes\]"):
        class_models(maps, [0], (3, 8, 8), progress=False)


def test_render_writes_its_figures_and_the_dict_survives_saving(tmp_path):
    result = class_models(tiny_cnn(), [0, 1, 2, 3, 4], (3, 8, 8), steps=5, lr=0.5, progress=False)
    path = tmp_path / "saved.pt"
    torch.save(result.as_dict(), path)
    saved = torch.load(path, weights_only=True)
    for extra in ({}, {"classes": list("abcde"), "with_mean": torch.zeros(5, 3, 8, 8, dtype=torch.uint8)}):
        page = render(saved, tmp_path / "assets", **extra)
        assert page["figures"] and all((tmp_path / "assets" / f["file"]).is_file() for f in page["figures"])
    claim, = page["claims"]
    wins = result.all_scores.argmax(1) == result.classes
    assert claim["holds"] == bool(wins.all())
    assert claim["detail"].startswith(f"{int(wins.sum())} of 5 images")
    margins = [row[4] for row in page["tables"][0]["rows"]]
    for k, margin in enumerate(margins):
        others = result.all_scores[k].clone()
        others[k] = -math.inf
        assert margin == round(float(result.all_scores[k, k] - others.max()), 3)
    assert isinstance(ClassModels.from_dict(saved), ClassModels)

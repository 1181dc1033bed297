"""DeepDream: one step against a hand-written normalised gradient step, the
objective rising, the octave sizes the model sees, the jitter as a roll,
seeds, batch independence, bad arguments, and the page."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfcore.analysis._priors import layer_output
from zfcore.analysis.deepdream import DeepDream, deep_dream, octave_sizes
from zfcore.report.pages.deepdream import render


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 6, 3, 1, 1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(6, 8, 3, 2, 1)), ("relu2", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(8, 4))])).eval()


def images(n=2, size=12, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_one_step_equals_the_hand_written_normalised_gradient_step():
    model = tiny_cnn().double()
    x = images().double()
    result = deep_dream(model, x, "relu1", octaves=1, steps=1, lr=0.1, jitter=0, scale=0.5, progress=False)
    # 0.5 ||relu(conv(x))||^2: its gradient is conv's transpose applied to the activation
    with torch.no_grad():
        a = F.relu(F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1))
        g = F.conv_transpose2d(a, model.conv1.weight, padding=1)
    expected = x + 0.1 * 0.5 * g / g.abs().mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(result.dreams, expected)
    torch.testing.assert_close(result.norm_before, a.flatten(1).norm(dim=1))
    assert result.curve.tolist() == pytest.approx([float((0.5 * a.flatten(1).square().sum(1)).mean())], rel=1e-6)
    # the default B is the images' root mean square
    default = deep_dream(model, x, "relu1", octaves=1, steps=1, lr=0.1, jitter=0, progress=False)
    assert default.scale == pytest.approx(float(x.square().mean().sqrt()))


def test_the_objective_rises():
    model = tiny_cnn()
    was = [p.detach().clone() for p in model.parameters()]
    model.train()
    result = deep_dream(model, images(3), "relu2", octaves=2, octave_scale=1.5, steps=6, lr=0.05, jitter=2,
                        progress=False)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), was))
    assert (result.norm_after > 1.3 * result.norm_before).all()
    model.eval()
    with torch.no_grad():
        after = layer_output(model, result.dreams, "relu2").flatten(1).norm(dim=1)
    torch.testing.assert_close(result.norm_after, after)
    plain = deep_dream(model, images(3), "relu2", octaves=1, steps=6, lr=0.05, jitter=0, progress=False)
    assert (plain.curve[1:] > plain.curve[:-1]).all()      # without jitter: rising step by step


def test_octave_sizes_and_what_the_model_sees():
    assert octave_sizes(64, 64, 3, 1.4) == [(64, 64), (46, 46), (33, 33)]   # 64 / 1.4 = 45.7, 46 / 1.4 = 32.9
    assert octave_sizes(64, 48, 2, 2.0) == [(64, 48), (32, 24)]
    assert octave_sizes(20, 10, 4, 3.0) == [(20, 10), (7, 3), (2, 1), (1, 1)]
    model = tiny_cnn()
    seen = []
    handle = model.conv1.register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape[2:])))
    try:
        result = deep_dream(model, images(1, 16), "relu2", octaves=3, octave_scale=1.5, steps=2, jitter=1,
                            progress=False)
    finally:
        handle.remove()
    # the norm before, the check of the smallest octave, 2 steps per octave smallest first, the norm after
    assert seen == [(16, 16), (7, 7), (7, 7), (7, 7), (11, 11), (11, 11), (16, 16), (16, 16), (16, 16)]
    assert result.sizes == [[7, 7], [11, 11], [16, 16]]


def test_octaves_carry_the_detail_up():
    """With two octaves, the small octave's change, upsampled, is in the dream:
    the dream differs from one made at full size alone."""
    model = tiny_cnn()
    one = deep_dream(model, images(), "relu2", octaves=1, steps=3, jitter=0, progress=False)
    two = deep_dream(model, images(), "relu2", octaves=2, octave_scale=2.0, steps=3, jitter=0, progress=False)
    assert two.curve.shape == (6,) and one.curve.shape == (3,)
    assert not torch.allclose(one.dreams, two.dreams)
    # the small octave worked on the half-size image
    small = F.interpolate(images(), size=(6, 6), mode="bilinear", antialias=True)
    with torch.no_grad():
        assert two.curve[0] == pytest.approx(float((0.5 * layer_output(model, small, "relu2").square()
                                                    .flatten(1).sum(1)).mean()), rel=1e-5)


def test_jitter_is_a_roll_of_the_batch_and_the_seed_decides_it():
    model = tiny_cnn()
    x = images(3)
    a = deep_dream(model, x, "relu2", octaves=1, steps=3, jitter=3, seed=4, scale=1.0, progress=False)
    b = deep_dream(model, x, "relu2", octaves=1, steps=3, jitter=3, seed=4, scale=1.0, progress=False)
    c = deep_dream(model, x, "relu2", octaves=1, steps=3, jitter=3, seed=5, scale=1.0, progress=False)
    assert torch.equal(a.dreams, b.dreams)
    assert not torch.allclose(a.dreams, c.dreams)
    # one shift per step for the whole batch: an image dreams the same alone
    alone = deep_dream(model, x[1:2], "relu2", octaves=1, steps=3, jitter=3, seed=4, scale=1.0, progress=False)
    torch.testing.assert_close(alone.dreams[0], a.dreams[1], atol=1e-5, rtol=1e-5)
    # a single step with jitter equals the hand-written step on the rolled image, rolled back
    one = deep_dream(model, x, "relu2", octaves=1, steps=1, jitter=3, seed=4, scale=1.0, progress=False)
    dy, dx = torch.randint(-3, 4, (2,), generator=torch.Generator().manual_seed(4)).tolist()
    rolled = x.roll((dy, dx), (2, 3)).requires_grad_(True)
    g, = torch.autograd.grad(0.5 * layer_output(model, rolled, "relu2").square().sum(), rolled)
    step = 0.025 * g / g.abs().mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(one.dreams, x + step.roll((-dy, -dx), (2, 3)))


def test_bad_arguments_are_named():
    model = tiny_cnn()
    x = images(1)
    for kwargs, text in [(dict(layer="conv9"), "no layer named 'conv9'"),
                         (dict(octaves=0), "deep_dream: octaves must be a positive int"),
                         (dict(octave_scale=1.0), "deep_dream: octave_scale must be > 1"),
                         (dict(steps=0), "deep_dream: steps must be a positive int"),
                         (dict(lr=-0.1), "deep_dream: lr must be a positive number"),
                         (dict(jitter=-1), "deep_dream: jitter must be an int >= 0"),
                         (dict(jitter=1.5), "deep_dream: jitter must be an int >= 0"),
                         (dict(scale=0.0), "deep_dream: scale must be a positive number"),
                         (dict(images=x.long()), r"deep_dream: images must be a float Tensor\[N, C, H, W\] with N >= 1")]:
        args = dict(layer="relu1", images=x) | kwargs
        with pytest.raises(ValueError, match=text):
            deep_dream(model, args.pop("images"), args.pop("layer"), progress=False, **args)
    fixed = nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 2, 3)), ("flatten", nn.Flatten()),
                                       ("fc", nn.Linear(2 * 10 * 10, 3))]))
    with pytest.raises(ValueError, match="deep_dream: layer 'fc' cannot take the smallest octave, 9x9 px"):
        deep_dream(fixed, x, "fc", octaves=2, octave_scale=1.4, progress=False)
    assert deep_dream(fixed, x, "fc", octaves=1, steps=1, progress=False).dreams.shape == x.shape


def test_render_writes_its_figures_and_the_dict_survives_saving(tmp_path):
    result = deep_dream(tiny_cnn(), images(2), "relu2", octaves=2, steps=2, progress=False)
    path = tmp_path / "saved.pt"
    torch.save(result.as_dict(), path)
    saved = torch.load(path, weights_only=True)
    for extra in ({}, {"images": torch.zeros(2, 3, 12, 12, dtype=torch.uint8),
                       "dreams": torch.zeros(2, 3, 12, 12, dtype=torch.uint8),
                       "classes": ["a", "b"], "labels": torch.tensor([1, 0])}):
        page = render(saved, tmp_path / "assets", **extra)
        assert page["figures"] and all((tmp_path / "assets" / f["file"]).is_file() for f in page["figures"])
    claim, = page["claims"]
    assert claim["holds"] == bool((result.norm_after > result.norm_before).all())
    assert [row[3] for row in page["tables"][0]["rows"]] == [
        round(float(r), 3) for r in result.norm_after / result.norm_before]
    assert isinstance(DeepDream.from_dict(saved), DeepDream)

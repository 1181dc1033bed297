"""Adversarial examples against their definitions: FGSM is x + epsilon *
sign(gradient of the cross-entropy), checked against the closed-form gradient
of a linear model (and its closed-form drop of the true class's probability);
PGD stays in its ball, reaches the closed-form optimum of a two-class linear
model in both norms, and a targeted PGD raises the target's probability; the
attack's records equal direct calls; bad arguments are named."""

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfcore.analysis.adversarial import Adversarial, attack, fgsm, pgd
from zfcore.report.pages.adversarial import render


def linear(classes: int, seed: int = 0) -> nn.Sequential:
    """logits = W flatten(x) + b on 3x4x4 inputs, float64."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, classes)).double().eval()


def small_cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 6, 3)), ("relu", nn.ReLU()), ("flatten", nn.Flatten()),
        ("fc", nn.Linear(6 * 6 * 6, 5))])).double().eval()


def test_fgsm_is_epsilon_times_the_sign_of_the_closed_form_gradient():
    """For logits W x + b the cross-entropy's gradient is W^T (softmax - onehot(y))."""
    model = linear(6)
    x = torch.randn(7, 3, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0])
    w = model[1].weight
    with torch.no_grad():
        p = model(x).softmax(1)
        grad = ((p - F.one_hot(y, 6).double()) @ w).view_as(x)
    for eps in (0.3, torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64)):
        e = torch.as_tensor(eps, dtype=torch.float64).expand(7).view(-1, 1, 1, 1)
        got = fgsm(model, x, y, eps)
        torch.testing.assert_close(got, x + e * grad.sign(), rtol=0, atol=1e-15)
        assert (grad != 0).all()
        torch.testing.assert_close((got - x).flatten(1).abs().amax(1), e.flatten(), rtol=0, atol=1e-15)


def test_fgsm_lowers_the_true_class_probability_as_the_closed_form_says():
    """Two classes: the margin z_y - z_o falls by exactly epsilon * ||w_y - w_o||_1."""
    model = linear(2, seed=4)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    w = model[1].weight
    with torch.no_grad():
        z = model(x)
        margin = z.gather(1, y[:, None])[:, 0] - z.gather(1, 1 - y[:, None])[:, 0]
        expected = torch.sigmoid(margin - 0.2 * (w[0] - w[1]).abs().sum())
        after = model(fgsm(model, x, y, 0.2)).softmax(1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-15)
    assert (after < torch.sigmoid(margin)).all()


def test_fgsm_respects_clamp_with_numbers_and_per_pixel_tensors():
    model = small_cnn()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    free = fgsm(model, x, y, 0.25)
    assert free.min() < 0 and free.max() > 1  # the clamp has work to do
    torch.testing.assert_close(fgsm(model, x, y, 0.25, clamp=(0.0, 1.0)), free.clamp(0, 1), rtol=0, atol=0)
    low = -torch.rand(3, 8, 8, dtype=torch.float64) * 0.1        # per pixel, broadcast over the batch
    high = 1 + torch.rand(3, 8, 8, dtype=torch.float64) * 0.1
    got = fgsm(model, x, y, 0.25, clamp=(low, high))
    torch.testing.assert_close(got, torch.maximum(torch.minimum(free, high), low), rtol=0, atol=0)
    assert (got >= low).all() and (got <= high).all()


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_pgd_stays_in_the_ball_and_the_clamp(norm):
    model = small_cnn()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    eps = 0.05 if norm == "inf" else 0.6
    adv = pgd(model, x, y, eps, steps=7, norm=norm, clamp=(0.0, 1.0), step_size=eps)  # big steps: projection works
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "inf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-12)).all() and (size > 0.5 * eps).all()
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (F.cross_entropy(model(adv), y, reduction="none") > F.cross_entropy(model(x), y, reduction="none")).all()


def test_pgd_reaches_the_closed_form_optimum_of_a_two_class_linear_model():
    """The loss of a two-class linear model grows with -(w_y - w_o) . x: in the
    L-infinity ball its maximum is x + eps * sign(w_o - w_y) (FGSM's point), in
    the L2 ball x + eps * (w_o - w_y) / ||w_o - w_y||. PGD finds both; so it is
    at least as strong as FGSM."""
    model = linear(2, seed=2)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    w = model[1].weight
    u = (w[1 - y] - w[y]).view_as(x)                       # the loss's ascent direction per image
    inf = pgd(model, x, y, 0.1, steps=10)
    torch.testing.assert_close(inf, x + 0.1 * u.sign(), rtol=0, atol=1e-14)
    two = pgd(model, x, y, 0.5, norm="2", steps=6, random_start=False)
    unit = u / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(two, x + 0.5 * unit, rtol=0, atol=1e-14)
    with torch.no_grad():
        loss = lambda a: F.cross_entropy(model(a), y, reduction="none")  # noqa: E731
        assert (loss(inf) >= loss(fgsm(model, x, y, 0.1)) - 1e-12).all()


def test_targeted_pgd_raises_the_target_probability():
    model = small_cnn()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    target = torch.tensor([1, 2, 3, 4, 0, 3])
    adv = pgd(model, x, y, 0.3, targeted=True, target=target, steps=10)
    with torch.no_grad():
        before = model(x).softmax(1).gather(1, target[:, None])[:, 0]
        after = model(adv).softmax(1).gather(1, target[:, None])[:, 0]
        untargeted = model(pgd(model, x, y, 0.3, steps=10)).softmax(1).gather(1, target[:, None])[:, 0]
    assert (after > before).all()
    assert (after > untargeted).all()  # it goes for the target, not just away from the label
    assert (model(adv).argmax(1) == target).float().mean() >= 0.5


def test_seed_decides_the_random_start():
    model = small_cnn()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    state = torch.random.get_rng_state()
    a = pgd(model, x, y, 0.1, steps=2, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(a, pgd(model, x, y, 0.1, steps=2, seed=3))
    assert not torch.equal(a, pgd(model, x, y, 0.1, steps=2, seed=4))
    r1 = attack(model, x, y, [0.1], method="pgd", steps=2, seed=5, progress=False)
    r2 = attack(model, x, y, [0.1], method="pgd", steps=2, seed=5, progress=False)
    assert torch.equal(r1.perturbation, r2.perturbation) and torch.equal(r1.l2, r2.l2)


def test_attack_records_equal_direct_calls():
    model = small_cnn()
    x = torch.rand(9, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3])
    epsilons = [0.0, 0.05, 0.2]
    result = attack(model, x, y, epsilons, method=("fgsm", "pgd"), steps=3, clamp=(0.0, 1.0), keep=2,
                    batch_size=4, progress=False)
    with torch.no_grad():
        clean = model(x).softmax(1)
    assert torch.equal(result.clean_pred, clean.argmax(1))
    assert torch.equal(result.pred[:, 0], clean.argmax(1).expand(2, 9))  # epsilon 0 changes nothing
    for e, eps in enumerate(epsilons):
        adv = fgsm(model, x, y, eps, clamp=(0.0, 1.0))
        with torch.no_grad():
            p = model(adv).softmax(1)
        assert torch.equal(result.pred[0, e], p.argmax(1))
        torch.testing.assert_close(result.true_prob[0, e], p.gather(1, y[:, None])[:, 0].float())
        torch.testing.assert_close(result.linf[0, e], (adv - x).flatten(1).abs().amax(1).float())
        torch.testing.assert_close(result.accuracy[0, e], (p.argmax(1) == y).float().mean())
        j = int(result.examples[1])
        torch.testing.assert_close(result.perturbation[0, e, 1].float(), (adv - x)[j].float(),
                                   rtol=1e-3, atol=1e-4)
    assert (result.linf[1] <= torch.tensor(epsilons).view(-1, 1) + 1e-6).all()
    assert result.accuracy[:, -1].max() < result.accuracy[:, 0].min()


def test_the_model_is_left_as_it_was():
    model = small_cnn().train()
    x, y = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
    fgsm(model, x, y, 0.1)
    pgd(model, x, y, 0.1, steps=2)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_bad_arguments_are_named():
    model = small_cnn()
    x, y = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
    cases = [(dict(epsilon=-0.1), ValueError, "fgsm: epsilon must be a finite number >= 0"),
             (dict(epsilon=float("nan")), ValueError, "fgsm: epsilon must be"),
             (dict(epsilon=torch.tensor([0.1, 0.2, 0.3])), ValueError, r"fgsm: epsilon must be .* Tensor\[2\]"),
             (dict(epsilon="0.1"), TypeError, "fgsm: epsilon must be a number"),
             (dict(labels=torch.tensor([0, 1, 2])), ValueError, r"fgsm: labels must be an integer Tensor\[2\]"),
             (dict(labels=torch.tensor([0.0, 1.0])), ValueError, "fgsm: labels must be an integer"),
             (dict(labels=torch.tensor([0, 5])), ValueError, "fgsm: labels holds class 5, outside"),
             (dict(clamp=1.0), ValueError, "fgsm: clamp must be None or a pair"),
             (dict(clamp=(1.0, 0.0)), ValueError, "low > high"),
             (dict(clamp=(torch.zeros(5, 8, 8), 1.0)), ValueError, r"shape \[5, 8, 8\]"),
             (dict(clamp=(torch.zeros(4, 3, 8, 8), 1.0)), ValueError, "fgsm: clamp must be")]
    for kwargs, error, text in cases:
        args = dict(model=model, images=x, labels=y, epsilon=0.1) | kwargs
        with pytest.raises(error, match=text):
            fgsm(**args)
    with pytest.raises(ValueError, match=r"fgsm: images must be a float Tensor\[N, C, H, W\] with N >= 1"):
        fgsm(model, x[0], y, 0.1)
    for kwargs, text in [(dict(norm="1"), "pgd: norm must be 'inf' or '2'"),
                         (dict(steps=0), "pgd: steps must be a positive int"),
                         (dict(targeted=True), "pgd: targeted=True needs target"),
                         (dict(target=torch.tensor([1, 0])), "pgd: target is given but targeted=False"),
                         (dict(targeted=True, target=torch.tensor([1])), r"pgd: target must be an integer Tensor"),
                         (dict(step_size=-1.0), "pgd: epsilon must be"),
                         (dict(seed=-1), "pgd: seed must be an int >= 0")]:
        with pytest.raises(ValueError, match=text):
            pgd(model, x, y, 0.1, **kwargs)
    for kwargs, text in [(dict(method="cw"), "attack: method must be 'fgsm', 'pgd'"),
                         (dict(epsilons=[]), "attack: epsilons must be a non-empty sequence"),
                         (dict(epsilons=[0.1, -1]), "attack: epsilons must be"),
                         (dict(keep=-1), "attack: keep must be an int >= 0")]:
        with pytest.raises(ValueError, match=text):
            attack(model, x, y, **(dict(epsilons=[0.1]) | kwargs), progress=False)


def test_render_writes_its_figures_and_the_dict_survives_saving(tmp_path):
    model = small_cnn()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    result = attack(model, x, y, [0.0, 1 / 64, 4 / 64, 16 / 64], method=("fgsm", "pgd"), steps=3,
                    clamp=(0.0, 1.0), keep=2, progress=False)
    torch.save(result.as_dict(), tmp_path / "r.pt")
    saved = torch.load(tmp_path / "r.pt", weights_only=True)
    images = (x[result.examples] * 255).round().to(torch.uint8)
    page = render(saved, tmp_path / "assets", images=images, classes=list("abcde"), pixel_scale=1 / 255)
    files = [f["file"] for f in page["figures"]]
    assert files == ["adversarial_accuracy.png", "adversarial_examples.png"]
    assert all((tmp_path / "assets" / f).stat().st_size > 0 for f in files)
    pgd_claim = [c for c in page["claims"] if c["claim"].startswith("PGD is at least")][0]
    assert pgd_claim["holds"] == bool((result.accuracy[1] <= result.accuracy[0]).all())
    assert len(page["tables"][0]["rows"]) == 8
    assert isinstance(Adversarial.from_dict(saved), Adversarial)


def test_run_attacks_in_pixel_levels_within_the_valid_pixels(monkeypatch, tmp_path):
    from tests.helpers import untrained_subject
    from zfcore.analysis.adversarial import run
    from zfcore.load import embedded_dataset

    loaded = untrained_subject(monkeypatch, tmp_path)
    data = embedded_dataset(loaded)
    result, extra = run(loaded, data, quick=True, progress=False, seed=0)
    assert result.methods == ["fgsm", "pgd"] and result.steps == 3 and len(result.labels) == len(data) == 30
    torch.testing.assert_close(result.epsilons, torch.tensor([0, 1, 2, 4, 8], dtype=torch.float64) * loaded.scale)
    assert torch.equal(result.index, torch.arange(30)) and torch.equal(result.labels, data.labels)
    assert torch.equal(extra["images"], data.images[result.examples]) and len(result.examples) == 4
    assert extra["pixel_scale"] == loaded.scale and extra["classes"] == list(data.classes)
    # the adversarial images are pixels 0..255 (the clamp is per pixel, in model-input units)
    pixels = extra["images"].double()[None, None] + result.perturbation.double() / loaded.scale
    assert pixels.min() > -0.5 and pixels.max() < 255.5
    page = render(result.to_plain(), tmp_path / "assets", **extra)
    assert [f["file"] for f in page["figures"]] == ["adversarial_accuracy.png", "adversarial_examples.png"]

"""The feature-generalization driver (Tables 4-6): n-shot draws, the frozen
network with a new softmax (against the optimality conditions of the softmax
objective and a forward through the retrained model), training from scratch,
reuse of the pretraining run, the claims' logic, and bad arguments."""

import pytest
import torch
import torch.nn.functional as F

import zfcore
from zfcore.analysis.generalization import (PAPER_CALTECH, Generalization, draw_shots, fit_softmax, generalization,
                                            retrain_softmax, softmax_input, train_from_scratch)
from zfcore.data import SyntheticShapes
from zfcore.models import zfnet_small
from zfcore.report.pages.generalization import render
from zfcore.train import TrainConfig
from zfcore.train import reuse as reuse_module

TINY = dict(image_size=32, per_class=6, width=0.125, fc_width=32, batch_size=8, epochs=1, threads=1,
            progress=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZFCORE_CACHE", str(tmp_path / "cache"))


def test_draws_have_exactly_n_images_of_each_class():
    labels = torch.tensor([0, 1, 2] * 7 + [1, 1])
    for n in (1, 3, 7):
        seen = set()
        for draw in range(4):
            chosen = draw_shots(labels, n, torch.Generator().manual_seed(draw))
            assert len(set(chosen.tolist())) == len(chosen) == 3 * n
            assert torch.bincount(labels[chosen]).tolist() == [n, n, n]
            seen.add(tuple(chosen.tolist()))
        assert len(seen) > 1 or n == 7  # draws differ where there is a choice (class 0 has only 7)
    with pytest.raises(ValueError, match="class 0 has 7 training images, fewer than n = 8"):
        draw_shots(labels, 8, torch.Generator())
    with pytest.raises(ValueError, match="n must be a positive int"):
        draw_shots(labels, 0, torch.Generator())


def test_softmax_retraining_leaves_the_frozen_layers_alone_and_reaches_the_optimum():
    torch.manual_seed(0)
    model = zfnet_small(5, input_size=32, width=0.125, fc_width=32, init_std=None).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(12, 3, 32, 32) * 3
    labels = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0, 1, 0, 0, 2])
    new = retrain_softmax(model, x, labels, 3, l2=1e-2)
    assert softmax_input(model, x).abs().max() > 0  # the features are not all dead
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # the original is untouched
    after = new.state_dict()
    body = [k for k in before if not k.startswith("fc8.")]
    assert all(torch.equal(after[k], before[k]) for k in body)  # the frozen layers, unchanged
    assert after["fc8.weight"].shape == (3, 32) and not torch.equal(after["fc8.bias"], torch.zeros(3))
    assert not any(p.requires_grad for n, p in new.named_parameters() if not n.startswith("fc8."))

    # the optimum of mean CE + l2/2 ||W||^2, checked by its gradient written out by hand (float64)
    features = softmax_input(model, x)
    w, b = fit_softmax(features, labels, 3, l2=1e-2)
    p = torch.softmax(features @ w.T + b, dim=1)
    onehot = F.one_hot(labels, 3).double()
    grad_w = (p - onehot).T @ features / len(labels) + 1e-2 * w
    grad_b = (p - onehot).mean(0)
    assert grad_w.abs().max() < 1e-6 and grad_b.abs().max() < 1e-6
    # the retrained network's output is that softmax on the frozen layers' output
    with torch.no_grad():
        torch.testing.assert_close(new(x).double(), features @ w.T + b, atol=1e-4, rtol=1e-4)


def test_training_from_scratch_is_seeded_and_learns_its_images():
    config = TrainConfig(**TINY)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1] * 3)
    a = train_from_scratch(config, x, labels, 2, steps=3, generator_seed=5)
    b = train_from_scratch(config, x, labels, 2, steps=3, generator_seed=5)
    c = train_from_scratch(config, x, labels, 2, steps=3, generator_seed=6)
    assert not a.training and a.fc8.out_features == 2
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_from_scratch(config, x, labels, 2, steps=0)


def test_tiny_run_recomputed_by_hand_and_the_pretraining_run_reused(tmp_path, cache, monkeypatch):
    calls = []
    real = reuse_module.train
    monkeypatch.setattr(reuse_module, "train", lambda config: calls.append(config) or real(config))
    base = TrainConfig(**TINY)
    kwargs = dict(pretrain_classes=(0, 1, 2), new_classes=(4, 3), shots=(2, 1), draws=2, steps=4, eval_per_class=3,
                  base=base, seed=1, progress=False)
    result = generalization(None, tmp_path / "gen", **kwargs)
    assert len(calls) == 1 and calls[0].classes == "0,1,2" and not result.reused
    assert result.shots == [1, 2] and result.pretrained.shape == result.scratch.shape == (2, 2)
    assert result.eval_images == 6 and result.new_class_names == ["cross", "star"]

    # the pretrained column recomputed through the retrained model itself, from the documented draws
    from zfcore.analysis.generalization import _seeded

    loaded = zfcore.load(tmp_path / "gen" / "pretrain")
    assert loaded.classes == ["circle", "square", "triangle"]
    train = SyntheticShapes("train", seed=0, size=32, per_class=6)
    val = SyntheticShapes("val", seed=0, size=32, per_class=3)
    eval_images = torch.cat([val.images[val.labels == c] for c in (4, 3)])
    eval_labels = torch.tensor([0] * 3 + [1] * 3)
    order = torch.nonzero((train.labels == 4) | (train.labels == 3)).flatten()
    labels_in_data_order = (train.labels[order] == 3).long()  # the driver keeps data order: 4 -> 0, 3 -> 1
    images_in_data_order = train.images[order]
    for i, n in enumerate(result.shots):
        for d in range(2):
            chosen = draw_shots(labels_in_data_order, n, _seeded(1, n, d))
            assert torch.bincount(labels_in_data_order[chosen], minlength=2).tolist() == [n, n]
            drawn = images_in_data_order[chosen]
            # disjoint from the evaluation images: no drawn image equals any validation image
            assert not (drawn[:, None] == eval_images[None]).flatten(2).all(2).any()
            model = retrain_softmax(loaded.model, loaded.preprocess(drawn), labels_in_data_order[chosen], 2)
            with torch.no_grad():
                accuracy = (model(loaded.preprocess(eval_images)).argmax(1) == eval_labels).double().mean()
            assert result.pretrained[i, d].item() == pytest.approx(accuracy.item())

    # reused: no training the second time, the same numbers
    calls.clear()
    again = generalization(None, tmp_path / "gen", **kwargs)
    assert calls == [] and again.reused
    assert torch.equal(again.pretrained, result.pretrained) and torch.equal(again.scratch, result.scratch)
    # the finished pretraining run passed as model_run gives the same
    given = generalization(tmp_path / "gen" / "pretrain", tmp_path / "gen2", **kwargs)
    assert torch.equal(given.pretrained, result.pretrained) and not (tmp_path / "gen2" / "pretrain").exists()

    # saved, read back with weights_only, rendered
    torch.save(result.as_dict(), tmp_path / "gen.pt")
    back = Generalization.from_dict(torch.load(tmp_path / "gen.pt", weights_only=True))
    page = render(back, tmp_path / "assets")
    assert (tmp_path / "assets" / "generalization-curve.png").stat().st_size > 0
    assert len(page["tables"][0]["rows"]) == 2 and len(page["tables"][1]["rows"]) == 2
    assert len(page["claims"]) == 3

    # bad arguments naming what is wrong
    with pytest.raises(ValueError, match="model_run .* was trained on classes 0,1,2, not pretrain_classes 0,1"):
        generalization(tmp_path / "gen" / "pretrain", tmp_path / "x", **{**kwargs, "pretrain_classes": (0, 1)})
    with pytest.raises(ValueError, match="model_run .* is not a run folder"):
        generalization(tmp_path / "nowhere", tmp_path / "x", **kwargs)


def _made(pre, scratch, shots=(1, 5, 25)) -> Generalization:
    t = lambda v: torch.tensor(v, dtype=torch.float64)[:, None].repeat(1, 2)  # noqa: E731
    return Generalization(shots=list(shots), draws=2, pretrained=t(pre), scratch=t(scratch),
                          pretrain_classes=[0, 1], new_classes=[2, 3], new_class_names=["a", "b"], eval_images=10,
                          pool_per_class=30, pretrain_val_top1=0.3, feature_dim=8, feature_layer="drop7", steps=3,
                          l2=1e-3, run="x", reused=True, seconds={}, quick=True)


def test_claims_follow_the_numbers(tmp_path):
    holds = [c["holds"] for c in render(_made([0.8, 0.85, 0.9], [0.3, 0.5, 0.8]), tmp_path)["claims"]]
    assert holds == [True, True, True]
    holds = [c["holds"] for c in render(_made([0.6, 0.5, 0.55], [0.7, 0.5, 0.4]), tmp_path)["claims"]]
    assert holds == [False, False, False]
    holds = [c["holds"] for c in render(_made([0.6, 0.5, 0.9], [0.5, 0.5, 0.85]), tmp_path)["claims"]]
    assert holds == [False, True, True]  # level at n = 5; the gap 0.1 -> 0.05; 0.9 above 0.6
    detail = render(_made([0.8, 0.85, 0.9], [0.3, 0.5, 0.8]), tmp_path)["claims"][0]["detail"]
    assert "n = 1: 80.0% against 30.0%" in detail and "n = 5: 85.0% against 50.0%" in detail
    assert set(PAPER_CALTECH) == {"Caltech-101 (Table 4)", "Caltech-256 (Table 5)"}
    assert PAPER_CALTECH["Caltech-101 (Table 4)"]["pretrained"][-1] == 86.5  # PAPER.md
    assert PAPER_CALTECH["Caltech-256 (Table 5)"]["pretrained"][-1] == 74.2


@pytest.mark.parametrize("kwargs,match", [
    ({"shots": (0, 5)}, "shots must be distinct positive ints"), ({"shots": ()}, "shots must be distinct"),
    ({"shots": (2, 2)}, "shots must be distinct"),
    ({"new_classes": (4, 5)}, r"pretrain_classes and new_classes must not overlap \(both hold \[4\]\)"),
    ({"new_classes": (5,)}, "new_classes must be at least two distinct class indices"),
    ({"pretrain_classes": (0, 10)}, "pretrain_classes must be at least two distinct class indices in 0..9"),
    ({"draws": 0}, "draws must be a positive int"), ({"steps": -1}, "steps must be a positive int"),
    ({"eval_per_class": 0}, "eval_per_class must be a positive int"), ({"l2": -1.0}, "l2 must be a non-negative number")])
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generalization(None, tmp_path, **{"progress": False, **kwargs})


def test_the_analysis_takes_a_loaded_model_as_its_pretrained_run():
    from types import SimpleNamespace

    from zfcore.analysis.registry import analyses

    spec = analyses()["generalization"]
    assert spec.needs == {"training"} and spec.options == ("runs",)
    assert spec.refusal(None, None) is None  # no model: it trains one
    assert spec.refusal(SimpleNamespace(path=None), None).startswith("generalization takes a model")

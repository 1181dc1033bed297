"""The ablation driver (Tables 2-3): top-k error against a brute force, the
variants' configurations and parameter counts, reuse of finished variants,
resume after an interruption, the claims' logic, and bad arguments."""

import dataclasses

import pytest
import torch

import zfcore
from zfcore.analysis.ablation import DEFAULT, PAPER_ROWS, VARIANTS, Ablation, ablation, top_k_error, variant_config
from zfcore.data import SyntheticShapes
from zfcore.report.pages.ablation import render
from zfcore.train import TrainConfig
from zfcore.train import loop
from zfcore.train import reuse as reuse_module

TINY = dict(image_size=32, per_class=4, width=0.125, fc_width=32, batch_size=8, epochs=2, threads=1,
            progress=False, snapshot_epochs="2")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZFCORE_CACHE", str(tmp_path / "cache"))


def _brute_top_k_error(logits, labels, k):
    wrong = 0
    for row, label in zip(logits.tolist(), labels.tolist()):
        above = sum(1 for v in row if v > row[label])  # distinct values: the label's rank
        wrong += above >= k
    return wrong / len(labels)


@pytest.mark.parametrize("classes", [3, 7, 10])
def test_top_k_error_equals_a_brute_force_over_the_logits(classes):
    g = torch.Generator().manual_seed(classes)
    logits = torch.randn(57, classes, generator=g, dtype=torch.float64)
    labels = torch.randint(classes, (57,), generator=g)
    for k in (1, 2, 5, 12):
        assert top_k_error(logits, labels, k) == pytest.approx(_brute_top_k_error(logits, labels, k), abs=1e-12)
    assert top_k_error(logits, labels, classes) == 0.0
    with pytest.raises(ValueError, match="k must be a positive int"):
        top_k_error(logits, labels, 0)
    with pytest.raises(ValueError, match="logits must be"):
        top_k_error(logits[0], labels, 1)


def test_each_variant_changes_the_base_as_documented(tmp_path):
    base = TrainConfig(out="x", remove="fc7")
    configs = {v: variant_config(base, v, tmp_path / v) for v in VARIANTS}
    assert configs["full"].remove == "fc7" and configs["full"].out == str(tmp_path / "full")
    assert configs["no-fc6-fc7"].remove == "fc6,fc7"  # added to the base's removal
    assert configs["no-conv3-conv4-fc6-fc7"].remove == "conv3,conv4,fc6,fc7"
    assert configs["wide-conv"].width == pytest.approx(0.375) and configs["wide-conv"].fc_width is None
    assert configs["wide-fc"].fc_width == 512 and configs["narrow-fc"].fc_width == 128
    assert configs["conv1-11x4"].conv1 == "11x4"
    assert variant_config(TrainConfig(width=0.5, fc_width=64), "wide-conv", tmp_path).width == pytest.approx(0.75)
    assert set(DEFAULT) <= set(VARIANTS)
    assert all(VARIANTS[v].paper is None or VARIANTS[v].paper in {r["key"] for r in PAPER_ROWS} for v in VARIANTS)
    with pytest.raises(ValueError, match="unknown variant 'deeper'"):
        variant_config(base, "deeper", tmp_path)


def _counting(monkeypatch):
    calls = []
    real = reuse_module.train

    def counted(config):
        calls.append(config)
        return real(config)

    monkeypatch.setattr(reuse_module, "train", counted)
    return calls


def test_tiny_ablation_scores_reuses_and_resumes(tmp_path, cache, monkeypatch):
    base = TrainConfig(out="ignored", **TINY)
    out = tmp_path / "abl"
    calls = _counting(monkeypatch)
    result = ablation(out, base=base, variants=("full", "no-fc6-fc7"), test_per_class=3, progress=False)
    assert len(calls) == 2 and result.reused == [False, False]

    # the errors against a brute force over the saved models' logits on the test split
    test = SyntheticShapes("test", seed=0, size=32, per_class=3)
    train = SyntheticShapes("train", seed=0, size=32, per_class=4)
    for i, variant in enumerate(result.variants):
        loaded = zfcore.load(out / variant / "model.pt")
        with torch.no_grad():
            logits = loaded.model(loaded.preprocess(test.images)).double()
            train_logits = loaded.model(loaded.preprocess(train.images)).double()
        assert result.test_top1[i].item() == pytest.approx(_brute_top_k_error(logits, test.labels, 1))
        assert result.test_top5[i].item() == pytest.approx(_brute_top_k_error(logits, test.labels, 5))
        assert result.train_top1[i].item() == pytest.approx(_brute_top_k_error(train_logits, train.labels, 1))
        assert result.val_top1[i].item() == pytest.approx(loaded.history[-1]["val_top1_error"])
    assert result.test_images == 30 and result.eval_split == "test"
    # parameter counts by hand: conv5 of width 0.125 has 32 maps of 1x1 at 32 px; fc 32 wide; 10 classes
    flat = 32 * 1 * 1
    assert result.params[0] - result.params[1] == (flat * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10) - (flat * 10 + 10)

    # a finished variant is reused: no training, the files untouched, the same numbers
    stamp = (out / "full" / "model.pt").stat().st_mtime_ns
    calls.clear()
    again = ablation(out, base=base, variants=("full", "no-fc6-fc7"), test_per_class=3, progress=False)
    assert calls == [] and again.reused == [True, True] and (out / "full" / "model.pt").stat().st_mtime_ns == stamp
    assert torch.equal(again.test_top1, result.test_top1) and again.params == result.params

    # interrupted after its first epoch's checkpoint, then resumed: the weights of an uninterrupted run
    real_save = loop.save_checkpoint

    def save_then_die(folder, state, step, keep=2):
        real_save(folder, state, step, keep)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ablation(out, base=base, variants=("no-conv3-conv4",), test_per_class=3, progress=False)
    assert (out / "no-conv3-conv4" / "LATEST").exists() and not (out / "no-conv3-conv4" / "model.pt").exists()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    calls.clear()
    resumed = ablation(out, base=base, variants=("no-conv3-conv4",), test_per_class=3, progress=False)
    assert len(calls) == 1 and calls[0].resume and resumed.reused == [False]
    assert [row["epoch"] for row in zfcore.load(out / "no-conv3-conv4").history] == [1, 2]
    whole = ablation(tmp_path / "whole", base=base, variants=("no-conv3-conv4",), test_per_class=3, progress=False)
    a = torch.load(out / "no-conv3-conv4" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "whole" / "no-conv3-conv4" / "model.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed.test_top1.tolist() == whole.test_top1.tolist()

    # another configuration in a variant's folder is refused, naming the difference
    with pytest.raises(ValueError, match=r"holds a finished run of another configuration \(epochs: 2 there, 3"):
        ablation(out, base=dataclasses.replace(base, epochs=3), variants=("full",), progress=False)

    # saved with torch.save, read back with weights_only, rendered
    torch.save(result.as_dict(), tmp_path / "ablation.pt")
    back = Ablation.from_dict(torch.load(tmp_path / "ablation.pt", weights_only=True))
    assert back.variants == result.variants and torch.equal(back.test_top5, result.test_top5)
    page = render(back, tmp_path / "assets")
    assert [f["file"] for f in page["figures"]] == ["ablation-top1.png"]
    assert (tmp_path / "assets" / "ablation-top1.png").stat().st_size > 0
    assert len(page["tables"][0]["rows"]) == 2 and len(page["tables"][1]["rows"]) == len(PAPER_ROWS)
    assert page["claims"] == []  # the claims need the variants they compare


def _made(errors: dict, train: dict | None = None, n: int = 1000) -> Ablation:
    variants = list(errors)
    train = train or {v: 0.0 for v in variants}
    t = lambda d: torch.tensor([d[v] for v in variants], dtype=torch.float64)  # noqa: E731
    return Ablation(variants=variants, labels=[VARIANTS[v].label for v in variants], params=[1] * len(variants),
                    test_top1=t(errors), test_top5=t(errors) / 4, train_top1=t(train), val_top1=t(errors),
                    val_top5=t(errors), test_images=n, eval_split="test", configs={v: {} for v in variants},
                    reused=[False] * len(variants), seconds=[0.0] * len(variants), quick=True, out="x")


def test_claims_follow_the_numbers(tmp_path):
    paper_like = {"full": 0.30, "no-fc6-fc7": 0.32, "no-conv3-conv4": 0.35, "no-conv3-conv4-fc6-fc7": 0.60,
                  "wide-conv": 0.28, "wide-fc": 0.31}
    claims = {c["claim"][:40]: c for c in render(_made(paper_like, {**{v: 0.2 for v in paper_like},
                                                                   "wide-fc": 0.1}), tmp_path)["claims"]}
    assert all(c["holds"] for c in claims.values()), claims
    order = next(c for k, c in claims.items() if k.startswith("Removing the fully connected"))
    assert "+2.0 points" in order["detail"] and "+5.0" in order["detail"] and "+30.0" in order["detail"]

    reversed_ = {**paper_like, "no-fc6-fc7": 0.40, "wide-conv": 0.33, "wide-fc": 0.29}
    claims = {c["claim"][:40]: c["holds"] for c in render(_made(reversed_), tmp_path)["claims"]}
    assert not claims["Removing the fully connected layers (fc6"]
    assert not claims["Widening the conv layers lowers the erro"]
    assert not claims["Widening fc6, fc7 does not lower the err"]
    assert claims["Removing fc6, fc7 as well as conv3, conv"]
    # the quick budget's underfit models: every removal lowers the error, so depth "matters" nowhere
    underfit = {"full": 0.720, "no-fc6-fc7": 0.583, "no-conv3-conv4": 0.704, "no-conv3-conv4-fc6-fc7": 0.570}
    claims = {c["claim"][:40]: c["holds"] for c in render(_made(underfit), tmp_path)["claims"]}
    assert claims == {"Removing the fully connected layers (fc6": False,
                      "Removing conv3, conv4 as well as fc6, fc": False,
                      "Removing fc6, fc7 as well as conv3, conv": False,
                      "Depth matters: removing both pairs raise": False}
    noise = render(_made({"full": 0.30, "wide-conv": 0.299}), tmp_path)["claims"][0]
    assert noise["holds"] and "within 2 standard errors" in noise["detail"]


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown variant 'no-fc8'"):
        ablation(tmp_path, variants=("full", "no-fc8"), progress=False)
    with pytest.raises(ValueError, match="variants is empty"):
        ablation(tmp_path, variants=(), progress=False)
    with pytest.raises(ValueError, match="variants must be distinct"):
        ablation(tmp_path, variants=("full", "full"), progress=False)
    with pytest.raises(ValueError, match="base must be a TrainConfig"):
        ablation(tmp_path, base={"epochs": 1}, progress=False)
    with pytest.raises(ValueError, match="test_per_class must be a positive int"):
        ablation(tmp_path, base=TrainConfig(**TINY), variants=("full",), test_per_class=0, progress=False)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(PermissionError, match="cannot create the output folder"):
        ablation(blocked / "sub", base=TrainConfig(**TINY), variants=("full",), progress=False)


def test_run_trains_the_demo_recipe_looked_up_when_called(tmp_path, cache, monkeypatch):
    from zfcore.analysis import ablation as ablation_module
    from zfcore.analysis.registry import analyses

    seen = []

    def recipe(out, *, seed=0, epochs=None, progress=True):
        seen.append((out, seed))
        return TrainConfig(out=out, seed=seed, **{**TINY, "progress": progress})

    monkeypatch.setattr("zfcore.train.demo_config", recipe)
    result, extra = ablation_module.run(None, None, quick=True, progress=False, seed=2, runs=tmp_path / "runs",
                                        variants=("full",))
    assert seen == [(str(tmp_path / "runs"), 2)] and extra == {}
    assert result.variants == ["full"] and result.configs["full"]["seed"] == 2 and result.quick
    assert (tmp_path / "runs" / "full" / "model.pt").is_file()
    spec = analyses()["ablation"]
    assert spec.needs == {"training"} and spec.options == ("runs", "variants") and spec.group == "paper"

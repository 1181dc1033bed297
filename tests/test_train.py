"""The trainer: paper recipe pieces, atomic checkpoints, exact resume after
SIGKILL, torchrun/DDP equivalence, and clear errors for bad input."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from zfcore.train import (TrainConfig, latest_checkpoint, load_checkpoint, renormalize_filters, save_checkpoint,
                          train)
from zfcore.train import checkpoint as checkpoint_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--image-size", "48", "--per-class", "4", "--width", "0.125", "--fc-width", "32", "--batch-size", "8",
        "--threads", "1", "--no-progress"]


def _cli(out, *extra, runner=(sys.executable, "-m", "zfcore"), env=None):
    return [*runner, "train", "--out", str(out), *TINY, *extra]


def _env(tmp_path):
    return {**os.environ, "ZFCORE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def _weights(out):
    return torch.load(out / "model.pt", weights_only=True)["model"]


def test_filter_renormalization_caps_the_rms_of_each_filter():
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        w = torch.randn(4, 3, 3, 3)
        w /= w.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()  # RMS 1, then the target RMS per filter
        conv.weight.copy_(w * torch.tensor([0.01, 0.5, 2.0, 0.09]).view(4, 1, 1, 1))
    before = conv.weight.detach().clone()
    renormalize_filters(nn.Sequential(conv), 0.1)
    rms = conv.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(rms[1:3], torch.full((2,), 0.1))
    assert torch.equal(conv.weight[0], before[0]) and torch.equal(conv.weight[3], before[3])


def test_snapshots_scale_the_paper_epochs():
    assert TrainConfig(epochs=64).snapshots() == [1, 2, 5, 10, 20, 30, 40, 64]
    assert TrainConfig(epochs=8).snapshots() == [1, 2, 4, 5, 8]  # 20/8 -> 2.5 -> 2, 30/8 -> 3.75 -> 4
    assert TrainConfig(epochs=8, snapshot_epochs="2,7").snapshots() == [2, 7]


def test_a_save_killed_midway_leaves_the_last_checkpoint_in_force(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"model": {"w": torch.ones(3)}, "config": {}}, step=1)

    def crash(obj, path):
        path.write_bytes(b"half a checkpoint")  # as if killed after the first bytes
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "atomic_torch_save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"model": {"w": torch.zeros(3)}, "config": {}}, step=2)
    path, state = latest_checkpoint(tmp_path)
    assert path.name == "checkpoint-000000001.pt" and torch.equal(state["model"]["w"], torch.ones(3))
    with pytest.raises(ValueError, match="checkpoint-000000002.pt is truncated"):
        load_checkpoint(tmp_path / "checkpoint-000000002.pt")


def test_training_writes_metrics_snapshots_and_model(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(_cli(out, "--epochs", "2"), env=_env(tmp_path), capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "val_top1_error", "val_top5_error", "lr"} <= set(rows[0])
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch-001.pt", "epoch-002.pt"]
    assert (out / "model.pt").exists()


def _metrics(out):
    """metrics.jsonl without its wall-clock seconds."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_sigkill_at_random_moments_then_resume_gives_identical_weights_and_metrics(tmp_path):
    """Killed at seeded random moments (after some commits, in the middle of a
    save, or at any time), resumed until done: the same weights bit for bit and
    the same metrics.jsonl (every epoch's train loss included) as a run never
    interrupted."""
    args = ("--epochs", "8", "--checkpoint-every", "1")
    env = _env(tmp_path)
    reference = tmp_path / "uninterrupted"
    done = subprocess.run(_cli(reference, *args), env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr

    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    step_s = sum(r["seconds"] for r in rows) / 40  # 8 epochs of 5 steps: kills land within a few steps
    seed = int(os.environ.get("ZFCORE_TEST_SEED", random.randrange(2**32)))
    out, rng, kills = tmp_path / "killed", random.Random(seed), []
    marker = out / "LATEST"
    read_marker = lambda: marker.read_bytes() if marker.exists() else b""  # noqa: E731

    def saving() -> set[str]:  # the temporary files of checkpoints being written
        try:
            return {e.name for e in os.scandir(out) if e.name.startswith(".checkpoint-")}
        except FileNotFoundError:
            return set()

    for attempt in range(40):
        process = subprocess.Popen(_cli(out, *args, "--resume"), env=env, cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        how = rng.choice(["after commits", "during a save", "any time"]) if attempt < 10 else None
        deadline, last = time.time() + 120, read_marker()
        # Every kind waits until training runs (a checkpoint committed by this process).
        commits = rng.randint(1, 4) if how == "after commits" else 1
        while how and commits and process.poll() is None and time.time() < deadline:
            time.sleep(0.002)
            if (now := read_marker()) != last:
                commits, last = commits - 1, now
        if how == "after commits":  # then kill within the next step or save
            time.sleep(rng.uniform(0.0, 1.5 * step_s))
        elif how == "during a save":  # the n-th save seen from here on
            seen, known = rng.randint(1, 3), saving()
            while seen and process.poll() is None and time.time() < deadline:
                if new := saving() - known:
                    seen, known = seen - 1, known | new
        elif how == "any time":
            time.sleep(rng.uniform(0.0, 4 * step_s))
        if how and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills.append(how + (" (a save was cut short)" if saving() else ""))
        _, stderr = process.communicate(timeout=300)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, stderr.decode()
    assert len(kills) >= 4, (kills, f"ZFCORE_TEST_SEED={seed}")
    assert not saving(), "the finished run left the temporary files of killed saves behind"
    expected, got = _weights(reference), _weights(out)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), (name, kills, f"ZFCORE_TEST_SEED={seed}")
    assert _metrics(out) == _metrics(reference), (kills, f"ZFCORE_TEST_SEED={seed}")


class _Interrupt(BaseException):
    pass


def test_a_resumed_epoch_reports_the_loss_of_all_its_steps(tmp_path, monkeypatch):
    """Interrupted in the middle of its second epoch and resumed, a run writes
    the metrics.jsonl of the uninterrupted one: train_loss is the mean over all
    of the epoch's steps (found from outside: 0.92 resumed vs 2.33)."""
    from zfcore.train import loop

    def config(out, **extra):
        return TrainConfig(out=str(out), image_size=48, per_class=4, width=0.125, fc_width=32, batch_size=8,
                           threads=1, progress=False, epochs=2, checkpoint_every=1, **extra)

    monkeypatch.setenv("ZFCORE_CACHE", str(tmp_path / "cache"))
    train(config(tmp_path / "whole"))
    calls, renormalize = [0], loop.renormalize_filters

    def interrupted(model, radius):  # after the optimizer step of the 3rd step of epoch 2
        renormalize(model, radius)
        calls[0] += 1
        if calls[0] == steps + 3:
            raise _Interrupt

    steps = len(loop.SyntheticData(config(tmp_path / "x"))) // 8
    monkeypatch.setattr(loop, "renormalize_filters", interrupted)
    with pytest.raises(_Interrupt):
        train(config(tmp_path / "resumed"))
    monkeypatch.setattr(loop, "renormalize_filters", renormalize)
    state = load_checkpoint(latest_checkpoint(tmp_path / "resumed")[0])
    assert (state["epoch"], state["step"]) == (1, 2), "the run was to stop in the middle of epoch 2"
    train(config(tmp_path / "resumed", resume=True))
    assert _metrics(tmp_path / "resumed") == _metrics(tmp_path / "whole")


def test_two_processes_with_gloo_equal_one_process(tmp_path):
    args = ("--epochs", "2", "--dropout", "0")
    env = _env(tmp_path)
    single = subprocess.run(_cli(tmp_path / "one", *args), env=env, capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "zfcore")
    double = subprocess.run(_cli(tmp_path / "two", *args, runner=torchrun), env=env, capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bad_input_is_a_clear_error_and_overwrites_nothing(tmp_path):
    env = _env(tmp_path)
    run = lambda *a: subprocess.run(a, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)  # noqa: E731
    out = tmp_path / "run"
    assert run(*_cli(out, "--epochs", "1")).returncode == 0
    marker = (out / "LATEST").read_bytes()

    again = run(*_cli(out, "--epochs", "1"))
    assert again.returncode == 2 and "already holds a run" in again.stderr and str(out) in again.stderr
    other = run(*_cli(out, "--epochs", "2", "--width", "0.25", "--resume"))
    assert other.returncode == 2 and "is of another model" in other.stderr
    assert (out / "LATEST").read_bytes() == marker

    truncated = tmp_path / "broken.pt"
    truncated.write_bytes((out / json.loads(marker)["checkpoints"][-1]).read_bytes()[:100])
    broken = run(*_cli(tmp_path / "run2", "--resume-from", str(truncated)))
    assert broken.returncode == 2 and f"checkpoint {truncated} is truncated" in broken.stderr

    blocked = tmp_path / "file"
    blocked.write_text("")
    unwritable = run(*_cli(blocked / "sub"))
    assert unwritable.returncode == 2 and "cannot write to the output folder" in unwritable.stderr

    unknown = run(*_cli(tmp_path / "run3", "--model", "resnet"))
    assert unknown.returncode == 2 and "model must be one of" in unknown.stderr


def test_cli_help_lists_every_knob():
    result = subprocess.run([sys.executable, "-m", "zfcore", "train", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0
    for flag in ("--lr", "--momentum", "--batch-size", "--dropout", "--renorm-radius", "--resume",
                 "--snapshot-epochs", "--plateau-patience", "--checkpoint-every"):
        assert flag in result.stdout, flag


def test_training_on_an_image_folder_with_a_corrupt_file(tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, count in (("train", 8), ("val", 3)):
        for k, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 200, 0)]):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (70 + i, 90, 3)).astype(np.uint8)
                pixels[20:50, 30:60] = colour
                Image.fromarray(pixels).save(folder / f"{i}.png")
    (root / "train" / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    result = subprocess.run(_cli(out, "--data", str(root), "--epochs", "2", "--per-class", "1"),
                            env=_env(tmp_path), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "broken.jpg" in result.stderr  # skipped with a warning, training went on
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and 0 <= rows[-1]["val_top1_error"] <= 1

    empty = tmp_path / "empty"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "val" / "a").mkdir(parents=True)
    missing = subprocess.run(_cli(tmp_path / "run2", "--data", str(empty)), env=_env(tmp_path),
                             capture_output=True, text=True, cwd=REPO, timeout=300)
    assert missing.returncode == 2 and str(empty / "train" / "a") in missing.stderr
    absent = subprocess.run(_cli(tmp_path / "run3", "--data", str(tmp_path / "nowhere")), env=_env(tmp_path),
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert absent.returncode == 2 and f"data folder {tmp_path / 'nowhere'} does not exist" in absent.stderr
    assert not (tmp_path / "run2" / "LATEST").exists() and not (tmp_path / "run3" / "LATEST").exists()


# ---------------------------------------------------------------- flags, saved files, failures


@pytest.mark.parametrize("flag,value,expected", [
    ("epochs", 0, "--epochs must be >= 1"), ("lr", -1.0, "--lr must be > 0"),
    ("batch_size", -3, "--batch-size must be >= 1"), ("dropout", 1.0, "--dropout must be in [0, 1)"),
    ("momentum", 1.5, "--momentum must be in [0, 1)"), ("plateau_factor", 2.0, "--plateau-factor must be in (0, 1)"),
    ("schedule", "linear", "--schedule must be plateau or cosine")])
def test_numeric_flags_are_range_checked(tmp_path, flag, value, expected):
    from zfcore.train import TrainConfig

    with pytest.raises(ValueError, match=re.escape(expected)):
        TrainConfig(out=str(tmp_path / "run"), **{flag: value})


def test_cli_says_its_prefix_once_and_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "zfcore", "train", "--out", str(out), "--epochs", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "zfcore train: --epochs must be >= 1 (got 0)"
    assert not out.exists()
    r = subprocess.run([sys.executable, "-m", "zfcore", "train", "--out", str(out), "--data", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "zfcore train: data folder" in r.stderr and "train: train:" not in r.stderr
    assert not out.exists()  # the failed run removed the folder it had created


def test_saved_files_load_without_unpickling_and_carry_preprocessing(tmp_path):
    import zfcore
    from zfcore.train import TrainConfig, train

    out = tmp_path / "run"
    train(TrainConfig(out=str(out), epochs=1, per_class=8, batch_size=16, progress=False, snapshot_epochs="1"))
    for path in [out / "model.pt", out / "snapshots" / "epoch-001.pt", *out.glob("checkpoint-*.pt")]:
        state = torch.load(path, weights_only=True)
        assert state["zfcore"] == 1 and len(state["classes"]) == 10
        assert state["preprocess"]["mean"].shape == (3, 64, 64) and state["preprocess"]["scale"] == 1 / 64
    loaded = zfcore.load(out / "model.pt")
    assert loaded.classes[0] == "circle" and loaded.history[-1]["epoch"] == 1
    model = torch.load(out / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in model.items())


def test_demo_recipe_warms_up_and_decays(tmp_path):
    from zfcore.train import demo_config
    from zfcore.train.loop import step_lr

    config = demo_config(str(tmp_path / "d"), epochs=10)
    lrs = [step_lr(config, config.lr, s, 100) for s in range(1000)]
    assert lrs[0] == pytest.approx(1e-4, rel=0.02) and max(lrs) <= 1e-2 and lrs[-1] < 1e-5
    assert lrs.index(max(lrs)) < 110


class _RunsCode:
    """Unpickling this runs code: it creates the file named by ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("how", ["--resume", "--resume-from"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, how):
    """Found from outside: a checkpoint-*.pt that runs code when unpickled did run
    it on --resume and --resume-from. Now: refused, exit 2, the file named, no
    traceback, and the code never runs."""
    env = _env(tmp_path)
    out = tmp_path / "run"
    first = subprocess.run(_cli(out, "--epochs", "1"), env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert first.returncode == 0, first.stderr
    path, state = latest_checkpoint(out)
    ran = tmp_path / "code-ran"
    torch.save({**state, "history": [_RunsCode(ran)]}, path)  # the committed checkpoint, replaced
    target = ("--resume",) if how == "--resume" else ("--resume-from", str(path))
    result = subprocess.run(_cli(out if how == "--resume" else tmp_path / "other", "--epochs", "2", *target),
                            env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr
    assert not ran.exists(), "unpickling the checkpoint ran code"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("zfcore train: ") and path.name in result.stderr, result.stderr
    assert "never unpickled" in result.stderr, result.stderr

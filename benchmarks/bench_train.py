"""Training on the embedded data, measured: the CNN's test accuracy against a
linear classifier on pixels, and one training step with zfcore's pooling
against nn.MaxPool2d (same model otherwise, same process).

    python -m zfcore demo --out runs/demo --seed 1        # trains the demo's CNN (times itself)
    python benchmarks/bench_train.py --run runs/demo/run --results-dir benchmarks/results

The notes name the `zfcore train` command equivalent to the run (from the
config saved in its model.pt), so every figure can be made again.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import RESULTS_HELP, Row, environment, time_cpu, write

from zfcore.data import SyntheticShapes
from zfcore.nn import MaxPool2dSwitches
from zfcore.load import load
from zfcore.train import TrainConfig, build_model, evaluate


def linear_baseline(train: SyntheticShapes, test: SyntheticShapes, epochs: int = 100) -> tuple[float, float]:
    """Train and test accuracy of softmax regression on standardized pixels
    (full-batch L-BFGS, a little L2)."""
    x = train.images.flatten(1).float()
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    xt = (test.images.flatten(1).float() - mean) / std
    model = nn.Linear(x.shape[1], len(SyntheticShapes.classes))
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=epochs, history_size=20)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), train.labels) + 1e-3 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((model(x).argmax(1) == train.labels).float().mean().item(),
                (model(xt).argmax(1) == test.labels).float().mean().item())


def train_command(config: TrainConfig) -> str:
    """The `zfcore train` command that made the run: every flag whose value
    differs from the default that the same --model would get. Flags that do not
    change the result (--resume, --resume-from, --progress) are left out."""
    default = TrainConfig(model=config.model)
    words = ["python", "-m", "zfcore", "train", "--out", config.out]
    for f in dataclasses.fields(TrainConfig):
        value = getattr(config, f.name)
        reference = f.default if f.name == "model" else getattr(default, f.name)
        if f.name in ("out", "resume", "resume_from", "progress") or value == reference:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/measure", help="a finished `zfcore train` run folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", default=None, help=RESULTS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    loaded = load(run / "model.pt")                     # weights_only=True, the run's own preprocessing
    config = TrainConfig(**{k: v for k, v in loaded.config.items() if k != "fingerprint"})
    test = SyntheticShapes("test", seed=config.seed, size=config.image_size, per_class=config.per_class // 5)
    train = SyntheticShapes("train", seed=config.seed, size=config.image_size, per_class=config.per_class)
    model = loaded.model
    batches = [(loaded.preprocess(test.images[i:i + 256]), test.labels[i:i + 256])
               for i in range(0, len(test), 256)]
    cnn = evaluate(model, batches, "cpu")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    linear_train, linear = linear_baseline(train, test)

    # One training step (forward, backward, SGD update) at the run's batch size,
    # zfcore's MaxPool2dSwitches vs nn.MaxPool2d in an otherwise identical model.
    torch.manual_seed(0)
    ours = build_model(config, 10)
    theirs = copy.deepcopy(ours)
    for name, module in list(theirs.named_children()):
        if isinstance(module, MaxPool2dSwitches):
            setattr(theirs, name, nn.MaxPool2d(module.kernel_size, module.stride, module.padding,
                                               ceil_mode=module.ceil_mode))
    x = loaded.preprocess(train.images[:128])
    y = train.labels[:128]

    def step(net, optimizer):
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=1e-4, momentum=0.9)
    row = Row("training step", f"{config.model} batch 128", f"[128,3,{config.image_size},{config.image_size}]",
              "float32", "nchw", "nn.MaxPool2d in the same model", time_cpu(lambda: step(ours, opt_ours),
                                                                          args.threads, 2.0),
              time_cpu(lambda: step(theirs, opt_theirs), args.threads, 2.0))
    notes = [
        f"CNN ({config.model}, {len(history)} epochs, batch {config.batch_size}, {config.init} init): test top-1 "
        f"accuracy {1 - cnn['val_top1_error']:.3f}, top-5 {1 - cnn['val_top5_error']:.3f} on {len(test)} test images",
        f"training wall time {sum(r['seconds'] for r in history):.0f} s for {len(history)} epochs on "
        f"{args.threads} threads (sum of the epochs' seconds in {run}/metrics.jsonl)",
        f"linear classifier on standardized pixels (softmax regression, L-BFGS): test accuracy {linear:.3f} "
        f"(train accuracy {linear_train:.3f}); chance is {1 / len(SyntheticShapes.classes):.3f}",
        f"train command: {train_command(config)}",
    ]
    write("train_cpu", [row], environment(args.threads), notes, args.results_dir)
    print("\n".join(notes))
    print(f"training step: zfcore {row.zfcore.median_ms:.1f} ms, nn.MaxPool2d {row.pytorch.median_ms:.1f} ms, "
          f"ratio {row.ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

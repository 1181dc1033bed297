"""The pointing game of every saliency method on the embedded validation images
(zfcore.analysis.pointing): deconvnet, guided backprop, gradient, Grad-CAM and
occlusion against the centre and chance baselines, as a table.

    python benchmarks/pointing_game.py --checkpoint demo/run/model.pt [--results-dir DIR]

The model is a run of ``zfcore demo`` (or ``zfcore train`` on the embedded
data): its validation split is the one it was validated on. Writes
``pointing_game.json`` and ``.md`` (default: build/bench-results; the committed
table: --results-dir benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, RESULTS_HELP, environment  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a model.pt trained on the embedded data")
    parser.add_argument("--images", type=int, default=None, help="the first N validation images (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results-dir", default=RESULTS, help=RESULTS_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import zfcore
    from zfcore.analysis.pointing import pointing_game
    from zfcore.load import embedded_dataset

    loaded = zfcore.load(args.checkpoint)
    base = embedded_dataset(loaded)
    n = len(base.labels) if args.images is None else min(args.images, len(base.labels))
    images = loaded.preprocess(base.images[:n])
    start = time.perf_counter()
    result = pointing_game(loaded.model, images, base.labels[:n], base.boxes[:n])
    seconds = time.perf_counter() - start
    scores = result.accuracy()
    with torch.no_grad():
        accuracy = float((loaded.model(images).argmax(1) == base.labels[:n]).double().mean())
    env = environment(args.threads)
    notes = [f"model {os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint)))}/"
             f"{os.path.basename(args.checkpoint)} ({loaded.config.get('model', 'model')}, validation top-1 "
             f"accuracy on these images {accuracy:.3f}), {n} embedded validation images at "
             f"{result.size[0]} px, true class; a hit is a maximum within {result.tolerance} px of the object's box",
             f"Grad-CAM and occlusion at {result.layer}; the whole game took {seconds:.1f} s",
             "baselines: centre = always the image's centre pixel; chance = the expected score of a uniformly "
             "random pixel (exact per image)"]
    os.makedirs(args.results_dir, exist_ok=True)
    rows = [{"method": m, "hits": int(result.hit[i].sum()), "images": n, "accuracy": round(scores[m], 4),
             "flat_maps": int(result.flat[i].sum())} for i, m in enumerate(result.methods)]
    rows += [{"method": "centre (baseline)", "hits": int(result.centre_hit.sum()), "images": n,
              "accuracy": round(scores["centre"], 4)},
             {"method": "chance (baseline)", "images": n, "accuracy": round(scores["chance"], 4)}]
    with open(os.path.join(args.results_dir, "pointing_game.json"), "w") as f:
        json.dump({"kind": "scores", "environment": env, "notes": notes, "rows": rows}, f, indent=1)
    lines = ["# The pointing game: saliency maxima on the object", "",
             f"Command: `{env['command']}`  ", f"Device: {env['device']}  ",
             f"zfcore {zfcore.__version__}, torch {env['torch']}, Python {env['python']}, commit {env['commit']}", "",
             "| method | hits | images | accuracy |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r.get('hits', '-')} | {r['images']} | **{r['accuracy']:.3f}** |" for r in rows]
    lines += [""] + [f"- {note}" for note in notes]
    with open(os.path.join(args.results_dir, "pointing_game.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results: {os.path.join(args.results_dir, 'pointing_game')}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

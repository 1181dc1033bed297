"""The ``zfcore`` command: a thin layer over the Python API.

    zfcore demo [--out DIR]          train the small ZFNet on the embedded data, then visualize it
    zfcore train [--help]            train a model with the paper's recipe (zfcore.train.train)
    zfcore visualize --model M       top-9 projections, activations, filters, dead units: a report
                                     (--model resnet18 --weights W.pth --data photos/, or --checkpoint model.pt)
    zfcore report --from DIR         re-render a report from its saved results
    zfcore info                      what is built: backends, versions
"""

from __future__ import annotations

import argparse
import sys


def _info(_args) -> int:
    import torch

    from .ops import backends
    from .version import __version__

    print(f"zfcore {__version__}, torch {torch.__version__}")
    for name, info in backends().items():
        print(f"  {name:10s} {'available' if info.available else 'unavailable':12s} {info.reason}")
    return 0


def _train(args) -> int:
    from .train import train
    from .train.config import from_arguments

    train(from_arguments(args))
    return 0


def _positive(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} must be a positive integer (got {text!r})") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"--{name} must be a positive integer (got {value})")
        return value
    return parse


def _floats(name: str):
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name} must be one or three comma-separated numbers "
                                             f"(got {text!r})") from None
        if len(values) not in (1, 3):
            raise argparse.ArgumentTypeError(f"--{name} must be one or three comma-separated numbers (got {text!r})")
        return values
    return parse


def _add_model_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("the model (zfcore.load)")
    group.add_argument("--model", default=None,
                       help="a built-in architecture (alexnet, vgg11..vgg19_bn, resnet18..resnet152, zfnet, "
                            "zfnet_small, alexnet_paper), torchvision:NAME, a .pt2 file from torch.export.save, or "
                            "a zfcore run")
    group.add_argument("--checkpoint", default=None, help="a model.pt or checkpoint written by zfcore train"
                       + ("" if required else " (needed by all but architecture, ablation and generalization; "
                                              "generalization takes it as its run pretrained on classes 0-4, else "
                                              "trains one)"))
    group.add_argument("--weights", default=None, help="the architecture's state_dict: .pth/.pt (torch.save) or "
                                                       ".safetensors; loaded strictly")
    group.add_argument("--preprocess", default=None, choices=("imagenet", "run"),
                       help="imagenet (short side 256, centre 224, ImageNet mean and std; the default for "
                            "architectures) or run (a zfcore run's own; its default)")
    group.add_argument("--size", type=_positive("size"), default=None, help="the model's input side (centre crop)")
    group.add_argument("--resize", type=_positive("resize"), default=None, help="short side before the crop")
    group.add_argument("--mean", type=_floats("mean"), default=None, help="per-channel mean of the 0..1 pixels: R,G,B")
    group.add_argument("--std", type=_floats("std"), default=None, help="per-channel std of the 0..1 pixels: R,G,B")
    group.add_argument("--classes", default=None, help="a text file with one class name per line")


def _subject(args, required: bool):
    """The ``Subject`` the model arguments name, or None (an analysis that trains its own)."""
    from .data import Preprocess
    from .load import load

    if args.model is not None and args.checkpoint is not None:
        raise ValueError("give --model or --checkpoint, not both")
    source = args.model if args.model is not None else args.checkpoint
    if source is None:
        if required:
            raise ValueError("name the model: --model SPEC [--weights FILE] or --checkpoint model.pt")
        return None
    preprocess = args.preprocess
    if any(v is not None for v in (args.size, args.resize, args.mean, args.std)):
        if preprocess == "run":
            raise ValueError("--size, --resize, --mean and --std describe an explicit preprocessing; not with "
                             "--preprocess run")
        base = Preprocess.imagenet()
        size = args.size or base.size
        resize = args.resize or (round(size * 256 / 224) if args.size else base.resize)
        preprocess = Preprocess(size, resize, args.mean or base.mean, args.std or base.std, base.scale)
    return load(source, weights=args.weights, preprocess=preprocess, classes=args.classes)


def _visualize(args) -> int:
    from .visualize import visualize

    layers = [n for part in args.layers or [] for n in part.split(",") if n] or None
    index = visualize(_subject(args, True), args.data, args.out, layers=layers, k=args.k, mode=args.mode,
                      batch_size=args.batch_size, maps=args.maps, resume=args.resume, progress=args.progress)
    print(f"report: {index}")
    return 0


def _report(args) -> int:
    from .report import render

    index = render(args.source, args.out, progress=args.progress)
    print(f"report: {index}")
    return 0


def _analyze(args) -> int:
    from .analyze import analyze

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
    page = analyze(args.name, _subject(args, False), args.out, quick=args.quick, progress=args.progress,
                   runs=args.runs, seed=args.seed, variants=variants, data=args.data)
    print(f"page: {page}")
    return 0


def _demo(args) -> int:
    from .demo import demo

    index, timings = demo(args.out, checkpoint=args.checkpoint, epochs=args.epochs, seed=args.seed,
                          analyses=args.analyses,
                          progress=args.progress)
    print("stages: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items()))
    print(f"open {index}")
    return 0


def _bench(args) -> int:
    from . import bench

    suites = [s for s in bench.SUITES if getattr(args, s.replace("-", "_"))]
    try:
        bench.run(suites, args.device, args.quick, args.out)
    except RuntimeError as error:
        print(f"zfcore {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from .train.config import add_arguments

    parser = argparse.ArgumentParser(prog="zfcore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    demo = commands.add_parser("demo", help="train on the embedded data, then visualize (the main job)",
                               formatter_class=defaults)
    demo.add_argument("--out", default="demo", help="folder: run/ (training) and report/ (the report)")
    demo.add_argument("--checkpoint", default=None, help="visualize this model.pt instead of training")
    demo.add_argument("--epochs", type=_positive("epochs"), default=None,
                      help="training epochs (default: the demo recipe's)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    demo.add_argument("--analyses", action=argparse.BooleanOptionalAction, default=True,
                      help="add the quick versions of the paper's analyses (occlusion, invariance, "
                           "correspondence, probes, evolution) and of the toolbox's (neighbours, embedding, "
                           "gradcam, inversion, class_model, adversarial) to the report")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    demo.set_defaults(run=_demo)

    train_parser = commands.add_parser("train", help="train with the paper's recipe", formatter_class=defaults)
    add_arguments(train_parser)
    train_parser.set_defaults(run=_train)

    vis = commands.add_parser("visualize", help="top-k projections (Fig. 2), activations, filters, dead units",
                              formatter_class=defaults)
    _add_model_arguments(vis, True)
    vis.add_argument("--data", default="synthetic",
                     help="'synthetic' (a zfcore run's embedded validation images) or an image folder: flat, or one "
                          "subfolder per class (jpg, png, webp, bmp)")
    vis.add_argument("--out", default="report", help="the report folder (nothing is written outside it)")
    vis.add_argument("--layers", nargs="*", default=None,
                     help="layers to project, named_modules paths (features.10, layer3.1; default: every conv "
                          "layer, or the deepest layer at each map size when there are more than 8)")
    vis.add_argument("--maps", type=_positive("maps"), default=None,
                     help="project only the strongest N maps of each layer (by their mean top-k activation); "
                          "default all")
    vis.add_argument("--k", type=_positive("k"), default=9, help="images per feature map")
    vis.add_argument("--mode", default="deconvnet", choices=("deconvnet", "guided", "gradient"),
                     help="how units are projected down")
    vis.add_argument("--batch-size", type=_positive("batch-size"), default=64, help="images per forward")
    vis.add_argument("--resume", action="store_true", help="continue an interrupted top-k pass")
    vis.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    vis.set_defaults(run=_visualize)

    rep = commands.add_parser("report", help="re-render a report from its saved results", formatter_class=defaults)
    rep.add_argument("--from", dest="source", required=True, help="a folder written by zfcore visualize")
    rep.add_argument("--out", default=None, help="where to write the pages (default: the --from folder)")
    rep.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    rep.set_defaults(run=_report)

    from .analyze import ANALYSES

    ana = commands.add_parser("analyze", help="one of the paper's analyses or the toolbox's, added to a report "
                                               "folder",
                              formatter_class=defaults,
                              epilog="analyses: " + "; ".join(f"{k}: {v}" for k, v in ANALYSES.items()))
    ana.add_argument("name", choices=list(ANALYSES), help="the analysis")
    _add_model_arguments(ana, False)
    ana.add_argument("--data", default=None,
                     help="an image folder (flat, or one subfolder per class) to run on; default: a zfcore run's "
                          "embedded validation images")
    ana.add_argument("--out", default="report", help="the report folder its page is added to")
    ana.add_argument("--quick", action="store_true",
                     help="fewer images (and, for the analyses that train, smaller budgets): minutes, not hours")
    ana.add_argument("--runs", default=None,
                     help="architecture, ablation, generalization: the folder of the models they train "
                          "(default OUT/runs/NAME; finished runs are reused, interrupted ones resumed)")
    ana.add_argument("--seed", type=int, default=0,
                     help="architecture, ablation, generalization: the runs' seed; the toolbox: the seed of what "
                          "it draws at random (noise starts, jitter, subsets)")
    from .analysis.ablation import DEFAULT, VARIANTS

    ana.add_argument("--variants", default=None,
                     help=f"ablation: comma-separated variants among {', '.join(VARIANTS)} (None: "
                          f"{', '.join(DEFAULT)})")
    ana.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    ana.set_defaults(run=_analyze)

    from . import bench

    ben = commands.add_parser("bench", help="the op and pipeline benchmarks against pure PyTorch, one ratio table",
                              description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ben.add_argument("--out", required=True, help="results folder (never the committed benchmarks/results)")
    ben.add_argument("--device", default="cpu", help="cpu or cuda")
    ben.add_argument("--quick", action="store_true", help="small shapes, seconds per suite (a smoke run)")
    for suite, what in (("ops", "the four ops at ZFNet's layer shapes"), ("topk", "streaming top-k and top-9 "
                        "projections"), ("occlusion", "occlusion maps"), ("any-cnn", "top-9 projections of a "
                        "ResNet-18 against Captum's NeuronDeconvolution (needs captum)")):
        ben.add_argument(f"--{suite}", action="store_true", help=what)
    ben.set_defaults(run=_bench)

    commands.add_parser("info", help="backends and versions").set_defaults(run=_info)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError) as error:
        text = str(error)
        for prefix in (f"{args.command}: ", "report: ", "visualize: ", "analyze: "):  # said once, by the line's own prefix
            text = text.removeprefix(prefix)
        print(f"zfcore {args.command}: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zfcore {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

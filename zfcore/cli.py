"""The ``zfcore`` command: a thin layer over the Python API.

    zfcore train [--help]    train a model with the paper's recipe (zfcore.train.train)
    zfcore info              what is built: backends, versions
"""

from __future__ import annotations

import argparse
import sys


def _info(_args) -> int:
    import torch

    import zfcore

    print(f"zfcore {zfcore.__version__}, torch {torch.__version__}")
    for name, info in zfcore.backends().items():
        print(f"  {name:10s} {'available' if info.available else 'unavailable':12s} {info.reason}")
    return 0


def _train(args) -> int:
    from .train import train
    from .train.config import from_arguments

    train(from_arguments(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .train.config import add_arguments

    parser = argparse.ArgumentParser(prog="zfcore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train with the paper's recipe",
                                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(train_parser)
    train_parser.set_defaults(run=_train)
    commands.add_parser("info", help="backends and versions").set_defaults(run=_info)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as error:
        print(f"zfcore {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

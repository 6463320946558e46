"""The ``demo`` command, added to ``diffcore``'s command line through the ``diffcore.commands`` entry point.

    diffcore demo [--out runs/demo] [--smoke] [--fresh] [--vocoder DIR]   # the main job (see diffjob)
"""

from __future__ import annotations

import argparse
from typing import Any

from diffcore.cli import positive_int


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # imports every system: only when the command runs

    run_demo(args.out, profile="smoke" if args.smoke else "full", fresh=args.fresh, data_root=args.data_root,
             recipes=args.recipes, seed=args.seed, threads=args.threads, jobs=args.jobs,
             progress=not args.no_progress,
             vocoder=args.vocoder)
    return 0


def add_demo_command(sub: Any) -> None:
    """Add ``demo`` to a subparsers object (``argparse.ArgumentParser.add_subparsers``)."""
    import diffjob

    demo = sub.add_parser("demo", help="the main job: data, tiny models of all three kinds, evaluations, report",
                          description=diffjob.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo); the report is "
                                                         "<out>/report/index.html")
    demo.add_argument("--smoke", action="store_true", help="tiny data and a few steps per model: every code path "
                                                           "in minutes (what CI runs)")
    demo.add_argument("--fresh", action="store_true", help="redo every stage (and rebuild the data sets) instead "
                                                           "of reusing finished ones")
    demo.add_argument("--data-root", default=None, help="where the data sets are built (default "
                                                        "$DIFFCORE_DATA_HOME or ~/.cache/diffcore/data)")
    demo.add_argument("--recipes", default=None, help="recipes folder (default: the recipes shipped with the "
                                                      "package, i.e. the project's recipes/)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, training and sampling (default 0)")
    demo.add_argument("--jobs", type=positive_int, default=None,
                      help="stages run at once, each in its own process (default 2 on a machine with 2 or more "
                           "cores: tiny models use two cores poorly, two stages side by side finish sooner)")
    demo.add_argument("--threads", type=positive_int, default=None,
                      help="torch threads per stage (default: the cores divided among the jobs)")
    demo.add_argument("--vocoder", default=None, metavar="DIR",
                      help="a trained vocoder folder (audiodiff export, e.g. from recipes/vocoder/base.yaml on a "
                           "GPU) to use instead of training the tiny one; it is copied, never modified")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

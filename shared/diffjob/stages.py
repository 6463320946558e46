"""The bookkeeping that makes a job of several stages resumable, and training a recipe in a stage folder.

A stage is a function of its output folder. Before running it, ``Stages.run`` computes a fingerprint of
its settings and of its upstream stages' run ids; a finished stage (``done.json``) with the same
fingerprint is reused, anything else in the folder is stale and removed. Training stages resume from
their last checkpoint (written atomically by ``AtomicCheckpointIO``), so an interrupted run loses at most
one checkpoint interval.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from diffcore.errors import UserError

MARKER = ".diffcore-demo"  # marks an output folder as ours: only then do we ever delete inside it


class DemoError(UserError, RuntimeError):
    """The job cannot run as asked (foreign output folder, missing recipes, ...); the message says the fix."""


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary sibling, then rename)."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


class Stages:
    """Runs named stages in ``out``, reusing finished ones whose fingerprint matches."""

    def __init__(self, out: Path, fresh: bool, say: Callable[[str], None]):
        self.out, self.fresh, self.say = out, fresh, say
        self.records: dict[str, dict[str, Any]] = {}
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise DemoError(f"{out} is not empty and was not made by `diffcore demo`; choose another --out "
                            "(the demo only ever deletes inside its own output folder)")
        (out / MARKER).write_text("made by diffcore demo; stages are reused or redone in here\n")

    def begin(self, name: str, settings: dict[str, Any], upstream: Sequence[str]) -> tuple[str, bool]:
        """Fingerprint stage ``name``; reuse it (``records[name]`` set, returns ``(fp, True)``) or prepare its
        folder for a run (stale contents removed, returns ``(fp, False)``)."""
        d = self.out / name
        # keyed on each upstream stage's run id: when an upstream stage is redone, everything after it is too
        fp = fingerprint({"settings": settings, "upstream": [self.records[u]["run"] for u in upstream]})
        done = d / "done.json"
        if done.is_file() and not self.fresh:
            record = json.loads(done.read_text())
            if record.get("fingerprint") == fp:
                self.say(f"[{name}] done earlier ({record['seconds']:.0f} s), reused; --fresh redoes it")
                self.records[name] = record
                return fp, True
        started = d / "fingerprint"
        if d.exists() and (self.fresh or not started.is_file() or started.read_text() != fp):
            shutil.rmtree(d)  # stale: other settings, other upstream results, or --fresh
        resumed = d.exists()
        d.mkdir(parents=True, exist_ok=True)
        started.write_text(fp)
        self.say(f"[{name}] {'resuming' if resumed else 'starting'}")
        return fp, False

    def finish(self, name: str, fp: str, settings: dict[str, Any], result: dict[str, Any],
               seconds: float) -> dict[str, Any]:
        """Record a stage that ran: ``done.json`` (written last, atomically) makes it reusable."""
        record = {"fingerprint": fp, "run": f"{name}-{time.time_ns()}", "seconds": seconds,
                  "settings": settings, "result": result}
        write_json(self.out / name / "done.json", record)
        self.say(f"[{name}] finished in {seconds:.0f} s")
        self.records[name] = record
        return record

    def run(self, name: str, settings: dict[str, Any], upstream: Sequence[str],
            fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Reuse stage ``name`` or run ``fn(folder)`` here, in this process."""
        fp, reused = self.begin(name, settings, upstream)
        if reused:
            return self.records[name]
        t0 = time.perf_counter()
        result = fn(self.out / name)
        return self.finish(name, fp, settings, result, time.perf_counter() - t0)


@dataclass(frozen=True)
class Job:
    """A stage to run: ``fn(folder, records)`` returns its result, ``records`` being the finished stages' records
    by name. With ``workers > 1`` in :func:`run_jobs`, ``fn`` runs in another process and must pickle (a
    module-level function, or a ``functools.partial`` of one)."""

    name: str
    settings: dict[str, Any]
    upstream: tuple[str, ...]
    fn: Callable[[Path, dict[str, dict[str, Any]]], dict[str, Any]]


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else max(1, os.cpu_count() or 1)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_jobs(stages: Stages, jobs: Sequence[Job], workers: int = 1, threads: int = 1,
             heartbeat: float = 60.0) -> None:
    """Run (or reuse) every job once its upstream stages are done, in list order among the ready ones.

    ``workers == 1`` runs them one by one in this process. Otherwise up to ``workers`` run at once, each in
    its own process with ``threads`` torch threads: tiny models use two cores poorly, so two one-thread
    stages side by side finish sooner than the same two one after the other with two threads each. Every
    ``heartbeat`` seconds the running stages are named. A stage's error stops the others and is raised here.
    """
    if workers <= 1:
        for j in jobs:
            stages.run(j.name, j.settings, j.upstream, lambda d, j=j: j.fn(d, stages.records))
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    names = {j.name for j in jobs}
    for j in jobs:
        missing = [u for u in j.upstream if u not in names]
        if missing:
            raise DemoError(f"stage {j.name} depends on {missing}, which are not stages of this job")
    pending = list(jobs)
    running: dict[Any, tuple[Job, str, float]] = {}  # future -> (job, fingerprint, start)
    # not multiprocessing.Pool: its workers are daemons, which may not start DataLoader workers
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    try:
        while pending or running:
            started = False
            for j in list(pending):
                if len(running) >= workers:
                    break
                if all(u in stages.records for u in j.upstream):
                    pending.remove(j)
                    started = True
                    fp, reused = stages.begin(j.name, j.settings, j.upstream)
                    if not reused:
                        future = pool.submit(j.fn, stages.out / j.name, dict(stages.records))
                        running[future] = (j, fp, time.perf_counter())
            if not running:
                if started:  # everything started was reused: more may be ready now
                    continue
                raise DemoError(f"stages {[j.name for j in pending]} wait on each other (a cycle in their upstream)")
            done, _ = wait(running, timeout=heartbeat, return_when=FIRST_COMPLETED)
            if not done:
                now = time.perf_counter()
                stages.say("[running] " + ", ".join(f"{j.name} {now - t0:.0f} s" for j, _, t0 in running.values()))
            for future in done:
                j, fp, t0 = running.pop(future)
                result = future.result()  # re-raises the stage's own error
                stages.finish(j.name, fp, j.settings, result, time.perf_counter() - t0)
    except BaseException:
        # stop the other stages now (they resume from their last checkpoint next time), not when they finish
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


# --------------------------------------------------------------------------------------------------
# training through LightningCLI


def _read_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def configured_cli(stage: Path, make_cli: Callable[..., Any], recipes: Sequence[Path], config: dict[str, Any]) -> Any:
    """A LightningCLI (``run=False``) of ``recipes`` with ``config`` written to ``stage/demo.yaml`` and read
    last, so the folder records exactly what was run."""
    stage.mkdir(parents=True, exist_ok=True)
    demo_yaml = stage / "demo.yaml"
    demo_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    args: list[str] = []
    for r in recipes:
        args += ["-c", str(r)]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI would also read the demo's own command line
    try:
        return make_cli([*args, "-c", str(demo_yaml)], run=False)
    finally:
        sys.argv = argv


def train(stage: Path, make_cli: Callable[..., Any], recipes: Sequence[Path], overrides: dict[str, Any],
          max_steps: int, val_batches: int, progress: bool) -> Path:
    """Train the recipe(s) in ``stage`` for ``max_steps``, resuming from ``stage/checkpoints/last.ckpt``, and
    return ``stage/final.ckpt`` (kept for fine-tuning; the periodic checkpoints are then removed). The
    demo's own settings go in ``stage/demo.yaml``, the last config LightningCLI reads, so the folder
    records exactly what was run."""
    ckpt_dir, logs, final = stage / "checkpoints", stage / "logs", stage / "final.ckpt"
    if final.is_file():  # trained already; the run was interrupted while exporting
        return final
    part = len(list(logs.glob("part*"))) if logs.is_dir() else 0  # one CSV log per (re)start
    every = max(1, min(250, max_steps // 4))
    recipe_trainer = {}
    for r in recipes:
        recipe_trainer.update(_read_yaml(r).get("trainer") or {})
    val_every = min(int(recipe_trainer.get("val_check_interval") or every), every)
    config: dict[str, Any] = {
        "trainer": {
            "max_steps": max_steps, "default_root_dir": str(stage), "val_check_interval": val_every,
            "check_val_every_n_epoch": None, "limit_val_batches": val_batches, "num_sanity_val_steps": 0,
            "log_every_n_steps": max(1, min(10, max_steps // 10)), "enable_progress_bar": progress,
            "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(stage), "name": "logs", "version": f"part{part}"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(ckpt_dir), "save_last": True, "every_n_train_steps": every,
                                         "save_top_k": 0}}],
            "plugins": [{"class_path": "diffcore.lightning.AtomicCheckpointIO"}],
        },
        **overrides,
    }
    cli = configured_cli(stage, make_cli, recipes, config)
    last = ckpt_dir / "last.ckpt"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(last) if last.is_file() else None)
    cli.trainer.save_checkpoint(final)  # through AtomicCheckpointIO
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # final.ckpt supersedes the periodic ones (half the disk)
    return final


def loss_curves(stage: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged loss of a training stage (``loss`` in the metric name), across restarts: {name: [(step, value)]}."""
    curves: dict[str, dict[int, float]] = {}
    for part in sorted((stage / "logs").glob("part*/metrics.csv"), key=lambda p: int(p.parent.name[4:])):
        with open(part, newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if "loss" in key and value not in ("", None) and row.get("step") not in ("", None):
                        v = float(value)
                        if math.isfinite(v):
                            curves.setdefault(key, {})[int(row["step"])] = v
    return {k: sorted(v.items()) for k, v in curves.items()}

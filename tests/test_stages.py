"""The main job's stage scheduler (``diffjob.stages.run_jobs``): dependencies respected in parallel, a failing
stage stops the job and leaves nothing marked done, reuse, and a dependency cycle refused."""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path

import pytest

from diffjob.stages import DemoError, Job, Stages, run_jobs


def _write(value: str, d: Path, records: dict, seconds: float = 0.3) -> dict:
    """A stage: records when it ran, in which process, and what its upstream stages returned."""
    t0 = time.time()
    time.sleep(seconds)
    ups = {k: r["result"]["value"] for k, r in records.items()}
    (d / "out.txt").write_text(value)
    return {"value": value, "upstream_values": ups, "start": t0, "end": time.time(), "pid": os.getpid()}


def _fail(d: Path, records: dict) -> dict:
    raise ValueError("stage broke: fix the input")


def _jobs(fail: str | None = None) -> list[Job]:
    graph = {"a": (), "b": (), "c": ("a",), "d": ("b", "c")}
    # a and b last long enough to overlap although the second worker process starts later than the first
    return [Job(n, {"n": n}, ups, _fail if n == fail else partial(_write, n, seconds=2.0 if n in "ab" else 0.3))
            for n, ups in graph.items()]


@pytest.mark.parametrize("workers", [1, 2])
def test_every_stage_runs_after_its_upstream_and_sees_its_results(tmp_path, workers):
    said: list[str] = []
    stages = Stages(tmp_path, False, said.append)
    run_jobs(stages, _jobs(), workers=workers, threads=1)
    res = {n: r["result"] for n, r in stages.records.items()}
    assert set(res) == {"a", "b", "c", "d"}
    assert res["c"]["start"] >= res["a"]["end"] and res["d"]["start"] >= max(res["b"]["end"], res["c"]["end"])
    assert {"a", "b", "c"} <= set(res["d"]["upstream_values"])
    pids = {r["pid"] for r in res.values()}
    if workers == 1:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids
        assert res["b"]["start"] < res["a"]["end"]  # a and b ran side by side
    for n in res:
        assert json.loads((tmp_path / n / "done.json").read_text())["result"]["value"] == n

    said.clear()
    run_jobs(Stages(tmp_path, False, said.append), _jobs(), workers=workers, threads=1)
    assert sum(line.endswith("reused; --fresh redoes it") for line in said) == 4


def test_a_failing_stage_stops_the_job_and_is_not_marked_done(tmp_path):
    stages = Stages(tmp_path, False, lambda s: None)
    with pytest.raises(ValueError, match="stage broke"):
        run_jobs(stages, _jobs(fail="c"), workers=2, threads=1)
    assert not (tmp_path / "c" / "done.json").exists() and not (tmp_path / "d").exists()
    assert (tmp_path / "a" / "done.json").is_file()


def test_a_cycle_or_unknown_upstream_is_refused(tmp_path):
    cycle = [Job("x", {}, ("y",), partial(_write, "x")), Job("y", {}, ("x",), partial(_write, "y"))]
    with pytest.raises(DemoError, match="wait on each other"):
        run_jobs(Stages(tmp_path, False, lambda s: None), cycle, workers=2, threads=1)
    with pytest.raises(DemoError, match="not stages of this job"):
        run_jobs(Stages(tmp_path, False, lambda s: None), [Job("x", {}, ("nope",), partial(_write, "x"))],
                 workers=2, threads=1)

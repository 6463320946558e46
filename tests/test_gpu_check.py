"""bench/gpu_check.py: its CPU dry run prints every figure of every part, its budget guard skips what no longer
fits, and its FLOP count matches a hand count."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"

# what every part must report (written out here, not read from the script, so a dropped figure fails)
KEYS = {
    "meta": {"device", "torch", "cuda", "python", "cpu_threads", "smoke", "budget_s", "compile_backend",
             "peak_tflops", "carried", "memory_kind", "rtf", "total_s", "bf16_autocast"},
    "vocoder_rtf": {"recipe", "params", "audio_seconds", "steps", "chunk_frames", "weights", "bf16", "bf16_compile",
                    "fp32", "peak_memory_mib", "seconds"},
    "vocoder_train": {"recipe", "params", "batch", "segment_length", "precision", "segments_per_s", "audio_s_per_s",
                      "ms_per_step", "steps_timed", "peak_memory_mib", "seconds"},
    "lm_train": {"recipe", "params", "params_non_embedding", "batch", "seq_len", "flops_per_token",
                 "flops_per_token_net", "flops_formula", "masked_fraction", "flops_per_token_executed", "peak_tflops",
                 "eager", "compile", "peak_memory_mib", "seconds"},
    "t2s_latency": {"components", "weights", "caption_encoder", "denoiser_params", "audio_seconds", "steps", "sampler",
                    "guidance", "vocoder_steps", "batch", "fp32", "bf16", "peak_memory_mib", "seconds"},
}
RTF_MODE = {"first_call_s", "unbatched", "sweep", "best_batch", "batched"}
LM_MODE = {"tokens_per_s", "ms_per_step", "mfu", "mfu_executed", "achieved_tflops", "steps_timed", "first_step_s"}
T2S_MODE = {"total_s", "diffusion_s", "vocoder_s", "rtf"}


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--smoke", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    assert printed == json.loads(out.read_text())  # the file holds what was printed
    return printed


def _positive(x) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and x > 0


def test_smoke_run_reports_every_figure(tmp_path):
    r = _run(tmp_path=tmp_path)
    assert set(r) == set(KEYS)
    for part, keys in KEYS.items():
        assert "error" not in r[part] and "skipped" not in r[part], (part, r[part])
        assert keys <= set(r[part]), (part, keys - set(r[part]))

    v = r["vocoder_rtf"]
    steps = [str(s) for s in v["steps"]]
    for mode in ("bf16", "bf16_compile", "fp32"):
        m = v[mode]
        assert set(m) == RTF_MODE and set(m["unbatched"]) == set(steps), (mode, m)
        assert all(_positive(m["unbatched"][s]) for s in steps)
    for mode in ("bf16", "bf16_compile"):  # the batch sweep: doubling batches, the best one re-timed
        m = v[mode]
        batches = [row["batch"] for row in m["sweep"]]
        assert batches == [2**i for i in range(len(batches))] and len(batches) >= 2
        assert m["best_batch"] in batches and set(m["batched"]) == set(steps)
        for row in m["sweep"]:  # RTF and throughput are two views of one wall time
            assert row["rtf"] * row["audio_s_per_s"] == pytest.approx(1.0)

    t = r["vocoder_train"]
    assert t["segments_per_s"] * t["segment_length"] / 22050 == pytest.approx(t["audio_s_per_s"])

    lm = r["lm_train"]
    assert lm["flops_per_token"] == pytest.approx(lm["flops_per_token_net"], rel=1e-3)
    assert 0.45 < lm["masked_fraction"] < 0.55  # log-linear masking: mask probability ~ t, t uniform
    assert lm["flops_per_token_executed"] < lm["flops_per_token"]
    for mode in ("eager", "compile"):
        m = lm[mode]
        assert set(m) == LM_MODE and _positive(m["tokens_per_s"])
        assert m["mfu"] == pytest.approx(m["tokens_per_s"] * lm["flops_per_token"] / (lm["peak_tflops"] * 1e12))

    s = r["t2s_latency"]
    for mode in ("fp32", "bf16"):
        assert set(s[mode]) == T2S_MODE and all(_positive(x) for x in s[mode].values())
        assert s[mode]["rtf"] == pytest.approx(s[mode]["total_s"] / s["audio_seconds"])


def test_parts_that_no_longer_fit_are_skipped(tmp_path):
    r = _run("--budget", "1", tmp_path=tmp_path)  # importing torch alone takes longer than that
    assert all(r[part] == {"skipped": "budget"} for part in KEYS if part != "meta")
    assert r["meta"]["budget_s"] == 1.0


def test_lm_flops_by_hand():
    from textdiff.model import TransformerNet

    gc = _load()
    # d = 16, h = 64, 2 blocks, V = 100, seq 32: per block 4*16^2 + 2*16*64 = 3072 weights, output layer 16*101 = 1616
    # 6 * (2 * 3072 + 1616) + 12 * 2 * 16 * 32 = 46560 + 12288
    assert gc.lm_train_flops(16, 2, 100, 32) == 58848
    assert gc.lm_train_flops(16, 2, 100, 32, head_fraction=0.5) == 6 * (2 * 3072 + 808) + 12288
    assert gc.lm_train_flops(16, 2, 100, 32, mlp_ratio=2.0) == 6 * (2 * (1024 + 1024) + 1616) + 12288
    # the net's own count (from its parameters) differs by its LayerNorm weights only
    net = TransformerNet(vocab_size=100, dim=16, depth=2, heads=2, max_len=32)
    norms = sum(p.numel() for n, p in net.named_parameters() if "norm" in n)
    assert net.flops_per_token(32) - gc.lm_train_flops(16, 2, 100, 32) == 6 * norms

"""Vocoder speed benchmark: real-time factor versus refinement steps, and peak memory.

    python bench/vocoder.py [--sizes tiny base | --model DIR] [--steps 6 25 50] [--seconds 5]
                            [--threads 2] [--device cpu|cuda] [--chunk-frames 256]

Real-time factor (RTF) = wall seconds to vocode / seconds of audio produced; below 1 is faster than
real time. Each size runs in its own process (so peak memory is per model): the mel of a
``--seconds``-long signal is vocoded once per step count after a one-step warm-up. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU and, on a CPU, the process's peak resident set size
(ru_maxrss; it includes the Python interpreter and torch, whose share is printed as the baseline).
"CPU s" is the process CPU time (all threads): on a machine shared with other jobs, CPU s / threads
estimates the wall time the run would take alone.
Speed does not depend on the weights, so without ``--model`` the sizes run with random weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> None:
    import torch

    from audiodiff.vocoder import Vocoder, WaveGradNet

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.model:
        vocoder = Vocoder.from_pretrained(args.model, device)
        name = args.model
    else:
        torch.manual_seed(0)
        vocoder = Vocoder(WaveGradNet.from_size(args.size)).to(device).eval()
        name = args.size
    params = sum(p.numel() for p in vocoder.net.parameters())
    frames = int(args.seconds * vocoder.sample_rate) // vocoder.hop_length
    mel = torch.randn(1, vocoder.mel_config.n_mels, frames, generator=torch.Generator().manual_seed(0)).to(device) - 5
    seconds = frames * vocoder.hop_length / vocoder.sample_rate
    base_rss = _rss_mb()
    vocoder(mel, 1, seed=0, chunk_frames=args.chunk_frames)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for steps in args.steps:
        t0, c0 = time.perf_counter(), time.process_time()
        vocoder(mel, steps, seed=0, chunk_frames=args.chunk_frames)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
        print(json.dumps({"model": name, "params": params, "device": str(device), "threads": args.threads,
                          "steps": steps, "seconds": seconds, "wall_s": wall, "rtf": wall / seconds, "cpu_s": cpu,
                          "peak_mb": peak, "baseline_rss_mb": base_rss}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"], help="named sizes (random weights)")
    p.add_argument("--model", default=None, help="a pretrained vocoder directory instead of --sizes")
    p.add_argument("--steps", type=int, nargs="+", default=[6, 25, 50])
    p.add_argument("--seconds", type=float, default=5.0, help="length of the vocoded signal")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu or cuda (default: both if a GPU is present, else cpu)")
    p.add_argument("--chunk-frames", type=int, default=256)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    devices = [args.device] if args.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    runs = [("--model", args.model)] if args.model else [("--size", s) for s in args.sizes]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.seconds:g} s of audio, chunk {args.chunk_frames} frames")
    head = (f"{'model':<10}{'params':>9}  {'device':<6}{'thr':>4}{'steps':>6}{'wall s':>9}{'RTF':>8}{'CPU s':>9}"
            f"{'peak MB':>9}")
    print(head + "\n" + "-" * len(head))
    for device in devices:
        for flag, value in runs:
            cmd = [sys.executable, __file__, "--worker", flag, value, "--device", device, "--threads",
                   str(args.threads), "--seconds", str(args.seconds), "--chunk-frames", str(args.chunk_frames),
                   "--steps", *map(str, args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{value} on {device} failed:\n{proc.stderr[-2000:]}")
                continue
            for line in proc.stdout.splitlines():
                r = json.loads(line)
                print(f"{str(r['model'])[-10:]:<10}{r['params'] / 1e6:>8.2f}M  {r['device']:<6}{r['threads']:>4}"
                      f"{r['steps']:>6}{r['wall_s']:>9.2f}{r['rtf']:>8.3f}{r['cpu_s']:>9.2f}{r['peak_mb']:>9.0f}")
            if device == "cpu":
                print(f"{'':<10}(CPU peak is the process's RSS; {r['baseline_rss_mb']:.0f} MB of it before the "
                      "first vocoding: interpreter, torch and weights)")


if __name__ == "__main__":
    main()

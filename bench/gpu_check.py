"""GPU check: the figures only a GPU can settle, in one run under a hard time budget, as one JSON.

    python bench/gpu_check.py --prepare bench/.gpu_carry       # here, on a CPU machine with PyPI: wheels
    python3 bench/gpu_check.py --out gpu_check.json             # on the GPU machine (no network there)
    python bench/gpu_check.py --cpu --smoke                     # the same code paths, tiny, on a CPU (< 1 min)

Parts (each with its own time cap inside ``--budget``; a part that fails or runs out of time records
``{"error": ...}`` beside what it measured so far, one that no longer fits records ``{"skipped": "budget"}``):

* ``vocoder_rtf``: the ``recipes/vocoder/base.yaml`` WaveGradNet (random weights: speed does not depend
  on them) vocoding the mel of ``--seconds`` of a speech-like signal at 6 and 50 steps. Real-time factor
  RTF = wall seconds / seconds of audio (below 1 is faster than real time); batched RTF divides by all the
  audio in the batch. Per mode (bf16 autocast eager, bf16 autocast + ``torch.compile``, fp32 eager):
  unbatched, then a 6-step batch sweep (doubling until throughput grows by less than 10 %, memory or time
  runs short), and both step counts at the saturating batch.
* ``vocoder_train``: training segments/s of the same net (recipe segment length and batch, bf16 autocast,
  mel on the device outside autocast as Lightning does, L1 noise loss, clipping, AdamW).
* ``lm_train``: ``recipes/textdiff/small.yaml``'s masked diffusion training step (random token windows of
  the recipe's length and batch, bf16 autocast, clipping, AdamW), eager and compiled: tokens/s and MFU
  (model FLOPs utilisation) against ``--peak-tflops``; the FLOPs are counted in ``lm_train_flops``.
* ``t2s_latency``: end-to-end text-to-sound latency of one ``--t2s-seconds`` clip at 25 dpmpp_2m steps with
  guidance (caption encoding, sampling, VAE decoding, vocoder), fp32 and bf16 autocast, for an untrained
  ``AudioPipeline`` with the base recipes' shapes (VAE ``vae_base``, UNet ``ldm_base``, vocoder ``base``).

Every part records its peak memory (``torch.cuda.max_memory_allocated``; on a CPU the process's peak RSS,
which only grows). No data set is needed: inputs are synthesised. The only packages the measured code needs
beyond the GPU image (torch, lightning, transformers, numpy, pyyaml, safetensors) are ``soundfile`` (imported
by ``audiodiff.audio``) and its ``cffi``: ``--prepare`` downloads their wheels, and the default mode
installs them offline into a temporary folder if they are not importable.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# this folder holds bench/textdiff.py, which would shadow the textdiff package: keep it off the path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(ROOT / "bench")]
for _p in (ROOT / "shared", ROOT):  # the repo importable without installing it
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

DEFAULT_CARRY = ROOT / "bench" / ".gpu_carry"
# what the measured code imports that the GPU image lacks (see the module doc); pycparser is cffi's only need
CARRIED = ("soundfile", "cffi", "pycparser")
# the device machine: Python 3.12 on x86-64 Linux (/work/.library/device/README.md's wheel recipe)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
CARRY_LIMIT_MIB = 64
H100_DENSE_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16 peak, datasheet
PARTS = ("vocoder_rtf", "vocoder_train", "lm_train", "t2s_latency")
CAPS = {"vocoder_rtf": 200.0, "vocoder_train": 60.0, "lm_train": 150.0, "t2s_latency": 80.0}  # seconds, GPU
RESERVE_S = 5.0  # kept back from the budget for writing the result
SATURATION_GAIN = 1.10  # stop doubling the batch once throughput grows by less than this factor


# ----------------------------------------------------------------------------------------------
# preparing (CPU machine) and installing (GPU machine) the carried wheels


def prepare(carry: Path) -> dict[str, Any]:
    """Download the wheels ``CARRIED`` (the versions installed here) for the GPU machine into ``carry``,
    and report their size with the working tree's (what a device call sends, 64 MiB at most)."""
    carry.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CARRIED]
    for old in carry.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(carry), *pins]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    wheels = sorted(carry.glob("*.whl"))
    carry_mib = sum(w.stat().st_size for w in wheels) / 2**20
    tree_mib = working_tree_mib(ROOT)
    total = carry_mib + tree_mib
    return {"carry_dir": str(carry), "wheels": [w.name for w in wheels], "carry_mib": round(carry_mib, 2),
            "working_tree_mib": round(tree_mib, 2), "total_mib": round(total, 2), "limit_mib": CARRY_LIMIT_MIB,
            "fits": total <= CARRY_LIMIT_MIB}


def working_tree_mib(root: Path) -> float:
    """MiB of the files a device call sends: tracked plus untracked files git does not ignore."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         check=True, capture_output=True).stdout.decode()
    return sum((root / f).stat().st_size for f in set(out.split("\0")) if f and (root / f).is_file()) / 2**20


def ensure_carried(carry: Path) -> dict[str, Any]:
    """Make ``CARRIED`` importable: nothing to do where it already is (this machine, a prepared image),
    otherwise install the carried wheels offline into a temporary folder appended to ``sys.path``."""
    try:
        import soundfile  # noqa: F401

        return {"installed": [], "note": "soundfile already importable"}
    except (ImportError, OSError):
        pass
    wheels = sorted(carry.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"error: soundfile is not importable and {carry} holds no wheels; run "
                         f"`python bench/gpu_check.py --prepare {carry.relative_to(ROOT)}` on a machine with PyPI "
                         "first and name that folder in the device call's carry")
    target = Path(tempfile.gettempdir()) / "gpu_check_site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)], check=True,
                   stdout=sys.stderr)
    sys.path.append(str(target))  # appended: never shadows a package of the image
    importlib.invalidate_caches()
    return {"installed": [w.name for w in wheels], "target": str(target)}


# ----------------------------------------------------------------------------------------------
# shared helpers


def _load_bench(name: str):
    """A sibling bench script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_recipe(name: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((ROOT / "recipes" / name).read_text())


def instantiate(spec: Any) -> Any:
    """A recipe's ``{class_path, init_args}`` as an object (nested ones too); anything else as it is."""
    if isinstance(spec, dict) and "class_path" in spec:
        module, _, cls = spec["class_path"].rpartition(".")
        args = {k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()}
        return getattr(importlib.import_module(module), cls)(**args)
    return spec


def lm_train_flops(dim: int, depth: int, vocab_size: int, seq_len: int, mlp_ratio: float = 4.0,
                   head_fraction: float = 1.0) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward) of a ``TransformerNet`` without time
    conditioning, counted from its shapes: 6 x the matmul weights a token meets (per block qkv 3 d^2, output
    projection d^2, MLP 2 d h with h = mlp_ratio d; the output layer d (V + 1) at ``head_fraction`` of the
    tokens) + 12 x depth x d x seq_len for attention scores and values (PaLM, Chowdhery et al. 2022, App. B).
    With head_fraction 1 this is the conventional model-FLOPs count behind MFU (``flops_per_token`` of the
    net, up to its norm weights); the masked LM runs its output layer only at masked tokens, so the executed
    count uses the expected masked fraction."""
    hidden = int(dim * mlp_ratio)
    body = depth * (4 * dim * dim + 2 * dim * hidden)
    return 6.0 * (body + head_fraction * dim * (vocab_size + 1)) + 12.0 * depth * dim * seq_len


class PartTimeout(Exception):
    """A part ran past its own time cap (SIGALRM)."""


class Terminated(BaseException):
    """SIGTERM: stop, but still print what was measured."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise PartTimeout("ran past its time cap")


def _on_term(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


class Check:
    """Runs the parts within the budget and holds the results (written to ``out`` after every part)."""

    def __init__(self, args: argparse.Namespace):
        import torch

        self.args, self.torch = args, torch
        self.device = torch.device("cpu" if args.cpu else "cuda")
        self.cuda = self.device.type == "cuda"
        self.t0 = time.monotonic()
        self.result: dict[str, Any] = {}

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def autocast(self, bf16: bool):
        """bf16 autocast; in the CPU smoke run entered but disabled (CPU bf16 convolutions are ~8x slower)."""
        if not bf16:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16,
                                   enabled=not (self.args.cpu and self.args.smoke))

    def compile(self, module, dynamic: bool | None = None):
        return self.torch.compile(module, backend=self.args.compile_backend, dynamic=dynamic)

    def peak_mib(self) -> float:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; the process's, only grows

    def write(self) -> None:
        if self.args.out:
            Path(self.args.out).write_text(json.dumps(self.result, indent=1) + "\n")

    def run(self, name: str, fn: Callable[[dict[str, Any], float], None]) -> None:
        """``fn(record, deadline)`` fills ``record`` as it measures, so a part cut short keeps its figures."""
        cap = min(self.args.cap_scale * CAPS[name], self.left() - RESERVE_S)
        record: dict[str, Any] = {}
        if cap < self.args.min_part_s:
            self.result[name] = {"skipped": "budget"}
            return
        print(f"[gpu_check] {name}: cap {cap:.0f} s, {self.left():.0f} s of the budget left", file=sys.stderr)
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
        t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, cap)
        try:
            fn(record, t0 + cap)
        except PartTimeout:
            record["error"] = f"timeout: cut at its cap of {cap:.0f} s"
        except Terminated as e:
            record["error"] = f"terminated ({e})"
            raise
        except Exception as e:  # a part's failure is its own, the others still run
            traceback.print_exc(file=sys.stderr)
            record["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            record["peak_memory_mib"] = round(self.peak_mib(), 1)
            record["seconds"] = round(time.monotonic() - t0, 2)
            self.result[name] = record
            self.write()

    def rate(self, step: Callable[[], Any], warmup: int, deadline: float) -> tuple[float, int]:
        """Seconds per call of ``step`` after ``warmup`` calls: timed calls until ``--min-time`` has passed
        (at least ``--min-iters``, or one if a warm-up call alone took that long; at most ``--max-iters``;
        never past a third of the time left)."""
        warmup = min(warmup, 1) if self.args.smoke else warmup
        t0 = time.perf_counter()
        for _ in range(warmup):
            step()
        self.sync()
        slow = warmup and (time.perf_counter() - t0) / warmup >= self.args.min_time
        min_iters = 1 if slow else self.args.min_iters
        budget = min(self.args.min_time, (deadline - time.monotonic()) / 3)
        n, t0 = 0, time.perf_counter()
        while n < min_iters or (time.perf_counter() - t0 < budget and n < self.args.max_iters):
            step()
            n += 1
            if n >= min_iters:
                self.sync()
        return (time.perf_counter() - t0) / n, n


# ----------------------------------------------------------------------------------------------
# the parts


def _speech(check: Check, batch: int, samples: int, seed: int = 0):
    """(batch, samples) float32 crops of a speech-like test signal, on the device."""
    import numpy as np
    import torch

    from audiodiff.testing import speechlike

    rng = np.random.default_rng(seed)
    src = speechlike(samples / 22050 + 1.0, seed=seed)
    starts = rng.integers(0, len(src) - samples, batch)
    return torch.from_numpy(np.stack([src[s: s + samples] for s in starts])).to(check.device)


def _vocoder_recipe(check: Check):
    from audiodiff.mel import MelConfig
    from audiodiff.vocoder import Vocoder

    name = "vocoder/tiny.yaml" if check.args.smoke else "vocoder/base.yaml"
    recipe = load_recipe(name)
    init = recipe["model"]["init_args"]
    check.torch.manual_seed(0)
    net = instantiate(init["net"])
    vocoder = Vocoder(net, instantiate(init.get("schedule")), MelConfig(**init["mel"]) if "mel" in init else None)
    return vocoder.to(check.device).eval(), recipe, name


def part_vocoder_rtf(check: Check, rec: dict[str, Any], deadline: float) -> None:
    torch = check.torch
    vocoder, _, name = _vocoder_recipe(check)
    seconds = check.args.seconds
    frames = int(seconds * vocoder.sample_rate) // vocoder.hop_length
    audio_s = frames * vocoder.hop_length / vocoder.sample_rate
    mel1 = vocoder.mel(_speech(check, 1, frames * vocoder.hop_length))
    rec.update({"recipe": f"recipes/{name}", "params": sum(p.numel() for p in vocoder.net.parameters()),
                "audio_seconds": audio_s, "steps": check.args.steps, "chunk_frames": None,
                "weights": "random (speed does not depend on them)"})
    eager = vocoder.net

    def timed(mel, steps: int, bf16: bool, until: float) -> float:
        def call():
            with check.autocast(bf16):
                return vocoder(mel, steps, seed=0, chunk_frames=None)
        return check.rate(call, 1, until)[0]

    # bf16 modes first: they are the figures asked for; fp32 eager is the reference, unbatched only. Each
    # mode's batch sweep stops at its share of the part's time (the compiled one also pays for compiling).
    start = time.monotonic()
    modes = (("bf16", True, False, True, 0.3), ("bf16_compile", True, True, True, 0.9),
             ("fp32", False, False, False, 1.0))  # (name, bf16, compiled, batch sweep, share of the time)
    for mode, bf16, compiled, sweep, share in modes:
        until = start + share * (deadline - start)
        m: dict[str, Any] = {"first_call_s": None, "unbatched": {}, "sweep": [], "best_batch": None,
                             "batched": {}}
        rec[mode] = m
        vocoder.net = check.compile(eager, dynamic=True) if compiled else eager  # one compile for all batches
        try:
            t0 = time.perf_counter()
            with check.autocast(bf16):
                vocoder(mel1, 2, seed=0, chunk_frames=None)  # compiles (the dynamic-shape recompile comes later)
            check.sync()
            m["first_call_s"] = round(time.perf_counter() - t0, 3)
            for steps in check.args.steps:
                m["unbatched"][str(steps)] = timed(mel1, steps, bf16, until) / audio_s
            if not sweep:
                continue
            batch, best = 1, None
            while batch <= check.args.max_batch:
                if time.monotonic() > until:
                    m["sweep_stopped"] = "time"
                    break
                try:
                    wall = timed(mel1.expand(batch, -1, -1).contiguous(), check.args.steps[0], bf16, until)
                except torch.cuda.OutOfMemoryError:
                    m["sweep_stopped"] = f"out of memory at batch {batch}"
                    torch.cuda.empty_cache()
                    break
                row = {"batch": batch, "rtf": wall / (batch * audio_s), "audio_s_per_s": batch * audio_s / wall,
                       "peak_memory_mib": round(check.peak_mib(), 1)}
                m["sweep"].append(row)
                if best is not None and row["audio_s_per_s"] < SATURATION_GAIN * best["audio_s_per_s"]:
                    best = max(best, row, key=lambda r: r["audio_s_per_s"])
                    break
                best = row
                if check.cuda and torch.cuda.max_memory_allocated() > 0.4 * torch.cuda.get_device_properties(
                        check.device).total_memory:  # the next doubling could run out of memory
                    m["sweep_stopped"] = "memory"
                    break
                batch *= 2
            if best is None:
                continue
            m["best_batch"] = best["batch"]
            mel_b = mel1.expand(best["batch"], -1, -1).contiguous()
            for steps in check.args.steps:
                m["batched"][str(steps)] = timed(mel_b, steps, bf16, deadline) / (best["batch"] * audio_s)
        finally:
            vocoder.net = eager


def part_vocoder_train(check: Check, rec: dict[str, Any], deadline: float) -> None:
    torch = check.torch
    from audiodiff.vocoder import VocoderModule

    vocoder, recipe, name = _vocoder_recipe(check)
    init, data = recipe["model"]["init_args"], recipe["data"]["init_args"]
    seg = data["segment_length"] if not check.args.smoke else 2048
    batch = data["batch_size"] if not check.args.smoke else 2
    module = VocoderModule(vocoder.net, vocoder.schedule, vocoder.mel_config, loss_norm=init.get("loss_norm", "l1"),
                           ema_decay=None).to(check.device).train()
    opt = torch.optim.AdamW(module.net.parameters(), lr=init.get("lr", 2e-4))
    audio = _speech(check, batch, seg)
    rec.update({"recipe": f"recipes/{name}", "params": sum(p.numel() for p in module.net.parameters()),
                "batch": batch, "segment_length": seg, "precision": "bf16 autocast", "segments_per_s": None,
                "audio_s_per_s": None, "ms_per_step": None, "steps_timed": None})

    def step() -> None:
        b = module.on_after_batch_transfer({"audio": audio}, 0)  # the mel, outside autocast as in Lightning
        with check.autocast(True):
            loss = module.compute_loss(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.net.parameters(), 1.0)  # recipes/_base/trainer.yaml
        opt.step()
        opt.zero_grad(set_to_none=True)

    secs, n = check.rate(step, 2, deadline)
    rec.update({"segments_per_s": batch / secs, "audio_s_per_s": batch * seg / vocoder.sample_rate / secs,
                "ms_per_step": 1000 * secs, "steps_timed": n})


def part_lm_train(check: Check, rec: dict[str, Any], deadline: float) -> None:
    torch = check.torch
    from textdiff.module import MaskedDiffusionModule

    name = "textdiff/tiny.yaml" if check.args.smoke else "textdiff/small.yaml"
    recipe = load_recipe(name)
    init, data = recipe["model"]["init_args"], recipe["data"]
    seq_len = data["seq_len"] if not check.args.smoke else 64
    batch = data["batch_size"] if not check.args.smoke else 2
    torch.manual_seed(0)
    net = instantiate({**init["net"], "init_args": {**init["net"]["init_args"], "max_len": seq_len}})
    if net.time_conditioning:
        raise ValueError(f"{name}: lm_train_flops counts a net without time conditioning")
    schedule = instantiate(init["schedule"])
    # expected share of masked tokens under the recipe's time sampling (t in [1e-5, 1], uniform on average)
    masked = float(schedule.mask_prob(torch.linspace(1e-5, 1, 100_001, dtype=torch.float64)).mean())
    flops = lm_train_flops(net.dim, net.depth, net.vocab_size, seq_len, net.config["mlp_ratio"])
    flops_exec = lm_train_flops(net.dim, net.depth, net.vocab_size, seq_len, net.config["mlp_ratio"], masked)
    peak = check.args.peak_tflops * 1e12
    rec.update({"recipe": f"recipes/{name}", "params": net.num_parameters(),
                "params_non_embedding": net.num_parameters(True), "batch": batch, "seq_len": seq_len,
                "flops_per_token": flops, "flops_per_token_net": net.flops_per_token(seq_len),
                "flops_formula": "6 * (per block 4 d^2 + 2 d h; output layer d (V+1)) + 12 * depth * d * seq_len "
                                 "per token (PaLM App. B; forward + backward)",
                "masked_fraction": masked, "flops_per_token_executed": flops_exec,
                "peak_tflops": check.args.peak_tflops})
    x = torch.randint(0, net.vocab_size, (batch, seq_len), device=check.device)
    for mode, compiled in (("eager", False), ("compile", True)):
        m: dict[str, Any] = {"tokens_per_s": None, "ms_per_step": None, "mfu": None, "mfu_executed": None,
                             "achieved_tflops": None, "steps_timed": None, "first_step_s": None}
        rec[mode] = m
        module = MaskedDiffusionModule(net, schedule, time_sampling=init.get("time_sampling", "stratified"),
                                       compile=compiled, ema_decay=None).to(check.device).train()
        if compiled and check.args.compile_backend != "inductor":  # run_net's wrapper, with the check's backend
            module._compiled.append(check.compile(module.net))
        opt = torch.optim.AdamW(module.parameters(), lr=init.get("lr", 3e-4), betas=(0.9, 0.98))

        def step(module=module, opt=opt) -> None:
            with check.autocast(True):
                loss = module.compute_loss(x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)  # recipes/_base/trainer.yaml
            opt.step()
            opt.zero_grad(set_to_none=True)

        t0 = time.perf_counter()
        step()
        check.sync()
        m["first_step_s"] = round(time.perf_counter() - t0, 3)
        # more warm-ups compiled: the number of masked tokens varies per step (a dynamic-shape recompile)
        secs, n = check.rate(step, 3 if compiled else 1, deadline)
        tps = batch * seq_len / secs
        m.update({"tokens_per_s": tps, "ms_per_step": 1000 * secs, "mfu": tps * flops / peak,
                  "mfu_executed": tps * flops_exec / peak, "achieved_tflops": tps * flops / 1e12, "steps_timed": n})
        del module, opt


def part_t2s_latency(check: Check, rec: dict[str, Any], deadline: float) -> None:
    torch = check.torch
    from audiodiff.mel import MelSpectrogram
    from audiodiff.t2s import AudioPipeline, ByteTextEncoder

    timed = _load_bench("t2s").timed  # median wall time with device syncs
    vae_name, ldm_name = ("t2s/vae_tiny.yaml", "t2s/ldm_tiny.yaml") if check.args.smoke else (
        "t2s/vae_base.yaml", "t2s/ldm_base.yaml")
    torch.manual_seed(0)
    vae = instantiate(load_recipe(vae_name)["model"]["init_args"]["net"])
    ldm = load_recipe(ldm_name)["model"]["init_args"]
    unet_args = {**ldm["net"]["init_args"], "text_dim": None, "text_vocab_size": ByteTextEncoder.vocab_size}
    denoiser = instantiate({**ldm["net"], "init_args": unet_args})
    encoder = ByteTextEncoder(max_length=ldm["text_encoder"]["init_args"].get("max_length", 64))
    mels = [(MelSpectrogram(vae.mel_config)(_speech(check, 2, 22050, seed=1).cpu()), None)]
    vae.fit_input_statistics(mels)  # an untrained VAE still needs its statistics to run
    vae.fit_latent_statistics(mels)
    vocoder, _, voc_name = _vocoder_recipe(check)
    pipe = AudioPipeline(vae, denoiser, encoder, instantiate(ldm.get("schedule")), ldm.get("prediction", "v"),
                         vocoder=vocoder, vocoder_steps=check.args.steps[0]).to(check.device)
    seconds = check.args.t2s_seconds
    rec.update({"components": [f"recipes/{vae_name}", f"recipes/{ldm_name}", f"recipes/{voc_name}"],
                "weights": "random (untrained): latency does not depend on the weights",
                "caption_encoder": "ByteTextEncoder (the recipes' MiniLM wheel is 88 MB, over the carry limit; "
                                   "it adds one 6-layer encoder pass per clip)",
                "denoiser_params": sum(p.numel() for p in denoiser.parameters()), "audio_seconds": seconds,
                "steps": check.args.t2s_steps, "sampler": pipe.sampler, "guidance": pipe.guidance,
                "vocoder_steps": check.args.steps[0], "batch": 1})
    caption, steps, repeats = ["three short high beeps, fading out"], check.args.t2s_steps, check.args.repeats
    dev = str(check.device)
    mel = pipe(caption, seconds=seconds, steps=steps, seed=0, render=False).mel  # the vocoder's input
    for mode, bf16 in (("fp32", False), ("bf16", True)):
        m: dict[str, Any] = {"total_s": None, "diffusion_s": None, "vocoder_s": None, "rtf": None}
        rec[mode] = m
        with check.autocast(bf16):
            pipe(caption, seconds=seconds, steps=steps, seed=0)  # warm-up
            total, _ = timed(lambda: pipe(caption, seconds=seconds, steps=steps, seed=0), repeats, dev)
            diff, _ = timed(lambda: pipe(caption, seconds=seconds, steps=steps, seed=0, render=False), repeats, dev)
            voc, _ = timed(lambda: pipe.to_audio(mel, seed=0), repeats, dev)
        m.update({"total_s": total, "diffusion_s": diff, "vocoder_s": voc, "rtf": total / seconds})


PART_FNS = {"vocoder_rtf": part_vocoder_rtf, "vocoder_train": part_vocoder_train, "lm_train": part_lm_train,
            "t2s_latency": part_t2s_latency}


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", metavar="DIR", type=Path, default=None,
                   help="download the carried wheels into DIR (on a machine with PyPI) and report the sizes")
    p.add_argument("--carry", type=Path, default=DEFAULT_CARRY, help="the carried wheels' folder (default %(default)s)")
    p.add_argument("--out", default=None, help="also write the JSON here (rewritten after every part)")
    p.add_argument("--budget", type=float, default=540.0, help="hard limit on the whole run in seconds")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--peak-tflops", type=float, default=H100_DENSE_BF16_TFLOPS,
                   help="the device's dense bf16 peak for MFU (default: H100/H200 SXM, %(default)g)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU (with --smoke: the test suite's dry run)")
    p.add_argument("--smoke", action="store_true", help="tiny recipes, short signals, 1-2 timed iterations")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 with --cpu)")
    p.add_argument("--steps", type=int, nargs="+", default=None,
                   help="vocoder refinement steps for the RTF; the first also sizes the batch sweep and is the "
                        "text-to-sound vocoder's (default 6 50, smoke 2 3)")
    p.add_argument("--t2s-steps", type=int, default=None, help="text-to-sound sampler steps (default 25, smoke 3)")
    p.add_argument("--seconds", type=float, default=None, help="vocoded audio for the RTF (default 4, smoke 0.1)")
    p.add_argument("--t2s-seconds", type=float, default=None, help="text-to-sound clip (default 4, smoke 0.5)")
    p.add_argument("--max-batch", type=int, default=None, help="largest vocoder batch tried (default 512, smoke 2)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor; with --cpu --smoke 'eager', which traces the "
                        "same graphs without a C++ build)")
    args = p.parse_args(argv)

    if args.prepare is not None:
        report = prepare(args.prepare.resolve())
        print(json.dumps(report, indent=1))
        return 0 if report["fits"] else 1

    smoke = args.smoke
    args.steps = args.steps or ([2, 3] if smoke else [6, 50])
    args.t2s_steps = args.t2s_steps or (3 if smoke else 25)
    args.seconds = args.seconds or (0.1 if smoke else 4.0)
    args.t2s_seconds = args.t2s_seconds or (0.5 if smoke else 4.0)
    args.max_batch = args.max_batch or (2 if smoke else 512)
    args.compile_backend = args.compile_backend or ("eager" if args.cpu and smoke else "inductor")
    args.min_time, args.min_iters, args.max_iters = (0.0, 1, 1) if smoke else (2.0, 3, 200)
    args.repeats = 1 if smoke else 3
    args.cap_scale = 1.0  # the caps only guard; a smoke run stays far below them
    args.min_part_s = 2.0 if smoke else 10.0

    t_start = time.monotonic()
    install = ensure_carried(args.carry)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device is visible; use --cpu (with --smoke for the dry run)", file=sys.stderr)
        return 2
    if args.cpu:
        torch.set_num_threads(args.threads or 1)
    torch.backends.cudnn.benchmark = True  # fixed shapes per measurement; the warm-ups pay for the search

    check = Check(args)
    check.t0 = t_start  # the install and torch's import count against the budget
    check.result["meta"] = {
        "device": torch.cuda.get_device_name() if check.cuda else (platform.processor() or platform.machine()),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(), "smoke": smoke, "budget_s": args.budget,
        "compile_backend": args.compile_backend, "peak_tflops": args.peak_tflops, "carried": install,
        "bf16_autocast": "disabled in the CPU smoke run" if args.cpu and smoke else "on where a part says bf16",
        "memory_kind": "torch.cuda.max_memory_allocated per part" if check.cuda else "process peak RSS (cumulative)",
        "rtf": "wall seconds / seconds of audio produced (batched: / all the batch's audio)"}
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    code = 0
    try:
        for name in PARTS:
            if name in args.parts:
                check.run(name, lambda rec, deadline, fn=PART_FNS[name]: fn(check, rec, deadline))
    except Terminated as e:
        check.result["meta"]["terminated"] = str(e)
        for name in args.parts:
            check.result.setdefault(name, {"skipped": "terminated"})
        code = 128 + signal.SIGTERM
    finally:
        check.result["meta"]["total_s"] = round(time.monotonic() - t_start, 1)
        check.write()
        print(json.dumps(check.result, indent=1), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Text-to-sound speed: latency per clip against the number of sampler steps, and peak memory.

    python bench/t2s.py --model runs/t2s-tiny --steps 10 25 50 100 --seconds 4
    python bench/t2s.py --steps 10 25 50 --device cuda --batch 8
    python bench/t2s.py                     # no --model: a random model shaped like recipes/t2s/ldm_tiny.yaml
    python bench/t2s.py --train-step --threads 1   # a latent-model training step: from audio vs cached latents

Times are wall-clock medians over ``--repeats`` runs after one warm-up run, split into the diffusion part
(caption encoding + sampling + VAE decoding) and the waveform part (vocoder, or Griffin-Lim without one),
per clip (divided by the batch). ``--train-step`` instead times one training step (forward, backward,
optimizer) of ``LatentDiffusionModule`` with the tiny recipe's shapes (batch 16, 256-frame segments, MiniLM
caption states, cached in both cases): from audio (mel + VAE encoding every step, the old path) and from a
``LatentCache`` batch (the denoiser alone). Memory: the peak allocated on the GPU (``torch.cuda.max_memory_allocated``),
or on a CPU the process's peak resident set size (which includes the Python runtime and libraries).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audiodiff.t2s import AudioPipeline, ByteTextEncoder, MelVAE, UNetDenoiser  # noqa: E402


def random_pipeline(device: str) -> AudioPipeline:
    """Untrained weights with the tiny recipes' shapes (a byte-level caption encoder instead of MiniLM)."""
    torch.manual_seed(0)
    vae = MelVAE(latent_channels=4, channels=(16, 32, 64))
    mels = [(-5 + 2 * torch.randn(2, 80, 64), None)]
    vae.fit_input_statistics(mels)
    vae.fit_latent_statistics(mels)
    net = UNetDenoiser(in_channels=4, channels=(64, 128), attention_levels=(1,), emb_dim=128,
                       text_vocab_size=ByteTextEncoder.vocab_size)
    return AudioPipeline(vae, net, ByteTextEncoder()).to(device)


OLD_LDM_NET = dict(channels=(32, 64), num_res_blocks=1, attention_levels=(1,), self_attention=True, heads=4,
                   emb_dim=128, text_dim=384)  # recipes/t2s/ldm_tiny.yaml before the latent cache (batch 16)
LDM_NET = dict(channels=(24, 48), num_res_blocks=1, attention_levels=(1,), self_attention=False, heads=4,
               emb_dim=128, text_dim=384, pooled_text=True)  # recipes/t2s/ldm_tiny.yaml now (batch 12)


def train_step_bench(repeats: int, frames: int = 256) -> dict[str, float]:
    """Median seconds per training step (forward, backward, AdamW) of the tiny latent model, three ways: the
    old recipe from audio (mel + VAE encoding every step), the old recipe from cached latents, and the
    current recipe from cached latents. Repeats are interleaved, so all three see the same machine load."""
    from audiodiff.t2s import LatentDiffusionModule, PretrainedTextEncoder

    torch.manual_seed(0)
    vae = MelVAE(latent_channels=4, channels=(16, 32, 64))
    mels = [(-5 + 2 * torch.randn(2, 80, 64), None)]
    vae.fit_input_statistics(mels)
    vae.fit_latent_statistics(mels)
    encoder = PretrainedTextEncoder()
    hop = vae.mel_config.hop_length
    cases = {}
    for name, net_kw, batch, cached in (("old recipe, from audio", OLD_LDM_NET, 16, False),
                                        ("old recipe, cached latents", OLD_LDM_NET, 16, True),
                                        ("current recipe, cached latents", LDM_NET, 12, True)):
        module = LatentDiffusionModule(UNetDenoiser(in_channels=4, **net_kw), vae, encoder, lr=1e-3)
        module.log = lambda *a, **k: None  # no trainer attached
        opt = torch.optim.AdamW(module.net.parameters(), lr=1e-3)
        captions = [f"{n} short {p} beeps, fading out" for n, p in zip(range(batch), ["high", "low"] * batch)]
        module.cache(captions + [""])  # captions encoded once in every case
        audio = 0.1 * torch.randn(batch, frames * hop)
        if cached:
            with torch.no_grad():
                q = vae.encode(module.mel_fn(audio))
            raw = {"latent_mean": q.mean, "latent_std": q.std,
                   "latent_frames": torch.full((batch,), q.mean.shape[-1]), "text": captions}
        else:
            raw = {"audio": audio, "frames": torch.full((batch,), frames), "text": captions}
        cases[name] = (module, opt, raw, batch)

    def step(name: str) -> None:
        module, opt, raw, _ = cases[name]
        loss = module.compute_loss(module.on_after_batch_transfer(dict(raw), 0))
        opt.zero_grad()
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {name: [] for name in cases}
    for name in cases:
        step(name)  # warm-up
    for _ in range(repeats):
        for name in cases:
            t0 = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()} | \
        {f"{name} per item": statistics.median(t) / cases[name][3] for name, t in times.items()}


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn, repeats: int, device: str) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="pipeline directory (default: random tiny weights)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--train-step", action="store_true", help="time a latent-model training step instead")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_step:
        r = train_step_bench(max(args.repeats, 5))
        print(f"latent-model training step (256-frame segments, MiniLM captions, torch threads "
              f"{torch.get_num_threads()}):")
        base = r["old recipe, from audio"]
        for name in ("old recipe, from audio", "old recipe, cached latents", "current recipe, cached latents"):
            print(f"  {name:<32} {r[name]:.3f} s/step ({r[name] / base:.2f}x), {r[name + ' per item']:.4f} s/item")
        if args.json:
            Path(args.json).write_text(json.dumps({"train_step_s": r, "args": vars(args)}, indent=2) + "\n")
        return 0
    pipe = AudioPipeline.from_pretrained(args.model, args.device) if args.model else random_pipeline(args.device)
    captions = ["three short high beeps, fading out", "a violin playing a low note twice"] * args.batch
    captions = captions[: args.batch]
    params = sum(p.numel() for p in pipe.denoiser.parameters()) / 1e6
    print(f"model: {args.model or 'random (tiny recipe shapes)'}; denoiser {params:.2f}M parameters; device "
          f"{args.device}, torch threads {torch.get_num_threads()}; {args.seconds:g} s clips, batch {args.batch}, "
          f"{args.sampler}, guidance {args.guidance:g} ({2 if args.guidance != 1 else 1} denoiser call(s) per step)")
    pipe(captions, seconds=args.seconds, steps=min(args.steps), guidance=args.guidance, seed=0, render=False)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rows = []
    mel = None
    for n in args.steps:
        dt, out = timed(lambda n=n: pipe(captions, seconds=args.seconds, steps=n, guidance=args.guidance, seed=0,
                                          sampler=args.sampler, render=False), args.repeats, args.device)
        mel = out.mel
        rows.append({"steps": n, "diffusion_s_per_clip": dt / args.batch,
                     "rtf_diffusion": dt / args.batch / args.seconds})
    vdt, _ = timed(lambda: pipe.to_audio(mel, seed=0), max(1, args.repeats - 1), args.device)
    mem = peak_memory_mb(args.device)
    vocoder = "vocoder" if pipe.vocoder is not None else "Griffin-Lim"
    print(f"{'steps':>6} {'diffusion s/clip':>17} {'+ ' + vocoder + ' s/clip':>22} {'total RTF':>10}")
    for r in rows:
        r["waveform_s_per_clip"] = vdt / args.batch
        r["rtf_total"] = (r["diffusion_s_per_clip"] + r["waveform_s_per_clip"]) / args.seconds
        print(f"{r['steps']:>6} {r['diffusion_s_per_clip']:>17.3f} {r['waveform_s_per_clip']:>22.3f} "
              f"{r['rtf_total']:>10.3f}")
    label = "peak GPU memory allocated" if args.device.startswith("cuda") else "peak process RSS"
    print(f"{label}: {mem:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "peak_memory_mib": mem, "memory_kind": label,
                                               "args": vars(args)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

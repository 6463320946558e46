"""Does the latent model follow the caption's one-word attributes? Step-matched ablations of the caption path.

    python bench/t2s_words.py --vae VAE_DIR --out runs/words --steps 500 --variant base ids proj ids+proj
    python bench/t2s_words.py --probe PIPE_DIR [PIPE_DIR ...]      # the figures alone, for trained pipelines

Each variant trains ``recipes/t2s/ldm_tiny.yaml`` with the demo's stage settings (the same data, seed, cached
latents and caption states) for ``--steps`` steps, with only the caption path changed (``VARIANTS``), exports
the pipeline (EMA weights) and measures three quick figures on held-out test captions:

* ``swap_dloss``: the denoising loss (v-prediction MSE on real held-out latents, fixed noise and noise levels
  t = 0.1..0.9) with the caption's pitch word swapped (low <-> high) minus the loss with the true caption,
  relative to the latter. 0 when the net ignores the pitch word; the larger, the more the word is used.
* ``paired``: the paired one-word test (``evaluate.paired_word_test``) on ``--pairs`` pairs.
* ``adherence``: per-attribute accuracy of ``--n`` generated clips (``evaluate.score_clips``).

Generation: 25 DPM-Solver++ steps (``--sample-steps``), guidance 3, Griffin-Lim audio (as the demo's evaluation
when the tiny vocoder measured worse). Use one thread on a shared machine (``--threads 1``); compare variants
at equal steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

TOKEN_IDS = {"text_encoder": {"class_path": "audiodiff.t2s.PretrainedTextEncoder",
                              "init_args": {"max_length": 64, "token_ids": True}}}
VARIANTS: dict[str, dict[str, Any]] = {  # net init_args (and module settings) changed from ldm_tiny.yaml
    "base": {},
    "nopool": {"net": {"pooled_text": False}},
    "ids": {"net": {"token_vocab_size": 30522, "token_dim": 32}, **TOKEN_IDS},
    "proj": {"net": {"text_width": 96, "text_layers": 1}},
    "ids+proj": {"net": {"token_vocab_size": 30522, "token_dim": 32, "text_width": 96, "text_layers": 1}, **TOKEN_IDS},
    "both_levels": {"net": {"attention_levels": [0, 1]}},
    "ids+both": {"net": {"token_vocab_size": 30522, "token_dim": 32, "attention_levels": [0, 1]}, **TOKEN_IDS},
    "coord": {"net": {"band_coordinate": True}},
    "ids+coord": {"net": {"token_vocab_size": 30522, "token_dim": 32, "band_coordinate": True}, **TOKEN_IDS},
    "ids_drop05": {"net": {"token_vocab_size": 30522, "token_dim": 32}, "caption_dropout": 0.05, **TOKEN_IDS},
}


def train_variant(name: str, vae: str, out: Path, steps: int, data: str, cache: Path) -> Path:
    from audiodiff.cli import lightning_cli
    from audiodiff.t2s.module import export_pipeline
    from diffjob.stages import train

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    v = VARIANTS[name]
    model: dict[str, Any] = {"vae": vae, "latent_cache_dir": str(cache),
                             "cache_path": str(cache / f"captions{'-ids' if 'text_encoder' in v else ''}.safetensors")}
    model.update({k: val for k, val in v.items() if k != "net"})
    if v.get("net"):
        model["net"] = {"init_args": v["net"]}
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = train(d, lightning_cli, [recipes / "_base/trainer.yaml", recipes / "t2s/ldm_tiny.yaml"],
                 {"seed_everything": 0, "model": {"init_args": model}, "data": {"init_args": {"root": data}}},
                 steps, 4, False)
    seconds = time.perf_counter() - t0
    pipe = export_pipeline(ckpt, d / "model", steps=25)
    (d / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
    return pipe


@torch.no_grad()
def swap_dloss(pipe: Any, pairs: list[dict[str, Any]], clips: Any, seconds: float = 3.0) -> float:
    """Relative increase of the denoising loss on real held-out latents when the pitch word is swapped."""
    from audiodiff.t2s.evaluate import _fixed_mels
    from diffcore.parameterization import noise_input

    waves = [clips[p["index"]]["audio"].numpy()[: round(seconds * pipe.sample_rate)] for p in pairs]
    mel = _fixed_mels(waves, pipe.mel_config, pipe.frames_for(seconds))
    z, _ = pipe.vae.encode_latents(mel)
    own = [p["low"] if str(clips.items[p["index"]].get(p["attribute"])) == "low" else p["high"] for p in pairs]
    other = [p["high"] if c == p["low"] else p["low"] for c, p in zip(own, pairs)]
    gen = torch.Generator().manual_seed(0)
    losses = {"own": 0.0, "other": 0.0}
    for t in torch.linspace(0.1, 0.9, 9):
        eps = torch.randn(z.shape, generator=gen)
        alpha, sigma = pipe.schedule.alpha(t), pipe.schedule.sigma(t)
        z_t = alpha * z + sigma * eps
        v = alpha * eps - sigma * z
        c = noise_input(pipe.schedule, t.expand(len(z)), pipe.noise_input)
        for key, caps in (("own", own), ("other", other)):
            text, mask = pipe.text_encoder(caps)
            losses[key] += float(((pipe.denoiser(z_t, c, text=text, text_mask=mask) - v) ** 2).mean())
    return (losses["other"] - losses["own"]) / losses["own"]


def probe(model: str, data: str, n: int, pairs: int, seed: int = 0, steps: int = 25) -> dict[str, Any]:
    from audiodiff.data.loaders import AudioClips
    from audiodiff.t2s import AudioPipeline
    from audiodiff.t2s.evaluate import generate_for, held_out_rows, paired_word_test, pitch_pairs, score_clips

    pipe = AudioPipeline.from_pretrained(model)
    test = AudioClips(data, split="test")
    pp = pitch_pairs(held_out_rows(test, seed=seed), pairs)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"model": model, "swap_dloss": swap_dloss(pipe, pp, test)}
    out["paired"] = paired_word_test(pipe, pp, steps=steps, guidance=3.0, seed=seed)
    rows = held_out_rows(test, n=n, seed=seed)
    waves = generate_for(pipe, rows, steps=steps, guidance=3.0, seed=seed)
    out["adherence"] = score_clips(waves, rows, pipe.sample_rate)
    out["probe_seconds"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", help="an exported VAE directory (recipes/t2s/vae_tiny.yaml)")
    p.add_argument("--out", default="runs/t2s-words")
    p.add_argument("--variant", nargs="+", default=["base", "ids"], choices=sorted(VARIANTS))
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--data", default=str(Path.home() / ".cache/diffcore/data/sounds-small"))
    p.add_argument("--probe", nargs="+", default=None, help="pipeline directories to measure (no training)")
    p.add_argument("--n", type=int, default=32, help="held-out captions for the adherence figure")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sample-steps", type=int, default=25, help="sampler steps of the probe's generations")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.probe:
        targets = [(Path(m).name, m) for m in args.probe]
    else:
        if not args.vae:
            p.error("--vae is needed to train variants")
        targets = [(v, None) for v in args.variant]
    for name, model in targets:
        if model is None:
            model = str(train_variant(name, args.vae, out, args.steps, args.data, out / "cache"))
        r = probe(model, args.data, args.n, args.pairs, steps=args.sample_steps)
        r["variant"], r["steps"], r["sample_steps"] = name, args.steps if not args.probe else None, args.sample_steps
        ts = out / name / "train_seconds.txt"
        r["train_seconds"] = float(ts.read_text()) if ts.is_file() else None
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(r) + "\n")
        acc = r["adherence"]
        print(f"{name}: swap dloss {r['swap_dloss']:+.4f} | paired " + ", ".join(
            f"{k} {v['right_way']:.2f} of {v['n']}" for k, v in r["paired"].items()) + " | " + " ".join(
            f"{k} {acc[k]:.2f}" for k in ("pitch", "register", "count", "duration", "loudness") if k in acc)
            + f" | train {r['train_seconds']} s, probe {r['probe_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

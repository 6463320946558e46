"""Side-by-side training of our WaveGradNet and the reference WaveGrad (lmnt-com/wavegrad 0.1.5).

    python bench/vocoder_peer.py [--steps 400] [--size tiny|base] [--mel ours|lmnt] [--threads 1]
                                 [--out FILE] [--smoke] [--ours-net JSON] [--prior standard|priorgrad|spectral]

Both networks are trained on the same ``speech-small`` clips with the same batches (the same clips,
offsets, noise levels and noise at every step), batch 8, ~7,200-sample segments, Adam at a constant
lr 2e-4 and gradient clipping at 1.0, as lmnt's learner does. The noise level is drawn as WaveGrad
and lmnt draw it: a uniform index n in 1..1000, then a level uniform between the consecutive points
sqrt(alpha_bar_{n-1}) and sqrt(alpha_bar_n) of the linear 1e-6..0.01 table; the loss is L1 on the
noise. Every ``--eval-every`` steps both are scored on one fixed held-out set: 32 segments of the
``test`` split (speakers never seen in training) with one fixed draw of noise levels and noise, shared
by both, so the held-out L1 curves are comparable step by step. At the end both vocode held-out
utterances (6 steps, the same sampler for both) and are scored (PESQ-wb, STOI, log-mel L1, RTF)
beside Griffin-Lim from the same mel and the ground truth.

The reference is fetched at run time, never vendored: ``pip download --no-deps wavegrad==0.1.5``
into ``--cache`` (PyPI), unpacked, and its ``model.py`` (which needs only torch and numpy) imported
from there. Its network is built from its own blocks (Conv1d with orthogonal init, DBlock, FiLM,
UBlock with dilations 1,2,1,2 in the first two) with the channels of ``--size`` and the upsampling
factors of the mel's hop, and run by its own ``WaveGrad.forward``.

Mels (``--mel``): both systems get the same mel, computed once per whole clip and cropped with the
audio (lmnt's way; inference also sees whole-clip context). "ours" is the default ``MelConfig`` (80
bands to 8 kHz, hop 256); "lmnt" is lmnt's preprocess.py front end (128 HTK bands 20 Hz..11,025 Hz,
n_fft 2048, window 1200, hop 300, magnitude with window normalisation, 20 log10 - 20 dB scaled to
[0, 1]) written as a ``MelConfig`` (plain torch; torchaudio does not load with the CPU torch). The
only difference left is framing: our frames are centred half a hop later than torchaudio's.

``--prior priorgrad|spectral`` trains ours with a shaped prior (``audiodiff.vocoder.inference``):
PriorGrad's N(0, diag(s^2)) with s from the mel's frame energy, or the spectral prior's noise filtered to
the mel's envelope. The net then predicts the white noise under the shaped noise, so its held-out L1
(``heldout_l1``) is a harder task than lmnt's and not like for like (``heldout_l1_data_space`` is the
L1 of the added noise, which flatters it); the like-for-like figure across priors is end to end:
``quality_ratio``, ours over lmnt in log-mel L1 after the same 6-step sampling of the same utterances.

``--search N``: each system also gets its own 6-step table, searched on the first N validation utterances
(2 s each) by the search the main job runs (``audiodiff.vocoder.search.search_schedule``, one round), and
vocodes the same utterances with it (``vocoder_searched``; ratio ``quality_ratio_searched``). A shaped prior
changes which table suits a network, and a user of a trained vocoder searches its table anyway.

The lmnt curve is deterministic for a seed: ``--lmnt-cache FILE`` reuses a stored one (same steps,
size, mel, batch, seed) so that ablations of ours cost one training each.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

LMNT_VERSION = "0.1.5"
TRAIN_BETAS = (1e-6, 1e-2, 1000)
SEGMENT = 7200  # samples per training segment (lmnt: 24 frames of 300); rounded down to whole frames
LMNT_DILATIONS = ((1, 2, 1, 2), (1, 2, 1, 2), (1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8))
FACTORS = {256: (4, 4, 4, 2, 2), 300: (5, 5, 3, 2, 2)}


def lmnt_mel_config():
    """lmnt's preprocess.py mel as a ``MelConfig``: |STFT| / sqrt(sum w^2) through 128 HTK bands, then
    (20 log10(max(m, 1e-5)) - 20 + 100) / 100 clamped at 0, i.e. (log10(m) - (log10 k - 4)) / 5 with the
    floor at m / k = 1e-4 (k = sqrt(sum w^2) of the 1200-sample Hann window)."""
    from audiodiff.mel import MelConfig

    k = math.sqrt(float((torch.hann_window(1200, dtype=torch.float64) ** 2).sum()))
    return MelConfig(sample_rate=22050, n_fft=2048, hop_length=300, win_length=1200, n_mels=128, f_min=20.0,
                     f_max=11025.0, mel_scale="htk", filter_norm=None, power=1.0, compression="log10",
                     clamp_min=1e-4 * k, norm_mean=math.log10(k) - 4.0, norm_std=5.0)


def load_lmnt_module(cache: Path):
    """lmnt's ``wavegrad/model.py`` from the PyPI sdist, downloaded into ``cache`` once."""
    src = cache / f"wavegrad-{LMNT_VERSION}" / "src" / "wavegrad" / "model.py"
    if not src.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                        f"wavegrad=={LMNT_VERSION}", "-d", str(cache)], check=True)
        with tarfile.open(cache / f"wavegrad-{LMNT_VERSION}.tar.gz") as tar:
            tar.extractall(cache, filter="data")
    spec = importlib.util.spec_from_file_location("lmnt_wavegrad_model", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LmntNet(nn.Module):
    """lmnt's WaveGrad at any size, built from its own blocks and run by its own forward; exposes our
    ``net(x_t, alpha, mel=mel)`` contract so the same sampler and metrics serve both."""

    def __init__(self, m, n_mels: int, hop_length: int, mel_channels: int, upsample_channels, downsample_channels):
        super().__init__()
        factors, up, down = FACTORS[hop_length], list(upsample_channels), list(downsample_channels)
        self.n_mels, self.hop_length, self._forward = n_mels, hop_length, m.WaveGrad.forward
        self.downsample = nn.ModuleList([m.Conv1d(1, down[0], 5, padding=2)] + [
            m.DBlock(down[k], down[k + 1], factors[-1 - k]) for k in range(len(factors) - 1)])
        self.film = nn.ModuleList(m.FiLM(down[k], up[-1 - k]) for k in range(len(factors)))
        self.upsample = nn.ModuleList(m.UBlock(cin, cout, f, list(d)) for cin, cout, f, d in
                                      zip([mel_channels] + up[:-1], up, factors, LMNT_DILATIONS))
        self.first_conv = m.Conv1d(n_mels, mel_channels, 3, padding=1)
        self.last_conv = m.Conv1d(up[-1], 1, 3, padding=1)

    def forward(self, x_t: Tensor, alpha: Tensor, mel: Tensor) -> Tensor:
        squeeze = x_t.ndim == 2
        x = x_t if squeeze else x_t[:, 0]
        level = alpha.reshape(-1).expand(x.shape[0]) if alpha.numel() == 1 else alpha.reshape(-1)
        out = self._forward(self, x, mel, level.to(x.dtype))  # (B, 1, T)
        return out[:, 0] if squeeze else out


# --------------------------------------------------------------------------------------------------
# data: whole-clip mels, identical batches for both systems


class Clips:
    """Clips of one split held in memory with their whole-clip mels; ``segment`` crops both."""

    def __init__(self, root: str, split: str, mel_fn, frames: int, limit: int | None = None):
        from audiodiff.data.loaders import AudioClips

        clips = AudioClips(root, split=split)
        hop = mel_fn.config.hop_length
        self.audio, self.mel = [], []
        for i in range(len(clips)):
            a = torch.as_tensor(clips[i]["audio"], dtype=torch.float32).flatten().clamp(-1, 1)
            n = a.numel() // hop
            if n < frames:
                continue  # lmnt's collator drops clips shorter than a segment too
            with torch.no_grad():
                self.audio.append(a[: n * hop])
                self.mel.append(mel_fn(a[: n * hop]))
            if limit and len(self.audio) >= limit:
                break
        if not self.audio:
            raise SystemExit(f"error: no {split} clip of {root} is {frames} frames long")
        self.hop, self.frames = hop, frames

    def segment(self, i: int, start: int) -> tuple[Tensor, Tensor]:
        f, h = self.frames, self.hop
        return self.audio[i][start * h:(start + f) * h], self.mel[i][:, start:start + f]

    def batch(self, rng: np.random.Generator, size: int) -> tuple[Tensor, Tensor]:
        items = []
        for i in rng.integers(0, len(self.audio), size):
            start = int(rng.integers(0, self.mel[i].shape[-1] - self.frames + 1))
            items.append(self.segment(int(i), start))
        return torch.stack([a for a, _ in items]), torch.stack([m for _, m in items])

    def heldout(self, count: int) -> tuple[Tensor, Tensor]:
        """``count`` fixed segments: consecutive segments of the clips in order, round-robin over clips."""
        items, k = [], 0
        while len(items) < count:
            for i in range(len(self.audio)):
                if (k + 1) * self.frames <= self.mel[i].shape[-1] and len(items) < count:
                    items.append(self.segment(i, k * self.frames))
            k += 1
            if k > 1000:
                break
        return torch.stack([a for a, _ in items]), torch.stack([m for _, m in items])


def noise_levels() -> Tensor:
    """lmnt's table: [1, sqrt(alpha_bar_1), ..., sqrt(alpha_bar_1000)] of the linear 1e-6..0.01 betas."""
    betas = torch.linspace(*TRAIN_BETAS[:2], TRAIN_BETAS[2], dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0).sqrt()])


def draw_levels(batch: int, gen: torch.Generator) -> Tensor:
    """WaveGrad's continuous noise level: uniform between two consecutive points of the table."""
    table = noise_levels()
    s = torch.randint(1, TRAIN_BETAS[2] + 1, (batch,), generator=gen)
    u = torch.rand(batch, generator=gen, dtype=torch.float64)
    return (table[s - 1] + u * (table[s] - table[s - 1])).float()


def l1_loss(net: nn.Module, audio: Tensor, mel: Tensor, level: Tensor, noise: Tensor,
            color=None, data_space: bool = False) -> Tensor:
    """L1 between ``noise`` and the net's prediction of it from level * audio + sqrt(1 - level^2) * color(noise).

    ``color``: a shaped prior's operator (``prior.operators(mel)[0]``: PriorGrad's noise * s, the spectral
    prior's filter L); the net then predicts the white noise, so the loss is the prior's
    ||eps - eps_hat||_{Sigma^-1} in L1 form. ``data_space``: the L1 of the noise actually added,
    |color(eps_hat - eps)| (proportional to the error of the x0 estimate at that level)."""
    scaled = noise if color is None else color(noise)
    x_t = level[:, None] * audio + (1 - level[:, None] ** 2).sqrt() * scaled
    err = net(x_t, level, mel=mel) - noise
    return (color(err) if data_space and color is not None else err).abs().mean()


# --------------------------------------------------------------------------------------------------
# one system


def train_system(name: str, net: nn.Module, train: Clips, held: tuple[Tensor, Tensor], args,
                 prior=None, lr: float | None = None) -> dict[str, Any]:
    """Train ``net`` for ``args.steps`` steps on the shared batch/noise stream; the held-out L1 curve."""
    opt = torch.optim.Adam(net.parameters(), lr=lr or args.lr)
    rng = np.random.default_rng(args.seed)
    held_audio, held_mel = held
    hgen = torch.Generator().manual_seed(10_000 + args.seed)
    held_level, held_noise = draw_levels(held_audio.shape[0], hgen), torch.randn(held_audio.shape, generator=hgen)
    color = (lambda mel: prior.operators(mel)[0]) if prior is not None else (lambda mel: None)

    def evaluate(data_space: bool = False) -> float:
        net.eval()
        with torch.no_grad():
            losses = [l1_loss(net, held_audio[i:i + 8], held_mel[i:i + 8], held_level[i:i + 8], held_noise[i:i + 8],
                              color(held_mel[i:i + 8]), data_space)
                      for i in range(0, held_audio.shape[0], 8)]
        net.train()
        return float(torch.stack(losses).mean())

    curve, curve_data, train_seconds, losses = {}, {}, 0.0, []
    for step in range(1, args.steps + 1):
        audio, mel = train.batch(rng, args.batch)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        level, noise = draw_levels(audio.shape[0], gen), torch.randn(audio.shape, generator=gen)
        t0 = time.perf_counter()
        loss = l1_loss(net, audio, mel, level, noise, color(mel))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        opt.step()
        train_seconds += time.perf_counter() - t0
        losses.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            curve[step] = evaluate()
            if prior is not None:
                curve_data[step] = evaluate(data_space=True)
            print(f"{name} step {step}: train L1 {np.mean(losses[-args.eval_every:]):.4f}  held-out L1 "
                  f"{curve[step]:.4f}  ({args.batch * step / train_seconds:.1f} segments/s)", flush=True)
        if not math.isfinite(losses[-1]):
            raise SystemExit(f"error: {name} diverged at step {step} (loss {losses[-1]})")
    extra = {"heldout_l1_data_space": curve_data} if curve_data else {}
    return {"heldout_l1": curve, **extra, "train_l1_last": float(np.mean(losses[-args.eval_every:])),
            "samples_per_s": args.batch * args.steps / train_seconds, "train_seconds": train_seconds,
            "parameters": sum(p.numel() for p in net.parameters())}


def quality(vocoder, clips, args, systems: bool, search_audio: list[Tensor] | None = None) -> dict[str, Any]:
    """6-step vocoding of held-out utterances scored beside Griffin-Lim and the ground truth; with
    ``search_audio``, again with a table searched for this vocoder on those (validation) utterances."""
    from audiodiff.vocoder.evaluate import evaluate
    from audiodiff.vocoder.search import search_schedule

    items = [{"audio": a} for a in clips.audio[: args.quality_clips]]
    keep = ("logmel_mean", "pesq_wb_mean", "stoi_mean", "rtf")

    def vocode() -> dict[str, dict[str, float]]:
        rows = evaluate(vocoder.eval(), items, steps=(args.quality_steps,), max_seconds=args.quality_seconds,
                        seed=0)["rows"]
        return {(r["system"] if r["steps"] is None else "vocoder"): {k.removesuffix("_mean"): r[k] for k in keep}
                for r in rows}

    out: dict[str, Any] = vocode()
    if search_audio:
        found = search_schedule(vocoder, search_audio, args.quality_steps, seed=args.seed, rounds=1)
        vocoder.set_noise_schedule(found.betas)
        out["vocoder_searched"] = vocode()["vocoder"]
        out["searched_betas"] = [float(b) for b in found.betas]
    return out if systems else {k: v for k, v in out.items() if k in ("vocoder", "vocoder_searched", "searched_betas")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--size", choices=("tiny", "base"), default="tiny")
    p.add_argument("--mel", choices=("ours", "lmnt"), default="ours")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    p.add_argument("--smoke", action="store_true", help="a few steps on few clips (CI): both train, every key")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ours-lr", type=float, default=None, help="another constant lr for ours (default --lr)")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=None, help="held-out checkpoints (default steps / 8)")
    p.add_argument("--heldout", type=int, default=32, help="held-out segments")
    p.add_argument("--data", default="speech-small")
    p.add_argument("--ours-net", default="{}", help="JSON overrides of WaveGradNet's config (ablations)")
    p.add_argument("--prior", choices=("standard", "priorgrad", "spectral"), default="standard")
    p.add_argument("--lmnt-cache", type=Path, default=None,
                   help="lmnt results of a run with the same settings: reused if present, else written")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "diffcore" / "peers")
    p.add_argument("--quality-clips", type=int, default=4)
    p.add_argument("--quality-seconds", type=float, default=3.0)
    p.add_argument("--quality-steps", type=int, default=6)
    p.add_argument("--no-quality", action="store_true", help="skip the final vocoding (ablations: curves only)")
    p.add_argument("--search", type=int, default=0,
                   help="also vocode with a 6-step table searched per system on N validation utterances")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.heldout, args.quality_clips, args.quality_seconds = min(args.steps, 3), 8, 1, 1.0
    args.eval_every = args.eval_every or max(1, args.steps // 8)
    torch.set_num_threads(args.threads)

    from audiodiff.mel import MelConfig, MelSpectrogram
    from audiodiff.vocoder import Vocoder, WaveGradNet
    from audiodiff.vocoder.model import SIZES

    lmnt = load_lmnt_module(args.cache)
    mel_config = MelConfig() if args.mel == "ours" else lmnt_mel_config()
    mel_fn = MelSpectrogram(mel_config)
    hop = mel_config.hop_length
    frames = SEGMENT // hop
    size = {k: v for k, v in SIZES[args.size].items() if k != "upsample_factors"}
    limit = 24 if args.smoke else None
    train = Clips(args.data, "train", mel_fn, frames, limit)
    test = Clips(args.data, "test", mel_fn, frames, max(args.heldout, args.quality_clips) if args.smoke else None)
    held = test.heldout(args.heldout)
    search_audio = None
    if args.search > 0 and not args.no_quality:
        val = Clips(args.data, "validation", mel_fn, frames, args.search)
        search_audio = [a[: int(2.0 * mel_config.sample_rate)] for a in val.audio[: args.search]]
    common = {"steps": args.steps, "size": args.size, "mel": args.mel, "batch": args.batch, "seed": args.seed,
              "lr": args.lr, "clip": args.clip, "segment_samples": frames * hop, "heldout": held[0].shape[0],
              "eval_every": args.eval_every, "data": args.data,
              # a cached lmnt run's vocoding must be of the same utterances for quality_ratio to compare
              "quality_clips": args.quality_clips, "quality_seconds": args.quality_seconds,
              "quality_steps": args.quality_steps, "search": args.search}

    cached = json.loads(args.lmnt_cache.read_text()) if args.lmnt_cache and args.lmnt_cache.exists() else None
    if cached is not None and (cached["settings"]["steps"] < args.steps or any(
            cached["settings"].get(k) != v for k, v in common.items() if k != "steps")):
        raise SystemExit(f"error: {args.lmnt_cache} was made with other settings ({cached['settings']}); "
                         "remove it or pass another --lmnt-cache")
    if cached is not None:  # a longer cached run serves a shorter one: its curve up to --steps
        lmnt_result = {**cached["lmnt"], "heldout_l1": {k: v for k, v in cached["lmnt"]["heldout_l1"].items()
                                                        if int(k) <= args.steps}}
    else:
        torch.manual_seed(args.seed)
        lmnt_net = LmntNet(lmnt, mel_config.n_mels, hop, size["mel_channels"], size["upsample_channels"],
                           size["downsample_channels"])
        lmnt_result = train_system("lmnt", lmnt_net, train, held, args)
        lmnt_result["quality"] = quality(Vocoder(lmnt_net, mel_config=mel_config), test, args, systems=False,
                                         search_audio=search_audio)
        if args.lmnt_cache and not args.smoke:
            args.lmnt_cache.parent.mkdir(parents=True, exist_ok=True)
            args.lmnt_cache.write_text(json.dumps({"settings": common, "lmnt": lmnt_result}, default=float))

    torch.manual_seed(args.seed)
    # the named sizes scale the default log-mel to [0, ~1]; lmnt's mel is in [0, 1] already
    overrides = {**({} if args.mel == "ours" else {"mel_offset": 0.0, "mel_scale": 1.0}), **json.loads(args.ours_net)}
    ours_net = WaveGradNet.from_size(args.size, n_mels=mel_config.n_mels, hop_length=hop,
                                     upsample_factors=FACTORS[hop], **overrides)
    from audiodiff.vocoder.inference import make_prior

    ours_result = train_system("ours", ours_net, train, held, args, make_prior(args.prior, mel_config), args.ours_lr)
    vocoder = Vocoder(ours_net, mel_config=mel_config, prior=args.prior)
    ours_result["quality"] = ({"vocoder": {}, "griffin_lim": {}, "ground_truth": {}} if args.no_quality
                              else quality(vocoder, test, args, systems=True, search_audio=search_audio))

    ratio = {s: ours_result["heldout_l1"][s] / lmnt_result["heldout_l1"][_key(lmnt_result, s)]
             for s in ours_result["heldout_l1"]}
    result = {"settings": common, "ours_config": {**ours_net.config, "prior": args.prior,
                                                  "lr": args.ours_lr or args.lr},
              "lmnt": lmnt_result, "ours": ours_result,
              "ratio_ours_over_lmnt": ratio, "max_ratio": max(ratio.values()),
              "quality_ratio": _quality_ratio(ours_result, lmnt_result),
              "quality_ratio_searched": _quality_ratio(ours_result, lmnt_result, "vocoder_searched"),
              "griffin_lim": ours_result["quality"].pop("griffin_lim"),
              "ground_truth": ours_result["quality"].pop("ground_truth"),
              "machine": {"threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
                          "cpu": platform.processor() or platform.machine()}}
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return result


def _quality_ratio(ours: dict[str, Any], lmnt: dict[str, Any], row: str = "vocoder") -> float | None:
    """Ours over lmnt in log-mel L1 after the same sampling (None when either skipped that vocoding)."""
    a = ours["quality"].get(row, {}).get("logmel")
    b = lmnt.get("quality", {}).get(row, {}).get("logmel")
    return a / b if a is not None and b else None


def _key(d: dict, step):
    # JSON round trips turn int keys into strings
    return step if step in d["heldout_l1"] else str(step)


if __name__ == "__main__":
    main()

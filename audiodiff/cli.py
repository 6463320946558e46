"""The ``audiodiff`` command line.

Training (LightningCLI; recipes are YAML files, later ones override earlier ones and flags override both)::

    audiodiff fit -c recipes/_base/trainer.yaml -c recipes/vocoder/tiny.yaml --data.init_args.root DATA
    audiodiff fit -c ... --ckpt_path last                 # resume
    audiodiff validate -c ... --ckpt_path CKPT

Vocoder::

    audiodiff export CKPT MODEL_DIR                       # training checkpoint -> pretrained directory
    audiodiff search-schedule MODEL_DIR --data DATA --steps 6     # search a 6-step table, saved as default
    audiodiff vocode MODEL_DIR mel.npy -o out.wav [--steps 6 | --betas ...] [--seed 0]
    audiodiff vocode MODEL_DIR speech.wav -o copy.wav      # copy-synthesis: analyse, then resynthesise
    audiodiff evaluate MODEL_DIR --data DATA --split test --steps 6 25 50 1000 --out runs/eval

Text-to-sound (``audiodiff.t2s``)::

    audiodiff t2s-fit -c recipes/_base/trainer.yaml -c recipes/t2s/vae_tiny.yaml   # then ldm_tiny.yaml
    audiodiff generate "three short high beeps, fading out" -o out.wav --model PIPELINE_DIR
    audiodiff t2s-evaluate PIPELINE_DIR --data DATA --out runs/t2s-eval
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffcore.cli import add_debug_flag, positive_int, resolve_device
from diffcore.errors import run_cli

LIGHTNING_COMMANDS = ("fit", "validate", "test")


# --------------------------------------------------------------------------------------------------
# training


def lightning_cli(args: Sequence[str] | None = None, run: bool = True) -> Any:
    """The LightningCLI for every audiodiff model: the recipe's ``model.class_path`` (a
    ``diffcore.lightning.DiffusionModule``) and ``data.class_path`` (a LightningDataModule) pick the system.
    With ``run=False`` no subcommand is given and the caller drives ``cli.trainer``."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from diffcore.lightning import DiffusionModule

    return LightningCLI(DiffusionModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        args=list(args) if args is not None else None, run=run,
                        save_config_kwargs={"overwrite": True})


# --------------------------------------------------------------------------------------------------
# vocoder commands


def _export(args: argparse.Namespace) -> int:
    from .vocoder.module import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, ema=not args.raw_weights)
    print(f"exported {args.checkpoint} ({'raw' if args.raw_weights else 'EMA'} weights) to {path}")
    return 0


def _load_mel_file(path: Path, n_mels: int) -> tuple[Any, dict | None]:
    """A mel from .npy ((n_mels, F), (F, n_mels) or (B, n_mels, F)) or .npz (``mel`` [+ ``mel_config`` JSON])."""
    import numpy as np
    import torch

    config = None
    if path.suffix == ".npz":
        data = np.load(path, allow_pickle=False)
        if "mel" not in data:
            raise ValueError(f"{path} has no 'mel' array (it has {', '.join(data.files)})")
        mel = data["mel"]
        if "mel_config" in data:
            config = json.loads(str(data["mel_config"]))
    else:
        mel = np.load(path, allow_pickle=False)
    mel = torch.from_numpy(np.asarray(mel, dtype=np.float32))
    if mel.ndim == 2 and mel.shape[0] != n_mels and mel.shape[1] == n_mels:
        mel = mel.T.contiguous()  # (F, n_mels), as some TTS models save it
    if mel.shape[-2] != n_mels:
        raise ValueError(f"{path} holds a mel of shape {tuple(mel.shape)}; the vocoder takes {n_mels} bands: "
                         f"(n_mels, frames) or (batch, n_mels, frames)")
    return mel, config


def _vocode(args: argparse.Namespace) -> int:
    import soundfile as sf
    import torch

    from .audio import read_audio, resample
    from .mel import MelConfig
    from .vocoder import Vocoder

    expected = MelConfig.from_dict(json.loads(Path(args.mel_config).read_text())) if args.mel_config else None
    vocoder = Vocoder.from_pretrained(args.model, resolve_device(args.device), expected_mel=expected,
                                      what=f"--mel-config {args.mel_config}")
    src = Path(args.input)
    t0 = time.perf_counter()
    if src.suffix in (".npy", ".npz"):
        mel, stored = _load_mel_file(src, vocoder.mel_config.n_mels)
        if stored is not None:
            vocoder.mel_config.check_compatible(stored, f"the mel in {src}", ours="the vocoder")
    else:
        wave, sr = read_audio(src)
        wave = resample(wave, sr, vocoder.sample_rate)
        mel = vocoder.mel(torch.from_numpy(wave).to(vocoder.device))
    kw = {"betas": args.betas} if args.betas else {}
    out = vocoder(mel.to(vocoder.device), args.steps, seed=args.seed, chunk_frames=args.chunk_frames, **kw)
    elapsed = time.perf_counter() - t0
    out = out.cpu()
    waves = [out] if out.ndim == 1 else list(out)
    dest = Path(args.output)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for i, w in enumerate(waves):
        path = dest if len(waves) == 1 else dest.with_name(f"{dest.stem}_{i}{dest.suffix}")
        sf.write(path, w.clamp(-1, 1).numpy(), vocoder.sample_rate, subtype="PCM_16")
        seconds = w.numel() / vocoder.sample_rate
        print(f"wrote {path} ({seconds:.2f} s at {vocoder.sample_rate} Hz)")
    total = sum(w.numel() for w in waves) / vocoder.sample_rate
    steps = len(args.betas) if args.betas else (args.steps or vocoder.default_steps or 50)
    print(f"{steps} steps on {vocoder.device}: {elapsed:.2f} s, real-time factor {elapsed / total:.3f}")
    return 0


def _clips(data: str, split: str, sample_rate: int) -> Any:
    from .data.loaders import AudioClips

    return AudioClips(data, split=split, sample_rate=sample_rate, resample=True)


def _search(args: argparse.Namespace) -> int:
    import torch

    from .vocoder import Vocoder
    from .vocoder.inference import update_noise_schedule
    from .vocoder.search import search_schedule

    if args.threads:
        torch.set_num_threads(args.threads)
    vocoder = Vocoder.from_pretrained(args.model, resolve_device(args.device))
    clips = _clips(args.data, args.split, vocoder.sample_rate)
    n = min(args.utterances, len(clips))
    audios = [torch.as_tensor(clips[i]["audio"])[: int(args.seconds * vocoder.sample_rate)] for i in range(n)]
    print(f"searching a {args.steps}-step schedule on {n} {args.split} utterance(s) of {args.data} "
          f"({args.seconds:g} s each), objective: log-mel L1")
    result = search_schedule(vocoder, audios, args.steps, seed=args.seed, rounds=args.rounds,
                             max_start_alpha=args.max_start_alpha, progress=print if args.verbose else None)
    for name, value in result.baselines.items():
        print(f"  baseline {name:<15} {value:.4f}")
    print(f"  searched {'':<15} {result.objective:.4f}  ({result.evaluations} evaluations)")
    print("betas: " + json.dumps([float(f"{b:.6g}") for b in result.betas]))
    if not args.no_save:
        update_noise_schedule(args.model, result.betas, make_default=True)
        print(f"saved to {Path(args.model) / 'vocoder.json'} as the {args.steps}-step schedule (now the default)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from .vocoder import Vocoder
    from .vocoder.evaluate import evaluate, format_table

    if args.threads:
        torch.set_num_threads(args.threads)
    vocoder = Vocoder.from_pretrained(args.model, resolve_device(args.device))
    clips = _clips(args.data, args.split, vocoder.sample_rate)
    out = Path(args.out)
    result = evaluate(vocoder, clips, args.steps, limit=args.limit, max_seconds=args.max_seconds, seed=args.seed,
                      audio_dir=out / "audio", save_audio=args.save_audio, progress=print)
    table = format_table(result["rows"])
    n = result["rows"][0]["n"]
    print(f"\n{args.split} split of {args.data}: {n} utterances, {result['seconds']:.1f} s, seed {args.seed}, "
          f"device {result['device']}, torch threads {torch.get_num_threads()}")
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(args.model), "data": args.data, "split": args.split, "steps": list(args.steps),
            "noise_schedules": {str(k): v for k, v in vocoder.noise_schedules.items()}}
    (out / "eval.json").write_text(json.dumps({**meta, **result}, indent=2) + "\n")
    with open(out / "eval.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(result["rows"][0]))
        writer.writeheader()
        writer.writerows(result["rows"])
    (out / "eval.txt").write_text(table + "\n")
    print(f"wrote {out / 'eval.json'}, eval.csv and eval.txt")
    return 0


# --------------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the non-training commands (each subcommand sets ``func``)."""
    parser = argparse.ArgumentParser(prog="audiodiff", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (-c recipe.yaml ...; see `audiodiff {name} --help`)",
                       add_help=False)

    p = sub.add_parser("export", help="training checkpoint -> pretrained vocoder directory")
    p.add_argument("checkpoint", help="a .ckpt written while training a VocoderModule")
    p.add_argument("out", help="the model directory to write")
    p.add_argument("--raw-weights", action="store_true", help="export the raw weights instead of the EMA ones")
    p.set_defaults(func=_export)

    p = sub.add_parser("vocode", help="mel (.npy/.npz) or audio file (copy-synthesis) -> WAV")
    p.add_argument("model", help="pretrained vocoder directory")
    p.add_argument("input", help="mel .npy ((n_mels, frames) or (batch, n_mels, frames)), .npz with 'mel' and "
                                 "optionally 'mel_config' (JSON), or an audio file")
    p.add_argument("-o", "--output", required=True, help="output WAV (batch inputs: out_0.wav, out_1.wav, ...)")
    p.add_argument("--steps", type=positive_int, default=None, help="refinement steps (default: the model's)")
    p.add_argument("--betas", type=float, nargs="+", default=None, help="an explicit inference beta table")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--mel-config", default=None, help="mel_config.json of the mel's producer: refuse a mismatch")
    p.add_argument("--chunk-frames", type=positive_int, default=256, help="network window in frames")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.set_defaults(func=_vocode)

    p = sub.add_parser("search-schedule", help="search a short inference noise schedule; saved with the model")
    p.add_argument("model", help="pretrained vocoder directory (vocoder.json gets the schedule)")
    p.add_argument("--data", required=True, help="audio folder, built-in set name or hf: data set")
    p.add_argument("--split", default="validation", help="split to search on (default validation)")
    p.add_argument("--steps", type=positive_int, default=6, help="length of the table (default 6)")
    p.add_argument("--utterances", type=positive_int, default=4, help="utterances to score on (default 4)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of each utterance (default 2)")
    p.add_argument("--rounds", type=positive_int, default=2, help="coordinate sweeps per step size (default 2)")
    p.add_argument("--max-start-alpha", type=float, default=0.5,
                   help="largest starting noise level sqrt(alpha_bar) of the table (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-save", action="store_true", help="print the table without saving it")
    p.add_argument("--verbose", action="store_true", help="print every evaluation")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=_search)

    p = sub.add_parser("evaluate", help="vocoder vs Griffin-Lim vs ground truth on held-out speech")
    p.add_argument("model", help="pretrained vocoder directory")
    p.add_argument("--data", required=True, help="audio folder, built-in set name or hf: data set")
    p.add_argument("--split", default="test", help="split (default test: speakers unseen in training)")
    p.add_argument("--steps", type=positive_int, nargs="+", default=[6, 25, 50, 1000])
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many utterances")
    p.add_argument("--max-seconds", type=float, default=None, help="cut utterances to this length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/vocoder-eval", help="folder for eval.json / eval.csv / eval.txt")
    p.add_argument("--save-audio", type=int, default=2, help="write the outputs of the first N utterances")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=_evaluate)

    from .t2s import cli as t2s_cli  # text-to-sound: generate, t2s-fit, t2s-export, t2s-evaluate

    t2s_cli.register(sub)
    return parser


def main(argv: Sequence[str | os.PathLike] | None = None) -> int:
    """``audiodiff ARGS``: the exit status (2 with a one-line ``error:`` for an error the user can fix)."""
    return run_cli(_dispatch, argv)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in LIGHTNING_COMMANDS:
        lightning_cli(argv, run=True)
        return 0
    from .t2s import cli as t2s_cli

    if argv and argv[0] in t2s_cli.PASSTHROUGH:  # LightningCLI takes the arguments as they are
        return t2s_cli.PASSTHROUGH[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

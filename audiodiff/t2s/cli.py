"""Text-to-sound commands, added to the ``audiodiff`` command line by ``register(subparsers)``::

    audiodiff t2s-fit fit -c recipes/_base/trainer.yaml -c recipes/t2s/vae_tiny.yaml  # LightningCLI fit
    audiodiff t2s-export VAE_CKPT runs/t2s-vae-tiny/vae                  # measures the latent scale on data
    audiodiff t2s-fit fit -c recipes/_base/trainer.yaml -c recipes/t2s/ldm_tiny.yaml
    audiodiff t2s-export LDM_CKPT runs/t2s-tiny [--vocoder VOCODER_DIR] [--guidance 3] [--high HIGH_CKPT]
    audiodiff generate "three short high beeps, fading out" --model runs/t2s-tiny -o beeps.wav
    audiodiff generate "a violin playing a low note twice" "a loud hiss" --seed 0 -o out.wav   # out_0, out_1
    audiodiff generate "a piano note" --init-audio in.wav --strength 0.6 -o var.wav           # variation
    audiodiff generate "a piano note" --init-audio in.wav --regenerate 1.0 2.0 -o inp.wav    # inpainting
    audiodiff generate "a piano note" --init-audio in.wav --seconds 6 --continue -o cont.wav # continuation
    audiodiff t2s-evaluate runs/t2s-tiny --data sounds-small --out runs/t2s-eval [--sweep --save-best]

``--model`` defaults to the environment variable ``AUDIODIFF_T2S_MODEL``. ``t2s-fit`` takes the
LightningCLI subcommand first (``fit``, ``validate``, ...): argparse cannot pass ``-c ...`` straight through
a subparser. A caller that dispatches ``t2s-fit`` before argparse (``PASSTHROUGH``) may leave it out. The
recipes are ordinary LightningCLI recipes, so ``audiodiff fit -c ...`` trains them too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from diffcore.cli import positive_int, resolve_device

LIGHTNING = ("fit", "validate", "test", "predict")


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def fit(args: Sequence[str], run: bool = True) -> Any:
    """LightningCLI on t2s recipes; a leading ``fit``/``validate``/... picks the subcommand (default fit)."""
    from ..cli import lightning_cli

    args = list(args)
    if run and (not args or args[0] not in LIGHTNING):
        args = ["fit", *args]
    return lightning_cli(args, run=run)


def _fit(ns: argparse.Namespace) -> int:
    fit(ns.rest)
    return 0


def fit_command(argv: Sequence[str]) -> int:
    """``t2s-fit ARGS`` dispatched before argparse (``-c`` may come first)."""
    fit(argv)
    return 0


# commands whose arguments go to LightningCLI untouched: {name: handler(argv after the name)}
PASSTHROUGH = {"t2s-fit": fit_command}


def _export(ns: argparse.Namespace) -> int:
    from diffcore.lightning import CHECKPOINT_KEY, read_checkpoint
    from diffcore.pretrained import import_class

    from .module import LatentDiffusionModule, VAEModule, export_pipeline, export_vae

    ckpt = read_checkpoint(ns.checkpoint)  # read once: its module class says which export it takes
    module = import_class(ckpt[CHECKPOINT_KEY]["module_class"])
    if issubclass(module, VAEModule):
        path = export_vae(ckpt, ns.out, data=ns.data, batches=ns.batches, ema=not ns.raw_weights)
        from .vae import MelVAE

        vae = MelVAE.from_pretrained(path)
        print(f"exported the VAE to {path}: latent shift {float(vae.latent_shift):.4f}, "
              f"scale {float(vae.latent_scale):.4f} (measured on {ns.batches} batches)")
        return 0
    if issubclass(module, LatentDiffusionModule):
        settings = {k: v for k, v in (("steps", ns.steps), ("guidance", ns.guidance), ("sampler", ns.sampler))
                    if v is not None}
        path = export_pipeline(ckpt, ns.out, high=ns.high, boundary=ns.boundary, vocoder=ns.vocoder,
                               ema=not ns.raw_weights, **settings)
        experts = f" (high-noise expert above t = {ns.boundary})" if ns.high else ""
        print(f"exported the text-to-sound pipeline{experts} to {path}"
              + ("" if ns.vocoder else " (Griffin-Lim: no vocoder)"))
        return 0
    raise ValueError(f"{ns.checkpoint} is a {module.__name__} checkpoint, neither a VAEModule nor a "
                     "LatentDiffusionModule one; export it with the command of the model it belongs to")


def _read(path: str, sample_rate: int) -> Any:
    import torch

    from ..audio import read_audio, resample

    wave, sr = read_audio(path)
    return torch.from_numpy(resample(wave, sr, sample_rate))


def _generate(ns: argparse.Namespace) -> int:
    import numpy as np

    from .inference import AudioPipeline

    _threads(ns.threads)
    model = ns.model or os.environ.get("AUDIODIFF_T2S_MODEL")
    if not model:
        raise SystemExit("no model: pass --model DIR (a pipeline from `audiodiff t2s-export`) or set "
                         "AUDIODIFF_T2S_MODEL")
    pipe = AudioPipeline.from_pretrained(model, resolve_device(ns.device), vocoder=ns.vocoder)
    kw = dict(steps=ns.steps, guidance=ns.guidance, negative_prompt=ns.negative, seed=ns.seed, sampler=ns.sampler)
    t0 = time.perf_counter()
    if ns.init_audio is None:
        out = pipe(ns.captions, seconds=ns.seconds, **kw)
    else:
        audio = _read(ns.init_audio, pipe.sample_rate)
        if ns.strength is not None:
            out = pipe.variation(audio, ns.captions, strength=ns.strength, **kw)
        elif ns.regenerate is not None or ns.continue_:
            out = pipe.inpaint(audio, ns.captions, region=tuple(ns.regenerate) if ns.regenerate else None,
                               seconds=ns.seconds if ns.continue_ else None, **kw)
        else:
            raise SystemExit("--init-audio needs --strength (variation), --regenerate A B or --continue")
    elapsed = time.perf_counter() - t0
    for path in out.save(ns.output):
        print(f"wrote {path}")
    if ns.mel_out:
        np.save(ns.mel_out, out.mel.cpu().numpy())
        print(f"wrote {ns.mel_out} (mel {tuple(out.mel.shape)})")
    seconds = out.audio.shape[-1] / pipe.sample_rate
    print(f"{len(out.captions)} clip(s) of {seconds:.2f} s in {elapsed:.2f} s on {pipe.device} "
          f"({pipe.sampler if ns.sampler is None else ns.sampler}, {ns.steps or pipe.steps} steps, guidance "
          f"{ns.guidance if ns.guidance is not None else pipe.guidance}, "
          f"{'vocoder' if pipe.vocoder is not None else 'Griffin-Lim'})")
    return 0


def _evaluate(ns: argparse.Namespace) -> int:
    from .evaluate import run_evaluation

    _threads(ns.threads)
    result = run_evaluation(ns.model, ns.data, out=ns.out, classifier=ns.classifier, n=ns.n, seed=ns.seed,
                            steps=ns.steps, guidance=ns.guidance, sweep_scales=ns.sweep_scales if ns.sweep else None,
                            sweep_steps=ns.sweep_steps if ns.sweep else None, device=resolve_device(ns.device),
                            vocoder=ns.vocoder, kinds=ns.kinds, classifier_epochs=ns.classifier_epochs,
                            seconds=ns.seconds, pairs=ns.pairs, seen=ns.seen, progress=print)
    print(json.dumps(result["summary"], indent=2))
    best = result.get("best_guidance")
    if ns.save_best and best is not None:
        from .inference import AudioPipeline

        pipe = AudioPipeline.from_pretrained(ns.model)
        pipe.guidance = float(best)
        pipe.save_pretrained(ns.model)
        print(f"saved guidance {best:g} as the default of {ns.model} (best all-correct accuracy in the sweep)")
    return 0


def register(subparsers: Any) -> None:
    """Add ``generate``, ``t2s-fit``, ``t2s-export`` and ``t2s-evaluate`` to an argparse subparsers object."""
    p = subparsers.add_parser("generate", help="caption(s) -> WAV with a text-to-sound pipeline")
    p.add_argument("captions", nargs="+", help="one or more captions (one clip each)")
    p.add_argument("-o", "--output", required=True, help="output WAV (several captions: out_0.wav, out_1.wav, ...)")
    p.add_argument("--model", default=None, help="pipeline directory (default: $AUDIODIFF_T2S_MODEL)")
    p.add_argument("--seconds", type=float, default=4.0, help="clip length (default 4; with --continue: total)")
    p.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the pipeline's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1: none)")
    p.add_argument("--negative", default=None, help="negative prompt (what to steer away from)")
    p.add_argument("--seed", type=int, default=0, help="seed; caption i uses seed + i (default 0)")
    p.add_argument("--sampler", default=None, help="ddim, ddpm, euler, heun, dpmpp_2m, pc, langevin, adaptive")
    p.add_argument("--vocoder", default=None, help="a vocoder directory replacing the pipeline's")
    p.add_argument("--init-audio", default=None, help="input clip for --strength / --regenerate / --continue")
    p.add_argument("--strength", type=float, default=None, help="variation: noise level 0..1 of the input")
    p.add_argument("--regenerate", type=float, nargs=2, default=None, metavar=("START", "END"),
                   help="inpainting: seconds of the input to regenerate")
    p.add_argument("--continue", dest="continue_", action="store_true",
                   help="continue the input clip to --seconds")
    p.add_argument("--mel-out", default=None, help="also save the mel (.npy)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=_generate)

    p = subparsers.add_parser("t2s-fit", help="LightningCLI for the t2s recipes (vae / ldm); args as `fit`",
                              add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_fit)

    p = subparsers.add_parser("t2s-export", help="VAE checkpoint -> VAE dir, or LDM checkpoint -> pipeline dir")
    p.add_argument("checkpoint", help="a .ckpt of a VAEModule or a LatentDiffusionModule")
    p.add_argument("out", help="directory to write")
    p.add_argument("--data", default=None, help="VAE: data for the latent statistics (default: the training data)")
    p.add_argument("--batches", type=positive_int, default=16, help="VAE: batches for the statistics")
    p.add_argument("--vocoder", default=None, help="LDM: vocoder directory to include (default: Griffin-Lim)")
    p.add_argument("--high", default=None, metavar="CKPT",
                   help="LDM: a high-noise expert's checkpoint (recipes/t2s/ldm_tiny_high.yaml) for the times above "
                        "--boundary")
    p.add_argument("--boundary", type=float, default=0.85, help="LDM with --high: the time where sampling hands "
                                                                "over to the main checkpoint")
    p.add_argument("--steps", type=positive_int, default=None, help="LDM: default sampler steps")
    p.add_argument("--guidance", type=float, default=None, help="LDM: default guidance scale")
    p.add_argument("--sampler", default=None, help="LDM: default sampler")
    p.add_argument("--raw-weights", action="store_true", help="export the raw weights instead of the EMA ones")
    p.set_defaults(func=_export)

    p = subparsers.add_parser("t2s-evaluate", help="caption adherence (ceiling, chance) and Frechet distance")
    p.add_argument("model", help="pipeline directory")
    p.add_argument("--data", required=True, help="the sounds set (built-in name or folder)")
    p.add_argument("--out", default="runs/t2s-eval", help="folder for eval.json and the generated clips")
    p.add_argument("--classifier", default=None, help="in-domain classifier dir (trained there if missing)")
    p.add_argument("--classifier-epochs", type=positive_int, default=8)
    p.add_argument("--n", type=positive_int, default=96, help="held-out captions to generate for")
    p.add_argument("--pairs", type=int, default=32,
                   help="caption pairs of the paired pitch-word test (low/high swapped, same seed; 0: skip)")
    p.add_argument("--seen", type=int, default=0,
                   help="also score this many test captions of combinations seen in training (0: skip)")
    p.add_argument("--kinds", nargs="+", default=["procedural", "midi"])
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seconds", type=float, default=3.0, help="clip length (the sounds set's clips are 3 s)")
    p.add_argument("--sweep", action="store_true", help="also sweep the guidance scale and the step count")
    p.add_argument("--sweep-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 7.0])
    p.add_argument("--sweep-steps", type=positive_int, nargs="+", default=[10, 25, 50, 100, 200])
    p.add_argument("--save-best", action="store_true",
                   help="store the sweep's best guidance scale as the pipeline's default")
    p.add_argument("--vocoder", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=positive_int, default=None)
    p.set_defaults(func=_evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m audiodiff.t2s.cli ...``: the ``audiodiff`` command line (which holds the t2s commands)."""
    from ..cli import main as audiodiff_main

    return audiodiff_main(argv)


if __name__ == "__main__":
    sys.exit(main())

"""The ``textdiff`` command line.

Training (LightningCLI; recipes in ``recipes/textdiff``; the AR twin has its own recipe):

    textdiff fit -c recipes/_base/trainer.yaml -c recipes/textdiff/tiny.yaml     # built-in text set
    textdiff fit -c recipes/_base/trainer.yaml -c recipes/textdiff/tiny_ar.yaml --data.data_dir DATA
    textdiff fit -c recipes/_base/trainer.yaml -c recipes/textdiff/tiny.yaml \\
        --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt          # resume
    textdiff validate|test -c ... --ckpt_path CKPT

Token files with a small vocabulary learnt from the corpus (what the CPU recipes ``tiny_bpe*.yaml`` and
``tiny_char*.yaml`` train on):

    textdiff tokenize --tokenizer bpe:8192 --data text-small --sources shakespeare --out data/shakespeare_bpe
    textdiff tokenize --tokenizer char --data text-small --sources shakespeare --out data/shakespeare_char
    textdiff tokenize --tokenizer bpe:4096 --data my_corpus/ --out data/mine   # train/ validation/ test/ of .txt

Export a checkpoint (EMA weights) with its data set's tokenizer to a ``from_pretrained`` folder:

    textdiff export CKPT OUT_DIR [--tokenizer DIR] [--raw-weights]

Generate (``--model`` defaults to $TEXTDIFF_MODEL; ``--length`` counts the prompt; the text stops at
the first end-of-text token):

    textdiff sample --model DIR --steps 64 --length 128 --prompt "To be, or not" [--n 4] [--seed 0]
        [--method ancestral|confidence] [--block-size 32] [--temperature 1] [--top-k K] [--top-p P]
    textdiff infill --model DIR "The [MASK:20] of Denmark" [--steps 20] [--seed 0]

Infilling templates: ``[MASK:N]`` is a slot of N >= 1 generated tokens; everything else is kept.

Evaluate the bound against the AR twin on the same test windows, and sample quality per step count:

    textdiff evaluate --model DIR --ar AR_DIR [--data DATA] [--split test] [--max-windows 256] [--n-t 4]
        [--samples 16 --steps 8,32,128] [--method confidence] [--temperature 0.8] [--top-p 0.9]
        [--compare-samplers]        # also every sampler setting of evaluate.SAMPLER_SETTINGS at the first --steps
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from diffcore.cli import add_debug_flag, resolve_device
from diffcore.errors import run_cli

LIGHTNING_COMMANDS = ("fit", "validate", "test")


def build_cli(args: Sequence[str] | None = None, run: bool = True):
    """The LightningCLI over ``TextModule`` subclasses and ``TokenDataModule`` (testable with run=False)."""
    from lightning.pytorch.cli import LightningCLI

    from .module import TextModule, TokenDataModule

    return LightningCLI(TextModule, TokenDataModule, subclass_mode_model=True, args=args, run=run,
                        save_config_kwargs={"overwrite": True})


def _seed(seed: int | None) -> int:
    return int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed


def _print_texts(texts: list[str], as_json: bool, seed: int, given: bool) -> None:
    if not given:
        print(f"seed: {seed} (pass --seed {seed} to repeat)", file=sys.stderr)
    if as_json:
        print(json.dumps(texts, ensure_ascii=False, indent=2))
        return
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"=== sample {i} ===")
        print(text)


def _sample(args: argparse.Namespace) -> int:
    from .inference import TextGenerator

    gen = TextGenerator.from_pretrained(args.model, device=resolve_device(args.device))
    seed = _seed(args.seed)
    texts = gen.sample(args.n, length=args.length, steps=args.steps, prompt=args.prompt, method=args.method,
                       block_size=args.block_size, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       seed=seed, stop_at_eot=not args.no_stop)
    _print_texts(texts, args.json, seed, args.seed is not None)
    return 0


def _infill(args: argparse.Namespace) -> int:
    from .inference import TextGenerator

    gen = TextGenerator.from_pretrained(args.model, device=resolve_device(args.device))
    seed = _seed(args.seed)
    texts = gen.infill(args.template, args.n, steps=args.steps, method=args.method, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=seed, stop_at_eot=not args.no_stop)
    _print_texts(texts, args.json, seed, args.seed is not None)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .module import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, tokenizer_dir=args.tokenizer, ema=not args.raw_weights)
    print(f"wrote {out}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from diffcore.data import DataError

    from .data.loaders import tokenize_corpus

    sources = [s for s in args.sources.split(",") if s] if args.sources else None
    try:
        info = tokenize_corpus(args.data, args.tokenizer, args.out, sources=sources, unknown=args.unknown,
                               progress=not args.quiet)
    except DataError as e:
        raise ValueError(str(e)) from e
    tok = info["tokenizer"]
    print(f"wrote {args.out}: {tok['kind']} tokenizer, {tok['vocab_size']} ids (end-of-text {tok['eot_id']})")
    for split, st in info["splits"].items():
        print(f"  {split:<10} {st['documents']:>6} documents  {st['tokens']:>9} tokens  {st['characters']:>9} "
              f"characters  ({st['characters'] / max(st['tokens'], 1):.2f} characters/token)"
              + (f", {st['unknown']} unknown characters -> U+FFFD" if st.get("unknown") else ""))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from . import evaluate as ev
    from .inference import TextGenerator

    device = resolve_device(args.device)
    diff = TextGenerator.from_pretrained(args.model, device=device)
    ar = TextGenerator.from_pretrained(args.ar, device=device)
    out = ev.evaluate_pair(diff, ar, args.data, split=args.split, batch_size=args.batch_size,
                           max_windows=args.max_windows, n_t=args.n_t, seed=args.seed, t_min=args.t_min,
                           samples=args.samples,
                           steps_list=[int(s) for s in args.steps.split(",")] if args.samples else (),
                           sampler={"method": args.method, "temperature": args.temperature, "top_k": args.top_k,
                                    "top_p": args.top_p, "block_size": args.block_size},
                           compare=args.compare_samplers)
    res = out["perplexity"]
    d = res["diffusion"]
    print(f"{args.split}: {d['tokens']} tokens ({d.get('characters', '?')} characters) in windows of "
          f"{diff.net.max_len}; {args.n_t} draws of (t, masks) per window, t in [{args.t_min:g}, 1]")
    print(ev.format_table(ev.perplexity_rows(res), ["model", "nats/token", "ppl/token", "nats/char", "bits/char",
                                                    "ppl/char"]))
    print(f"  bound's Monte-Carlo s.e.: {d['se']:.4f} nats/token")
    gap_char = f", {res['gap_percent_char']:+.1f}% per character" if "gap_percent_char" in res else ""
    print(f"  gap: the diffusion bound is {res['gap_percent']:+.1f}% above the AR perplexity per token{gap_char}")
    columns = ["sampler", "steps", "gen_ppl", "gen_ppl_char", "entropy", "distinct4", "nfe", "tokens_per_s"]
    if "samples" in out:
        print(ev.format_table(out["samples"], columns))
    if "samplers" in out:
        print(f"sampler settings at {out['samplers'][0]['steps']} steps:")
        print(ev.format_table(out["samplers"], columns))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textdiff", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (textdiff {name} --help for its options)", add_help=False)

    def generation_options(p: argparse.ArgumentParser) -> None:
        default = os.environ.get("TEXTDIFF_MODEL")
        p.add_argument("--model", required=default is None, default=default,
                       help="a folder written by save_pretrained / textdiff export (default: $TEXTDIFF_MODEL)")
        p.add_argument("--n", type=int, default=1, help="number of samples (default 1)")
        p.add_argument("--steps", type=int, default=None,
                       help="denoising steps (default: one per generated token; the AR twin ignores it)")
        p.add_argument("--method", choices=["ancestral", "confidence"], default="ancestral",
                       help="ancestral (MDLM) or confidence-ordered unmasking (LLaDA low-confidence remasking)")
        p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
        p.add_argument("--top-k", type=int, default=None)
        p.add_argument("--top-p", type=float, default=None)
        p.add_argument("--seed", type=int, default=None, help="random seed (printed when not given)")
        p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
        p.add_argument("--no-stop", action="store_true", help="keep the text after the first end-of-text token")
        p.add_argument("--json", action="store_true", help="print the samples as a JSON list")

    p = sub.add_parser("sample", help="generate text, optionally continuing a prompt")
    generation_options(p)
    p.add_argument("--length", type=int, default=None,
                   help="tokens per sample, prompt included (default: the training length)")
    p.add_argument("--prompt", default=None, help="text the samples start with")
    p.add_argument("--block-size", type=int, default=None, help="semi-autoregressive blocks of this many tokens")
    p.set_defaults(func=_sample)

    p = sub.add_parser("infill", help="fill the [MASK:N] slots of a template")
    p.add_argument("template", help='text with slots, e.g. "The [MASK:20] of Denmark"')
    generation_options(p)
    p.set_defaults(func=_infill)

    p = sub.add_parser("tokenize", help="token files with a tokenizer learnt from the corpus (char, byte, bpe:N)")
    p.add_argument("--tokenizer", default="char",
                   help="char, byte, bpe:N (byte-level BPE with N ids, e.g. bpe:4096) or gpt2 (default char)")
    p.add_argument("--data", default="text-small",
                   help="a built text set (text-tiny|text-small|text-full or its folder) or a folder with train/, "
                        "validation/, test/ of .txt files (default text-small)")
    p.add_argument("--sources", default=None,
                   help="of a built set, only these comma-separated sources (shakespeare, milton, austen, wordnet)")
    p.add_argument("--out", required=True, help="output folder (train/validation/test.bin, tokenizer/, tokens.json)")
    p.add_argument("--unknown", choices=["replace", "error"], default="replace",
                   help="char tokenizer: characters the training split lacks become U+FFFD (default) or stop with "
                        "an error")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_tokenize)

    p = sub.add_parser("export", help="checkpoint -> from_pretrained folder (with the tokenizer)")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: <data_dir>/tokenizer of the run)")
    p.add_argument("--raw-weights", action="store_true", help="export the raw training weights, not the EMA")
    p.set_defaults(func=_export)

    p = sub.add_parser("evaluate", help="NELBO bound vs the AR twin's perplexity; sample quality per step count")
    p.add_argument("--model", required=True, help="the masked diffusion model folder")
    p.add_argument("--ar", required=True, help="the AR twin's folder")
    p.add_argument("--data", default=None,
                   help="data directory with <split>.bin (default: the built-in text set of size small)")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--max-windows", type=int, default=None, help="evaluate on at most this many windows")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-t", type=int, default=4, help="draws of (t, masks) per window for the bound")
    p.add_argument("--t-min", type=float, default=1e-3, help="the bound's times are drawn from [t_min, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=0, help="also draw this many samples per step count")
    p.add_argument("--steps", default="8,32,128", help="comma-separated step counts for --samples")
    p.add_argument("--method", choices=["ancestral", "confidence"], default="ancestral",
                   help="diffusion sampler for --samples")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--block-size", type=int, default=None, help="semi-autoregressive blocks for --samples")
    p.add_argument("--compare-samplers", action="store_true",
                   help="with --samples: also compare sampler settings at the first --steps value")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=_evaluate)
    return parser


def main(argv: Sequence[str | os.PathLike] | None = None) -> int:
    """``textdiff ARGS``: the exit status (2 with a one-line ``error:`` for an error the user can fix)."""
    return run_cli(_dispatch, argv)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in LIGHTNING_COMMANDS:
        build_cli(args=argv)
        return 0
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

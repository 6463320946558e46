"""Masked diffusion LM benchmark, always next to its autoregressive twin.

    python bench/textdiff.py --diffusion DIR --ar AR_DIR --data DATA      # trained models: everything
    python bench/textdiff.py --size tiny                                 # untrained nets: speed only

1. Likelihood: the diffusion model's NELBO bound on the test split beside the AR twin's exact
   perplexity on the same windows (the ceiling) and a unigram model (the floor), per token and per
   character (so that models with different tokenizers compare), and the gap in % (MDLM reports its
   bound 20-30% above an equal AR model; ours is measured at equal budget: same net, data, batch, steps).
2. Sample quality vs steps: generative perplexity (samples scored by the AR twin) and mean per-sample
   unigram entropy of unconditional samples, for each step count, beside the AR twin's own samples
   and real test windows. Low entropy with low generative perplexity means repetition, not quality.
3. Speed: training tokens/s (forward + backward + AdamW, bf16 autocast on GPU) and model FLOPs
   utilisation (MFU, on GPUs with a known peak); sampling tokens/s vs steps at each length, beside
   AR decoding with a KV cache. Untrained nets give the same speed as trained ones.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
import warnings

import torch

# This script shares its name with the package it measures: keep its own folder off the import path.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

from textdiff import evaluate as ev  # noqa: E402
from textdiff.inference import TextGenerator  # noqa: E402
from textdiff.model import TransformerNet  # noqa: E402
from textdiff.module import (  # noqa: E402
    ARModule,
    MaskedDiffusionModule,
    TokenDataModule,  # noqa: E402
)

# dense bf16 tensor-core peaks (FLOP/s) by device name, for MFU
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


class _Vocab:
    """A stand-in tokenizer of the GPT-2 vocabulary size, for untrained speed-only runs."""

    eot_id, vocab_size = 50256, 50257

    def encode(self, text: str) -> list[int]:
        raise ValueError("the speed-only run has no tokenizer")

    def decode(self, ids: list[int]) -> str:
        return ""

    def save(self, directory) -> None:
        pass


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():  # "H100 PCIe" is checked before "H100"
        if key in name:
            return value
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(net: TransformerNet, kind: str, batch: int, seq_len: int, steps: int, device: torch.device,
                compile: bool = False) -> dict:
    """Tokens/s of full training steps on random tokens (after one warm-up step), and MFU."""
    module = (MaskedDiffusionModule if kind == "diffusion" else ARModule)(net, ema_decay=None, compile=compile)
    module.to(device).train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    x = torch.randint(0, net.vocab_size, (batch, seq_len), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = module.compute_loss(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    secs = time.perf_counter() - t0
    tps = batch * seq_len * steps / secs
    peak = peak_flops(device)
    mfu = tps * net.flops_per_token(seq_len) / peak if peak else None
    return {"model": kind, "batch": batch, "seq_len": seq_len, "tokens_per_s": tps, "mfu": mfu,
            "ms_per_step": 1000 * secs / steps}


def sampling_speed(diff: TextGenerator, ar: TextGenerator, lengths: list[int], steps_list: list[int], n: int,
                   seed: int = 0) -> list[dict]:
    rows = []
    for length in lengths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lengths beyond the training length are timed, not judged
            for steps in steps_list:
                _, secs, nfe = ev.timed_fill(diff, n, length, steps, seed)
                rows.append({"sampler": "diffusion", "length": length, "steps": steps, "nfe": nfe,
                             "tokens_per_s": n * length / secs, "seconds": secs})
            _, secs, _ = ev.timed_fill(ar, n, length, None, seed)
        rows.append({"sampler": "AR (KV cache)", "length": length, "steps": length, "nfe": length,
                     "tokens_per_s": n * length / secs, "seconds": secs})
    return rows


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffusion", help="trained masked diffusion model folder (from_pretrained)")
    p.add_argument("--ar", help="its AR twin's folder")
    p.add_argument("--data", help="data directory with test.bin (for the likelihood section)")
    p.add_argument("--size", default="tiny", help="net size for the speed-only run without model folders")
    p.add_argument("--max-windows", type=int, default=256, help="test windows for the likelihood (None: all)")
    p.add_argument("--n-t", type=int, default=4)
    p.add_argument("--t-min", type=float, default=1e-3, help="the bound's times are drawn from [t_min, 1]")
    p.add_argument("--n", type=int, default=None, help="samples per configuration (default 16 GPU, 4 CPU)")
    p.add_argument("--steps", default=None, help="step counts (default 8..1024 GPU, 8,32,128 CPU)")
    p.add_argument("--lengths", default=None, help="sampling speed lengths (default 128,1024 GPU, 128 CPU)")
    p.add_argument("--train-batch", type=int, default=None, help="training-speed batch (default 32 GPU, 8 CPU)")
    p.add_argument("--train-len", type=int, default=None, help="training-speed length (default: the model's)")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 20 GPU, 3 CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the net for the training speed")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    n = args.n or (16 if gpu else 4)
    steps_list = _ints(args.steps) if args.steps else ([8, 16, 32, 64, 128, 256, 512, 1024] if gpu else [8, 32, 128])
    lengths = _ints(args.lengths) if args.lengths else ([128, 1024] if gpu else [128])
    name = torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()
    print(f"textdiff bench on {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    if args.diffusion and args.ar:
        diff = TextGenerator.from_pretrained(args.diffusion, device=device)
        ar = TextGenerator.from_pretrained(args.ar, device=device)
        trained = True
    else:
        print(f"no --diffusion/--ar folders: untrained '{args.size}' nets, speed only")
        diff = TextGenerator(TransformerNet.from_size(args.size, max_len=max(lengths)), _Vocab(), device=device)
        ar = TextGenerator(TransformerNet.from_size(args.size, max_len=max(lengths), causal=True), _Vocab(), "ar",
                           device=device)
        trained = False
    net = diff.net
    print(f"net: {net.num_parameters() / 1e6:.1f}M parameters ({net.num_parameters(True) / 1e6:.1f}M without "
          f"the embedding), dim {net.dim}, depth {net.depth}, heads {net.heads}, trained length {net.max_len}")

    if trained and args.data:
        out = ev.evaluate_pair(diff, ar, args.data, split="test", batch_size=16, max_windows=args.max_windows,
                               n_t=args.n_t, seed=args.seed, t_min=args.t_min)
        res = out["perplexity"]
        d = res["diffusion"]
        print(f"\n1. likelihood on {d['tokens']} test tokens = {d['characters']} characters (windows of "
              f"{net.max_len}); the AR twin is the ceiling, a unigram model the floor:")
        print(ev.format_table(ev.perplexity_rows(res), ["model", "nats/token", "ppl/token", "nats/char", "bits/char",
                                                        "ppl/char"]))
        print(f"   bound's Monte-Carlo s.e. {d['se']:.4f} nats/token ({args.n_t} draws of t in [{args.t_min:g}, 1])")
        print(f"   gap: {res['gap_percent']:+.1f}% per token, {res['gap_percent_char']:+.1f}% per character "
              "(MDLM's published bound: +20-30% over an equal AR model on GPT-2 tokens, ~+12% per character on "
              "text8)")
        print(f"\n2. sample quality, {n} unconditional samples of {net.max_len} tokens, scored by the AR twin:")
        rows = ev.sample_quality(diff, ar, steps_list, n=n, seed=args.seed)
        dm = TokenDataModule(args.data, seq_len=net.max_len, batch_size=16, max_eval_windows=args.max_windows,
                             vocab_size=net.vocab_size)
        real = torch.stack([dm.eval_dataset("test")[i] for i in range(min(n, len(dm.eval_dataset("test"))))])
        rows.append({"sampler": "real test windows", **ev.reference_quality(ar.net, real, ar.tokenizer)})
        print(ev.format_table(rows, ["sampler", "steps", "gen_ppl", "gen_ppl_char", "entropy", "nfe",
                                     "tokens_per_s"]))
    else:
        print("\n1-2. likelihood and sample quality need --diffusion, --ar and --data: skipped")

    print("\n3a. training speed (random tokens of the full vocabulary):")
    seq_len = args.train_len or net.max_len
    train_rows = []
    for kind, src in (("diffusion", diff.net), ("ar", ar.net)):
        fresh = TransformerNet(**{**src.config, "max_len": seq_len})
        train_rows.append(train_speed(fresh, kind, args.train_batch or (32 if gpu else 8), seq_len,
                                      args.train_steps or (20 if gpu else 3), device, args.compile))
    print(ev.format_table(train_rows, ["model", "batch", "seq_len", "tokens_per_s", "ms_per_step", "mfu"]))
    print(f"\n3b. sampling speed, {n} sequences per call:")
    print(ev.format_table(sampling_speed(diff, ar, lengths, steps_list, n, args.seed),
                          ["sampler", "length", "steps", "nfe", "tokens_per_s", "seconds"]))


if __name__ == "__main__":
    main()

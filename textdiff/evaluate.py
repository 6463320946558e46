"""Evaluation of the masked diffusion LM next to its autoregressive twin, on the same tokens.

- ``diffusion_bound``: the NELBO (an upper bound on the negative log-likelihood, nats per token)
  on held-out windows, averaged over ``n_t`` draws of (t, masks) per window; exp of it bounds the
  perplexity. Its Monte-Carlo standard error comes from the spread of the independent repeats.
- ``ar_nll``: the AR twin's exact negative log-likelihood of the same windows (given BOS).
- ``sample_quality``: generative perplexity (samples scored by the AR twin, MDLM's metric with our
  own twin in place of GPT-2 Large) and the mean per-sample unigram entropy (low values flag
  degenerate repetition), for several step counts and for the AR twin's own samples; sampling
  speed is measured in the same runs.

Generative perplexity alone rewards dull text (a repeated token scores well), so read it together
with the entropy, and against the same figures for real text (``reference_quality``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcore.discrete import LogLinearMasking, MaskingSchedule

from .inference import TextGenerator, prompt_canvas
from .model import TransformerNet, ar_nll, diffusion_nelbo


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def diffusion_bound(net: TransformerNet, windows: Iterable[Tensor], schedule: MaskingSchedule | None = None, *,
                    n_t: int = 4, seed: int = 0, t_min: float = 1e-3) -> dict[str, float]:
    """NELBO of a masked diffusion net on batches of windows (B, L): nats/token, perplexity bound, SE.

    Each batch is evaluated ``n_t`` times with stratified t in [``t_min``, 1] (one t per window, or per block
    for a block-diffusion net: ``textdiff.model.diffusion_nelbo``), from a
    generator seeded with ``seed``, so the figure is reproducible. The output layer runs only at the
    masked positions (``masked_nelbo``'s ``logits_at``), the same value as full logits at a fraction of
    the cost. ``t_min``: the integral's [0, t_min) part is left out (with a log-linear schedule it is about
    t_min times the per-token NLL of a single masked token: 0.1% at 1e-3), and in exchange the estimate
    does not carry rare terms weighted 1/t up to 1e5 (``t_min`` 1e-5), whose spread swamps it.
    """
    if n_t < 1:
        raise ValueError("n_t must be >= 1")
    schedule = schedule or LogLinearMasking()
    device = next(net.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    totals = torch.zeros(n_t, dtype=torch.float64)
    n_tokens = 0
    for x in windows:
        x = x.to(device).long()
        for k in range(n_t):
            per_window = diffusion_nelbo(net, x, schedule, t_min=t_min, generator=g, reduce=False)
            totals[k] += float(per_window.double().sum()) * x.shape[1]
        n_tokens += x.numel()
    if n_tokens == 0:
        raise ValueError("no windows to evaluate")
    repeats = totals / n_tokens
    nll = float(repeats.mean())
    se = float(repeats.std() / math.sqrt(n_t)) if n_t > 1 else float("nan")
    return {"nll": nll, "se": se, "ppl": math.exp(nll), "tokens": n_tokens}


@torch.no_grad()
def ar_perplexity(net: TransformerNet, windows: Iterable[Tensor]) -> dict[str, float]:
    """The AR twin's exact negative log-likelihood (nats/token) and perplexity on the windows."""
    device = next(net.parameters()).device
    total, n_tokens = 0.0, 0
    for x in windows:
        x = x.to(device).long()
        total += float(ar_nll(net, x, net.mask_id, reduce=False).double().sum()) * x.shape[1]
        n_tokens += x.numel()
    if n_tokens == 0:
        raise ValueError("no windows to evaluate")
    return {"nll": total / n_tokens, "ppl": math.exp(total / n_tokens), "tokens": n_tokens}


def unigram_nll(train_tokens: Tensor | Any, windows: Iterable[Tensor], vocab_size: int) -> dict[str, float]:
    """The floor: a unigram model (training-split token frequencies, add-one smoothed) on the windows."""
    ids = torch.from_numpy(np.asarray(train_tokens, dtype=np.int64).reshape(-1))  # a read-only memmap is fine
    counts = torch.bincount(ids, minlength=vocab_size)
    logp = torch.log((counts[:vocab_size].double() + 1) / (counts[:vocab_size].sum() + vocab_size))
    total, n_tokens = 0.0, 0
    for x in windows:
        total -= float(logp[x.long().reshape(-1).cpu()].sum())
        n_tokens += x.numel()
    if n_tokens == 0:
        raise ValueError("no windows to evaluate")
    return {"nll": total / n_tokens, "ppl": math.exp(total / n_tokens), "tokens": n_tokens}


def per_character(figures: dict[str, Any], characters: int) -> dict[str, Any]:
    """``figures`` (nll in nats/token over ``figures["tokens"]`` tokens) with the per-character view added:
    nats_per_char, bits_per_char and ppl_per_char, over the ``characters`` those tokens stand for."""
    nats = figures["nll"] * figures["tokens"] / characters
    return {**figures, "characters": characters, "nats_per_char": nats, "bits_per_char": nats / math.log(2),
            "ppl_per_char": math.exp(nats)}


def window_characters(tokenizer: Any, windows: Iterable[Tensor]) -> int:
    """Characters the windows stand for (each decoded on its own; end-of-text counts as one character)."""
    from .tokenizer import count_characters

    return sum(count_characters(tokenizer, row.cpu().numpy()) for x in windows for row in x)


def compare_perplexity(diffusion: TransformerNet, ar: TransformerNet, windows: Sequence[Tensor],
                       schedule: MaskingSchedule | None = None, *, n_t: int = 4, seed: int = 0,
                       t_min: float = 1e-3, characters: int | None = None,
                       unigram: dict[str, float] | None = None) -> dict[str, Any]:
    """The diffusion bound and the AR perplexity on the same windows, and the gap between them in %.

    With ``characters`` (what the windows' tokens decode to; ``window_characters``) each figure also comes
    per character and ``gap_percent_char`` compares per-character perplexities (with one tokenizer the two
    gaps differ, as perplexities are powers of each other). ``unigram`` (``unigram_nll``) is the floor.
    """
    bound = diffusion_bound(diffusion, windows, schedule, n_t=n_t, seed=seed, t_min=t_min)
    exact = ar_perplexity(ar, windows)
    out: dict[str, Any] = {"diffusion": bound, "ar": exact, "gap_percent": 100.0 * (bound["ppl"] / exact["ppl"] - 1.0)}
    if unigram is not None:
        out["unigram"] = unigram
    if characters:
        for key in ("diffusion", "ar", "unigram"):
            if key in out:
                out[key] = per_character(out[key], characters)
        out["gap_percent_char"] = 100.0 * (out["diffusion"]["ppl_per_char"] / out["ar"]["ppl_per_char"] - 1.0)
    return out


@torch.no_grad()
def generative_nll(scorer: TransformerNet, samples: Tensor, batch_size: int = 16) -> float:
    """Total NLL (nats) of full samples (N, L) under a causal scorer net (the AR twin)."""
    device = next(scorer.parameters()).device
    total = 0.0
    for chunk in samples.split(batch_size):
        total += float(ar_nll(scorer, chunk.to(device).long(), scorer.mask_id, reduce=False).double().sum())
    return total * samples.shape[1]


def generative_perplexity(scorer: TransformerNet, samples: Tensor, batch_size: int = 16) -> float:
    """exp(mean NLL per token) of full samples (N, L) under a causal scorer net (the AR twin)."""
    return math.exp(generative_nll(scorer, samples, batch_size) / samples.numel())


def generative_perplexity_per_char(scorer: TransformerNet, samples: Tensor, tokenizer: Any) -> float:
    """exp(NLL per character) of samples (N, L) under the scorer: compares across tokenizers."""
    return math.exp(generative_nll(scorer, samples) / window_characters(tokenizer, [samples]))


def unigram_entropy(samples: Tensor) -> float:
    """Mean over samples (N, L) of the entropy (nats) of each sample's token frequencies."""
    out = []
    for row in samples.long().cpu():
        p = torch.bincount(row).double()
        p = p[p > 0] / row.numel()
        out.append(float(-(p * p.log()).sum()))
    return sum(out) / len(out)


def distinct_ngrams(samples: Tensor, n: int = 4) -> float:
    """Mean over samples (N, L) of the fraction of each sample's n-grams that are distinct (1: no n-gram
    repeats within the sample; repetitive text scores low). Samples shorter than n are skipped."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = []
    for row in samples.long().cpu().tolist():
        grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
        if grams:
            out.append(len(set(grams)) / len(grams))
    if not out:
        raise ValueError(f"no sample is at least {n} tokens long")
    return sum(out) / len(out)


def reference_quality(scorer: TransformerNet, windows: Tensor, tokenizer: Any = None) -> dict[str, float]:
    """Generative perplexity (per token, and per character given the ``tokenizer``), unigram entropy and
    distinct 4-grams of real text windows (N, L): what samples should match."""
    out = {"gen_ppl": generative_perplexity(scorer, windows), "entropy": unigram_entropy(windows),
           "distinct4": distinct_ngrams(windows, 4)}
    if tokenizer is not None:
        out["gen_ppl_char"] = generative_perplexity_per_char(scorer, windows, tokenizer)
    return out


def timed_fill(gen: TextGenerator, n: int, length: int, steps: int | None, seed: int,
               **kw: Any) -> tuple[Tensor, float, int | None]:
    """Unconditional samples (n, length), the seconds they took and the network calls (None for AR)."""
    canvas = prompt_canvas(gen.tokenizer, None, length, gen.net.mask_id)
    _sync(gen.device)
    t0 = time.perf_counter()
    tokens, stats = gen.fill(canvas, n, steps=steps, seed=seed, return_stats=True, **kw)
    _sync(gen.device)
    return tokens, time.perf_counter() - t0, (stats.nfe if stats is not None else None)


def sample_quality(diffusion: TextGenerator, ar: TextGenerator, steps_list: Sequence[int], *, n: int = 16,
                   length: int | None = None, seed: int = 0, **kw: Any) -> list[dict[str, Any]]:
    """Unconditional samples of ``length`` tokens at each step count, and the AR twin's own samples.

    Each row: sampler, steps, gen_ppl (scored by the AR twin; gen_ppl_char per character), entropy,
    distinct4 (``distinct_ngrams``), nfe (network calls), seconds and tokens_per_s (n * length / seconds).
    Extra keyword arguments (method, block_size, temperature, top_k, top_p) go to the diffusion sampler
    and are named in its rows' sampler.
    """
    length = length or diffusion.net.max_len
    name = sampler_name(**kw)
    rows = [_quality_row(ar, f"diffusion ({name})", steps, *timed_fill(diffusion, n, length, steps, seed, **kw))
            for steps in steps_list]
    rows.append(_quality_row(ar, "AR twin (KV cache)", length, *timed_fill(ar, n, length, None, seed)))
    rows[-1]["nfe"] = length
    return rows


def sampler_name(method: str = "ancestral", temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, block_size: int | None = None) -> str:
    """A short label of a sampler setting, e.g. "ancestral", "confidence, T=0.8, top-p 0.9"."""
    parts = [method]
    if temperature != 1.0:
        parts.append(f"T={temperature:g}")
    if top_k is not None:
        parts.append(f"top-k {top_k}")
    if top_p is not None:
        parts.append(f"top-p {top_p:g}")
    if block_size:
        parts.append(f"blocks of {block_size}")
    return ", ".join(parts)


def _quality_row(scorer: TextGenerator, sampler: str, steps: int, tokens: Tensor, secs: float,
                 nfe: int | None) -> dict[str, Any]:
    """One ``sample_quality`` row for samples (n, L) that took ``secs``, scored by the AR twin ``scorer``."""
    return {"sampler": sampler, "steps": steps, "gen_ppl": generative_perplexity(scorer.net, tokens),
            "gen_ppl_char": generative_perplexity_per_char(scorer.net, tokens, scorer.tokenizer),
            "entropy": unigram_entropy(tokens), "distinct4": distinct_ngrams(tokens, 4), "nfe": nfe,
            "seconds": secs, "tokens_per_s": tokens.numel() / secs}


# The diffusion sampler settings that ``compare_samplers`` measures by default (``textdiff evaluate
# --compare-samplers``): the exact reverse process, the usual ways to trade diversity for likelihood
# (temperature, nucleus), confidence-ordered unmasking (LLaDA; MaskGIT's order) and semi-autoregressive blocks.
SAMPLER_SETTINGS: tuple[dict[str, Any], ...] = (
    {}, {"temperature": 0.9}, {"temperature": 0.8}, {"top_p": 0.95}, {"top_p": 0.9},
    {"method": "confidence"}, {"method": "confidence", "temperature": 0.9},
    {"block_size": 16}, {"method": "confidence", "block_size": 16},
)


def compare_samplers(diffusion: TextGenerator, ar: TextGenerator, steps: int, reference: Tensor, *,
                     settings: Sequence[dict[str, Any]] = SAMPLER_SETTINGS, n: int = 64,
                     seed: int = 0) -> list[dict[str, Any]]:
    """``sample_quality``'s figures for several diffusion sampler ``settings`` (keyword dicts: method,
    temperature, top_k, top_p, block_size) at ``steps``, each from the same seed, then the AR twin's own
    samples (temperature 1) and the ``reference`` real windows (N, L) as the targets; all of the
    reference's length."""
    length = reference.shape[1]
    rows = [_quality_row(ar, f"diffusion ({sampler_name(**kw)})", steps,
                         *timed_fill(diffusion, n, length, steps, seed, **kw)) for kw in settings]
    rows.append(_quality_row(ar, "AR twin (KV cache)", length, *timed_fill(ar, n, length, None, seed)))
    rows[-1]["nfe"] = length
    rows.append({"sampler": "real text", **reference_quality(ar.net, reference, ar.tokenizer)})
    return rows


def evaluate_pair(diffusion: TextGenerator, ar: TextGenerator, data: str | None, *, split: str = "test",
                  batch_size: int = 16, max_windows: int | None = None, n_t: int = 4, seed: int = 0,
                  t_min: float = 1e-3, samples: int = 0, steps_list: Sequence[int] = (),
                  sampler: dict[str, Any] | None = None, compare: bool = False) -> dict[str, Any]:
    """The evaluation of a masked diffusion model against its AR twin on ``split`` of the token set ``data``
    (a folder of .bin arrays; None: the built-in set): ``{"perplexity": compare_perplexity(...)}`` per token
    and per character, with the unigram floor, and, with ``samples`` > 0, ``"samples"``: ``sample_quality``
    rows at ``steps_list`` (diffusion sampler keywords ``sampler``) plus the real text's row; with
    ``compare`` also ``"samplers"``: ``compare_samplers`` rows at the first of ``steps_list``."""
    from diffcore.data import dataset_dir

    from .data.loaders import open_tokens
    from .data.windows import ContiguousWindows, check_tokens

    if diffusion.kind != "diffusion" or ar.kind != "ar":
        raise ValueError(f"got a {diffusion.kind!r} and an {ar.kind!r} model: pass the masked diffusion model first "
                         "and its autoregressive twin second (on the command line: --model and --ar)")
    if diffusion.net.vocab_size != ar.net.vocab_size:
        raise ValueError(f"the diffusion model has {diffusion.net.vocab_size} tokens and the AR twin "
                         f"{ar.net.vocab_size}: a twin shares the tokenizer")
    root = data if data is not None else dataset_dir("text", "small")
    seq_len, vocab = diffusion.net.max_len, diffusion.net.vocab_size
    tokens = open_tokens(root, split)
    check_tokens(tokens, seq_len, vocab, f"{root}/{split}.bin")
    dataset = ContiguousWindows(tokens, seq_len, max_windows)
    windows = [torch.stack([dataset[i] for i in range(a, min(a + batch_size, len(dataset)))])
               for a in range(0, len(dataset), batch_size)]
    unigram = unigram_nll(open_tokens(root, "train"), windows, vocab)
    out: dict[str, Any] = {"perplexity": compare_perplexity(
        diffusion.net, ar.net, windows, diffusion.schedule, n_t=n_t, seed=seed, t_min=t_min,
        characters=window_characters(diffusion.tokenizer, windows), unigram=unigram)}
    if samples:
        reference = torch.cat(windows)[:samples]
        rows = sample_quality(diffusion, ar, steps_list, n=samples, seed=seed, **(sampler or {}))
        rows.append({"sampler": "real text", **reference_quality(ar.net, reference, ar.tokenizer)})
        out["samples"] = rows
        if compare:
            out["samplers"] = compare_samplers(diffusion, ar, steps_list[0], reference, n=samples, seed=seed)
    return out


def perplexity_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """``compare_perplexity``'s result as table rows: model, nats/token, ppl/token and the per-character figures."""
    names = {"ar": "AR twin (exact, ceiling)", "diffusion": "masked diffusion (bound)", "unigram": "unigram (floor)"}
    rows = []
    for key in ("ar", "diffusion", "unigram"):
        if key in res:
            r = res[key]
            rows.append({"model": names[key], "nats/token": r["nll"], "ppl/token": r["ppl"],
                         "nats/char": r.get("nats_per_char"), "bits/char": r.get("bits_per_char"),
                         "ppl/char": r.get("ppl_per_char")})
    return rows


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of dict rows (floats with 4 significant digits)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)

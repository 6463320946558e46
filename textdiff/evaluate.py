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

import torch
from torch import Tensor

from diffcore.discrete import LogLinearMasking, MaskingSchedule, masked_nelbo

from .inference import TextGenerator, prompt_canvas
from .model import TransformerNet
from .module import ar_nll


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def diffusion_bound(net: TransformerNet, windows: Iterable[Tensor], schedule: MaskingSchedule | None = None, *,
                    n_t: int = 4, seed: int = 0) -> dict[str, float]:
    """NELBO of a masked diffusion net on batches of windows (B, L): nats/token, perplexity bound, SE.

    Each batch is evaluated ``n_t`` times with stratified t (one t per window), from a generator
    seeded with ``seed``, so the figure is reproducible.
    """
    if n_t < 1:
        raise ValueError("n_t must be >= 1")
    schedule = schedule or LogLinearMasking()
    device = next(net.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    use_t = net.time_conditioning
    fn = lambda z, t: net(z, t if use_t else None)  # noqa: E731
    totals = torch.zeros(n_t, dtype=torch.float64)
    n_tokens = 0
    for x in windows:
        x = x.to(device).long()
        for k in range(n_t):
            per_window = masked_nelbo(fn, x, schedule, net.mask_id, generator=g, reduce=False)
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


def compare_perplexity(diffusion: TransformerNet, ar: TransformerNet, windows: Sequence[Tensor],
                       schedule: MaskingSchedule | None = None, *, n_t: int = 4, seed: int = 0) -> dict[str, Any]:
    """The diffusion bound and the AR perplexity on the same windows, and the gap between them in %."""
    bound = diffusion_bound(diffusion, windows, schedule, n_t=n_t, seed=seed)
    exact = ar_perplexity(ar, windows)
    return {"diffusion": bound, "ar": exact, "gap_percent": 100.0 * (bound["ppl"] / exact["ppl"] - 1.0)}


@torch.no_grad()
def generative_perplexity(scorer: TransformerNet, samples: Tensor, batch_size: int = 16) -> float:
    """exp(mean NLL per token) of full samples (N, L) under a causal scorer net (the AR twin)."""
    device = next(scorer.parameters()).device
    total = 0.0
    for chunk in samples.split(batch_size):
        total += float(ar_nll(scorer, chunk.to(device).long(), scorer.mask_id, reduce=False).double().sum())
    return math.exp(total / samples.shape[0])


def unigram_entropy(samples: Tensor) -> float:
    """Mean over samples (N, L) of the entropy (nats) of each sample's token frequencies."""
    out = []
    for row in samples.long().cpu():
        p = torch.bincount(row).double()
        p = p[p > 0] / row.numel()
        out.append(float(-(p * p.log()).sum()))
    return sum(out) / len(out)


def reference_quality(scorer: TransformerNet, windows: Tensor) -> dict[str, float]:
    """Generative perplexity and unigram entropy of real text windows (N, L): what samples should match."""
    return {"gen_ppl": generative_perplexity(scorer, windows), "entropy": unigram_entropy(windows)}


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

    Each row: sampler, steps, gen_ppl (scored by the AR twin), entropy, nfe (network calls),
    seconds and tokens_per_s (n * length / seconds). Extra keyword arguments (method, block_size,
    temperature, top_k, top_p) go to the diffusion sampler.
    """
    length = length or diffusion.net.max_len
    rows = []
    for steps in steps_list:
        tokens, secs, nfe = timed_fill(diffusion, n, length, steps, seed, **kw)
        rows.append({"sampler": f"diffusion ({kw.get('method', 'ancestral')})", "steps": steps,
                     "gen_ppl": generative_perplexity(ar.net, tokens), "entropy": unigram_entropy(tokens),
                     "nfe": nfe, "seconds": secs, "tokens_per_s": n * length / secs})
    tokens, secs, _ = timed_fill(ar, n, length, None, seed)
    rows.append({"sampler": "AR twin (KV cache)", "steps": length, "gen_ppl": generative_perplexity(ar.net, tokens),
                 "entropy": unigram_entropy(tokens), "nfe": length, "seconds": secs,
                 "tokens_per_s": n * length / secs})
    return rows


def evaluate_pair(diffusion: TextGenerator, ar: TextGenerator, data: str | None, *, split: str = "test",
                  batch_size: int = 16, max_windows: int | None = None, n_t: int = 4, seed: int = 0,
                  samples: int = 0, steps_list: Sequence[int] = ()) -> dict[str, Any]:
    """The evaluation of a masked diffusion model against its AR twin on ``split`` of the token set ``data``
    (a folder of .bin arrays; None: the built-in set): ``{"perplexity": compare_perplexity(...)}`` and, with
    ``samples`` > 0, ``"samples"``: ``sample_quality`` rows at ``steps_list`` plus the real text's row."""
    from .module import TokenDataModule

    if diffusion.kind != "diffusion" or ar.kind != "ar":
        raise ValueError(f"got a {diffusion.kind!r} and an {ar.kind!r} model: pass the masked diffusion model first "
                         "and its autoregressive twin second (on the command line: --model and --ar)")
    dm = TokenDataModule(data, seq_len=diffusion.net.max_len, batch_size=batch_size, max_eval_windows=max_windows,
                         vocab_size=diffusion.net.vocab_size)
    windows = list(dm._loader(dm.eval_dataset(split), batch_size))
    out: dict[str, Any] = {"perplexity": compare_perplexity(diffusion.net, ar.net, windows, diffusion.schedule,
                                                            n_t=n_t, seed=seed)}
    if samples:
        rows = sample_quality(diffusion, ar, steps_list, n=samples, seed=seed)
        rows.append({"sampler": "real text", **reference_quality(ar.net, torch.cat(windows)[:samples])})
        out["samples"] = rows
    return out


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

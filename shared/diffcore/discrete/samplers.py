"""Reverse samplers for masked diffusion: ancestral (MDLM) and confidence-ordered (LLaDA).

Both walk a decreasing time grid t_0 > ... > t_N = 0 (``diffcore.timesteps``) and only ever turn
mask tokens into data tokens; tokens present in the starting sequence (a prompt, the known context
of an infilling task) are never changed.

Ancestral (MDLM, Sahoo et al. 2024, with SUBS): for a step t -> s < t the reverse posterior
of a still-masked token is

    q(z_s | z_t = mask, x0) = (alpha_s - alpha_t) / (1 - alpha_t) * onehot(x0)
                              + (1 - alpha_s) / (1 - alpha_t) * onehot(mask),

so each mask is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t), taking a token drawn
from the model's x0 distribution; the last step (s = 0, alpha = 1) fills every remaining mask.
With the exact denoiser of a factorised distribution this samples it exactly for any number of
steps; for dependent data, revealing several tokens in one step from independent per-position
predictions is the approximation that more steps reduce.

Confidence (LLaDA, Nie et al. 2025, "low-confidence remasking"): the expected number of tokens
is revealed per step, but deterministically (rounded), choosing the masked
positions whose sampled token has the highest model probability. This is a heuristic: it favours
confident tokens, so unlike ancestral sampling it is biased towards the modes of each position
(it is exact only when one step reveals everything).

Caching (MDLM's efficient sampler): a network that is not conditioned on t gives the same logits
for the same z_t, so when a step reveals nothing the previous logits are reused; that changes
the number of network evaluations, never the samples. The reuse is per row: a step passes through
the network only the sequences that changed since their last evaluation and still have masks to
fill, and steps where no row needs it make no network call at all.

Semi-autoregressive decoding (MDLM's strides, LLaDA's blocks): ``sample_masked_blocks`` fills the
sequence block by block from left to right, each block with its share of the steps, while masks in
later blocks stay masked (the network sees them as not yet generated); ``sample_masked(region=...)``
is the building block that restricts filling to some positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..timesteps import as_grid
from .process import check_mask_id, subs_log_probs
from .schedules import MaskingSchedule

LogitsFn = Callable[[Tensor, Tensor], Tensor]
Method = Literal["ancestral", "confidence"]

_CHUNK_ELEMENTS = 1 << 24  # rows per Gumbel draw are capped so that rows * V <= this (128 MiB f64)


@dataclass
class SamplingStats:
    """What a call to ``sample_masked(..., return_stats=True)`` cost.

    nfe: network (``logits_fn``) calls; steps: steps of the grid that were walked; row_evals:
    sequences passed through the network in all calls (a call may carry only the rows that need it).
    """

    nfe: int
    steps: int
    row_evals: int = 0


def filter_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Apply temperature, then top-k, then nucleus (top-p) filtering to logits (..., V).

    Removed tokens get -inf. top-p keeps the smallest set of most probable tokens whose total
    probability reaches top_p (Holtzman et al. 2020), always at least one. ``temperature`` must be
    positive here; the samplers treat temperature 0 as greedy (argmax) themselves.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive here, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    out = logits / temperature if temperature != 1 else logits
    if top_k is not None and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, -torch.inf)
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.to(torch.float64), dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of strictly better tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, -torch.inf)
    return out


def sample_categorical(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of Cat(softmax(logits)) by the Gumbel-max trick, in float64.

    argmax(logits + G) with G = -log(-log U) is an exact categorical sample. Float64 matters: in
    float32 the Gumbel noise's tail is truncated, which acts like a lower temperature and reduces
    sample diversity (Zheng et al. 2024, arXiv:2409.02908; LLaDA samples in float64 for this
    reason). Rows are processed in chunks to bound memory for large vocabularies.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    rows = max(1, _CHUNK_ELEMENTS // max(1, flat.shape[-1]))
    out = []
    for chunk in flat.split(rows):
        u = torch.rand(chunk.shape, generator=generator, dtype=torch.float64, device=chunk.device)
        gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float64).tiny)))
        out.append(torch.argmax(chunk.to(torch.float64) + gumbel, dim=-1))
    if not out:
        return torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return torch.cat(out).reshape(logits.shape[:-1])


def draw_tokens(logp: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """One token per row of logits or log-probs (..., V) with the decoding controls applied
    (``filter_logits``); temperature 0 is greedy (argmax), otherwise a float64 Gumbel-max draw."""
    if temperature == 0:
        return torch.argmax(filter_logits(logp, top_k=top_k, top_p=top_p), dim=-1)
    return sample_categorical(filter_logits(logp, temperature=temperature, top_k=top_k, top_p=top_p),
                              generator)


def sample_masked(logits_fn: LogitsFn, z_T: Tensor, ts: int | Tensor | Sequence[float],
                  schedule: MaskingSchedule, mask_id: int, *, generator: torch.Generator | None = None,
                  callback: Callable[[dict[str, Any]], None] | None = None, method: Method = "ancestral",
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  cache: bool = True, time_conditioned: bool = False, region: Tensor | None = None,
                  return_stats: bool = False) -> Tensor | tuple[Tensor, SamplingStats]:
    """Fill the masks of ``z_T`` by walking the grid ``ts`` backwards with a masked-diffusion model.

    Args:
        logits_fn: ``logits_fn(z_t, t) -> logits`` with tokens (B, L), float32 times (B,) and
            logits (B, L, V); only the masked positions' logits are used (SUBS is applied here).
        z_T: the start (B, L): mask_id everywhere to generate unconditionally, or holding known
            tokens (prompt, infilling context) that are kept unchanged. No masks: returned as is.
        ts: a decreasing grid ending at 0 from ``diffcore.timesteps``, or a step count (uniform).
        method: "ancestral" (exact reverse process) or "confidence" (LLaDA low-confidence remasking).
        temperature, top_k, top_p: applied to the x0 logits before sampling (``filter_logits``);
            temperature 0 means greedy (argmax).
        cache: reuse a row's last logits while that row is unchanged (only if ``time_conditioned`` is
            False: the network must not depend on t). Rows are independent: ``logits_fn`` may be
            called with a subset of the rows (and times) of z_T.
        region: optional bool (B, L) or (L,): only masks inside it are filled; masks outside stay
            masked (still visible to the network as masks). None fills every mask.
        callback: called after every step with a dict: i (step index), t, s (the step's start and
            end time), z (tokens after the step; not modified later), n_masked (remaining masks),
            nfe (network evaluations so far).
        return_stats: also return a ``SamplingStats`` (network evaluations, steps).
    Returns:
        The sampled tokens (B, L), or ``(tokens, SamplingStats)`` with ``return_stats``.
    """
    check_mask_id(mask_id)
    if method not in ("ancestral", "confidence"):
        raise ValueError(f"unknown method {method!r}; choose ancestral or confidence")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if z_T.ndim != 2:
        raise ValueError(f"z_T must be (batch, length) tokens, got shape {tuple(z_T.shape)}")
    grid = as_grid(ts)
    alphas = schedule.alpha(grid).tolist()
    z = z_T.clone()
    if region is not None:
        region = region.to(device=z.device, dtype=torch.bool).expand_as(z)
    n_start = _fillable(z, mask_id, region).sum(1)  # per-row masks at the start (confidence's count budget)
    net = _RowCache(logits_fn, z.shape[0], mask_id, reuse=cache and not time_conditioned)

    for i in range(len(grid) - 1):
        t, s = float(grid[i]), float(grid[i + 1])
        masked = _fillable(z, mask_id, region)
        if bool(masked.any()):
            logp = net.log_probs(z, masked.any(1), t)
            # Reveal probability (alpha_s - alpha_t) / (1 - alpha_t); exactly 1 on the last step.
            last = i == len(grid) - 2
            p = 1.0 if last else (alphas[i + 1] - alphas[i]) / max(1.0 - alphas[i], 1e-300)
            if method == "ancestral":
                u = torch.rand(z.shape, generator=generator, dtype=torch.float64, device=z.device)
                reveal = masked & (u < p)
                z_new = z.clone()
                z_new[reveal] = draw_tokens(logp[reveal], temperature, top_k, top_p, generator).to(z.dtype)
            else:
                z_new = _confidence_step(z, masked, logp, n_start, alphas, i, last, mask_id, temperature,
                                         top_k, top_p, generator)
            net.changed((z_new != z).any(1))
            z = z_new
        if callback is not None:
            callback({"i": i, "t": t, "s": s, "z": z, "n_masked": int((z == mask_id).sum()), "nfe": net.nfe})

    stats = SamplingStats(nfe=net.nfe, steps=len(grid) - 1, row_evals=net.row_evals)
    return (z, stats) if return_stats else z


class _RowCache:
    """The SUBS log-probs (B, L, V) of each row's last network call, recomputed only for the rows that
    have changed since (when ``reuse``: MDLM's caching, valid when the net does not see t); counts the
    network evaluations."""

    def __init__(self, logits_fn: LogitsFn, batch: int, mask_id: int, reuse: bool):
        self.logits_fn, self.batch, self.mask_id, self.reuse = logits_fn, batch, mask_id, reuse
        self.logp: Tensor | None = None
        self.stale: Tensor | None = None  # rows changed since their last network call
        self.nfe = self.row_evals = 0

    def log_probs(self, z: Tensor, busy: Tensor, t: float) -> Tensor:
        """Log-probs for every row of ``z``, fresh for the ``busy`` rows that need them."""
        if self.stale is None:
            self.stale = torch.ones(self.batch, dtype=torch.bool, device=z.device)
        need = busy & self.stale if (self.reuse and self.logp is not None) else busy
        if bool(need.any()):
            rows = None if bool(need.all()) else need.nonzero().squeeze(1)
            z_in = z if rows is None else z[rows]
            logits = self.logits_fn(z_in, torch.full((z_in.shape[0],), t, dtype=torch.float32, device=z.device))
            self.nfe, self.row_evals = self.nfe + 1, self.row_evals + z_in.shape[0]
            if logits.shape[:2] != z_in.shape:
                raise ValueError(f"logits_fn returned {tuple(logits.shape)} for tokens {tuple(z_in.shape)}")
            check_mask_id(self.mask_id, logits.shape[-1])
            if self.nfe == 1 and bool(((z_in < 0) | (z_in >= logits.shape[-1])).any()):
                raise ValueError(f"z_T holds tokens outside the vocabulary of size {logits.shape[-1]}")
            new = subs_log_probs(logits, z_in, self.mask_id)
            if rows is None:
                self.logp = new
            else:
                if self.logp is None:
                    self.logp = new.new_zeros((self.batch, *new.shape[1:]))
                self.logp[rows] = new
            self.stale = self.stale & ~need
        assert self.logp is not None
        return self.logp

    def changed(self, rows: Tensor) -> None:
        """Mark the rows whose tokens changed in the last step."""
        if self.stale is not None:
            self.stale = self.stale | rows


def _fillable(z: Tensor, mask_id: int, region: Tensor | None) -> Tensor:
    """Masks that the current call may fill (B, L)."""
    masked = z == mask_id
    return masked if region is None else masked & region


def sample_masked_blocks(logits_fn: LogitsFn, z_T: Tensor, steps: int, schedule: MaskingSchedule, mask_id: int,
                         *, block_size: int, callback: Callable[[dict[str, Any]], None] | None = None,
                         return_stats: bool = False, **kwargs: Any) -> Tensor | tuple[Tensor, SamplingStats]:
    """Semi-autoregressive decoding: fill ``z_T`` block by block, left to right (LLaDA; MDLM's strides).

    The positions are cut into consecutive blocks of ``block_size``; blocks holding no mask (a
    prompt, say) are skipped and the ``steps`` are shared as evenly as possible among the others
    (earlier blocks get the remainder). Each block is filled by ``sample_masked`` on a uniform grid
    with ``region`` set to the block, so later blocks are still masks while it is decoded; earlier
    blocks are then context. Other keyword arguments (method, temperature, top_k, top_p, cache,
    generator, ...) are passed to ``sample_masked``; the callback's dict gains ``block``.

    Args:
        steps: total number of steps over all blocks, at least the number of blocks to fill.
        block_size: positions per block (the last block may be shorter).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if z_T.ndim != 2:
        raise ValueError(f"z_T must be (batch, length) tokens, got shape {tuple(z_T.shape)}")
    length = z_T.shape[1]
    starts = [a for a in range(0, length, block_size) if bool((z_T[:, a:a + block_size] == mask_id).any())]
    if steps < max(1, len(starts)):
        raise ValueError(f"{steps} steps cannot fill {len(starts)} blocks of {block_size} tokens; give at least "
                         f"{len(starts)} steps (one per block)")
    z, nfe, row_evals = z_T.clone(), 0, 0
    for j, a in enumerate(starts):
        n_steps = steps // len(starts) + (1 if j < steps % len(starts) else 0)
        region = torch.zeros(length, dtype=torch.bool, device=z.device)
        region[a:a + block_size] = True
        cb = None if callback is None else (lambda info, j=j: callback({**info, "block": j}))
        z, st = sample_masked(logits_fn, z, n_steps, schedule, mask_id, region=region, callback=cb,
                              return_stats=True, **kwargs)
        nfe, row_evals = nfe + st.nfe, row_evals + st.row_evals
    stats = SamplingStats(nfe=nfe, steps=steps if starts else 0, row_evals=row_evals)
    return (z, stats) if return_stats else z


def _confidence_step(z: Tensor, masked: Tensor, logp: Tensor, n_start: Tensor, alphas: list[float], i: int,
                     last: bool, mask_id: int, temperature: float, top_k: int | None, top_p: float | None,
                     generator: torch.Generator | None) -> Tensor:
    """One LLaDA step: sample every mask, keep the k most confident, leave the rest masked.

    k follows the expected schedule cumulatively: after the step, round(n_start * (1 - alpha_s) /
    (1 - alpha_{t_0})) masks remain, which is n_masked * (alpha_s - alpha_t) / (1 - alpha_t)
    revealed per step without the rounding drift of per-step counts (a step count near L then
    reveals about one token per step, as LLaDA does); none remain after the last step.
    """
    n_masked = masked.sum(1)
    if last:
        remain = torch.zeros_like(n_masked)
    else:
        frac = (1 - alphas[i + 1]) / max(1 - alphas[0], 1e-300)
        remain = torch.floor(n_start.to(torch.float64) * frac + 0.5).long()
    k = (n_masked - remain).clamp(min=0)
    tokens = torch.full_like(z, mask_id)
    tokens[masked] = draw_tokens(logp[masked], temperature, top_k, top_p, generator).to(z.dtype)
    # Confidence: the model's (SUBS) probability of the sampled token, as in LLaDA.
    conf = logp.gather(-1, tokens.clamp(0, logp.shape[-1] - 1).long().unsqueeze(-1)).squeeze(-1)
    conf = torch.where(masked, conf.to(torch.float64), torch.full_like(conf, -torch.inf, dtype=torch.float64))
    order = torch.argsort(conf, dim=1, descending=True, stable=True)
    positions = torch.arange(z.shape[1], device=z.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # rank[b, l]: place of l by confidence
    reveal = masked & (rank < k.unsqueeze(1))
    return torch.where(reveal, tokens, z)

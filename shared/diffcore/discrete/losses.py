"""The continuous-time NELBO of masked diffusion (MDLM, Sahoo et al. 2024; MD4, Shi et al. 2024).

For the absorbing process with keep probability alpha_t and the SUBS parameterisation,

    -log p(x0) <= E_{t ~ U(0,1)} E_{z_t ~ q(.|x0)} [ w(t) sum_{l: z_t^l = mask} -log p_theta(x0^l | z_t) ],

with w(t) = -alpha'(t) / (1 - alpha(t)). A position is masked with probability 1 - alpha_t, so
for a denoiser that is exact on a factorised distribution the bound integrates to
(alpha_0 - alpha_1) * sum_l H(x0^l): the data entropy, up to the eps floor of the schedule.

Block diffusion (BD3-LM, Arriola et al. 2025) cuts the sequence into blocks, each with its own time:
-log p(x0) = sum_b -log p(x0^b | x0^{<b}) <= sum_b NELBO_b, each term a masked-diffusion bound of one
block given the clean blocks before it. ``masked_nelbo`` takes one time per position for this
(``block_times``: constant within a block), and the network is what sees only earlier blocks clean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..losses import TimeSampling, sample_t
from .process import check_mask_id, mask_tokens, masked_position_log_probs, subs_log_probs
from .schedules import MaskingSchedule

LogitsFn = Callable[[Tensor, Tensor], Tensor]
"""``logits_fn(z_t, t) -> logits``: tokens (B, L) and float32 times (B,) to logits (B, L, V)."""


def masked_nelbo(logits_fn: LogitsFn, x0: Tensor, schedule: MaskingSchedule, mask_id: int, *,
                 t: Tensor | None = None, time_sampling: TimeSampling = "stratified",
                 generator: torch.Generator | None = None, loss_mask: Tensor | None = None,
                 fixed: Tensor | None = None, reduce: bool = True,
                 logits_at: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """One-sample Monte-Carlo estimate of the masked-diffusion NELBO, in nats per token.

    Draws t (``diffcore.losses.sample_t``, t in [1e-5, 1]) and z_t ~ q(z_t | x0), evaluates
    ``logits_fn(z_t, t)``, applies SUBS and weights the masked positions' cross-entropy by w(t).
    The sum over positions is divided by the number of loss positions, so the value bounds the
    per-token negative log-likelihood of the loss positions given the fixed ones.

    Args:
        x0: clean tokens (B, L); must not contain ``mask_id`` at loss positions.
        t: times (B,) in (0, 1], or one time per position (B, L) (block diffusion: ``block_times``; the
            network then gets the (B, L) times); sampled with ``time_sampling`` if None.
        loss_mask: optional bool (B, L), False at padding; those positions get no loss and do not
            count as tokens (they may still be masked and seen by the network).
        fixed: optional bool (B, L) of positions never masked and not counted (a prompt, as in
            LLaDA's supervised fine-tuning); the bound is then on the rest given them.
        reduce: if True, the token-weighted mean over the batch (total weighted NLL / total loss
            positions, MDLM's convention); otherwise the per-example per-token values (B,).
        logits_at: optional ``logits_at(z_t, t, positions)`` returning logits (N, V) for only the
            positions where ``positions`` (bool (B, L)) is True, in row-major order. Used instead of
            ``logits_fn`` when given: the same value, but the network's output layer and the softmax
            run only at the masked loss positions (under SUBS every other position contributes 0).
    """
    check_mask_id(mask_id)
    if x0.ndim != 2:
        raise ValueError(f"x0 must be (batch, length) tokens, got shape {tuple(x0.shape)}")
    b = x0.shape[0]
    if t is None:
        t = sample_t(b, time_sampling, generator=generator, device=x0.device)
    if t.shape not in ((b,), tuple(x0.shape)):
        raise ValueError(f"t must have shape ({b},) or {tuple(x0.shape)} (one time per position), got {tuple(t.shape)}")
    t64 = t.to(torch.float64)
    alpha, _ = schedule(t64)
    # w(t) per position (B, L): a per-window time is broadcast along the window
    weight = schedule.weight(t64 if t.ndim == 2 else t64[:, None]).expand(x0.shape)
    z_t = mask_tokens(x0, alpha, mask_id, generator=generator, fixed=fixed)

    counted = torch.ones_like(x0, dtype=torch.bool)
    if loss_mask is not None:
        counted = counted & loss_mask.to(torch.bool)
    if fixed is not None:
        counted = counted & ~fixed.to(torch.bool)
    if bool(((x0 == mask_id) & counted).any()):
        raise ValueError("x0 contains mask_id at a loss position")

    active = (z_t == mask_id) & counted  # unmasked positions have nll = 0 under SUBS anyway
    if logits_at is None:
        logp = subs_log_probs(logits_fn(z_t, t.to(torch.float32)), z_t, mask_id)
        nll = -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # (B, L)
        weighted = torch.where(active, weight.to(nll.dtype) * nll, torch.zeros_like(nll)).sum(1)
    else:
        logits = logits_at(z_t, t.to(torch.float32), active)
        n_active = int(active.sum())
        if logits.ndim != 2 or logits.shape[0] != n_active:
            raise ValueError(f"logits_at returned shape {tuple(logits.shape)}; expected ({n_active}, vocab): "
                             "one row per selected position")
        logp = masked_position_log_probs(logits, mask_id)
        nll_active = -logp.gather(-1, x0[active].unsqueeze(-1)).squeeze(-1)
        rows = active.nonzero()[:, 0]
        weighted = torch.zeros(b, dtype=logp.dtype, device=x0.device).index_add(
            0, rows, weight[active].to(logp.dtype) * nll_active)
    n_tokens = counted.sum(1).to(weighted.dtype)
    if reduce:
        return weighted.sum() / n_tokens.sum().clamp(min=1)
    return weighted / n_tokens.clamp(min=1)


def block_times(batch: int, length: int, block_size: int, method: TimeSampling = "stratified", *,
                t_min: float = 1e-3, t_max: float = 1.0, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """One time per block, repeated over the block's positions: (B, L) float32, for block diffusion's NELBO.

    The B * n_blocks times are drawn together with ``diffcore.losses.sample_t`` (stratified: they cover
    [t_min, t_max] evenly across the batch's blocks); the last block may be shorter than ``block_size``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n_blocks = -(-length // block_size)
    t = sample_t(batch * n_blocks, method, t_min=t_min, t_max=t_max, generator=generator, device=device)
    t = t.view(batch, n_blocks)
    return t.repeat_interleave(block_size, dim=1)[:, :length]

"""The absorbing-state forward process and MDLM's SUBS parameterisation.

Forward process (Austin et al. 2021, D3PM "absorbing"; MDLM): each token of x0 independently
stays itself with probability alpha_t and becomes the mask token otherwise,

    q(z_t | x0) = prod_l Cat(z_t^l; alpha_t * onehot(x0^l) + (1 - alpha_t) * onehot(mask)).

Once masked a token stays masked, so the reverse process only ever has to fill masks in.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_mask_id(mask_id: int, vocab_size: int | None = None) -> None:
    """Raise ValueError unless ``mask_id`` is an integer in [0, vocab_size)."""
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
        raise ValueError(f"mask_id must be a non-negative integer, got {mask_id!r}")
    if vocab_size is not None and mask_id >= vocab_size:
        raise ValueError(f"mask_id {mask_id} is outside the vocabulary of size {vocab_size}")


def _per_row(v: Tensor | float, x: Tensor) -> Tensor:
    """A keep probability given as a scalar, (B,) or broadcastable to x, as float64 against x."""
    v = torch.as_tensor(v, dtype=torch.float64, device=x.device)
    if 0 < v.ndim < x.ndim:
        v = v.reshape(v.shape + (1,) * (x.ndim - v.ndim))
    return v


def mask_tokens(x0: Tensor, alpha_t: Tensor | float, mask_id: int, generator: torch.Generator | None = None,
                fixed: Tensor | None = None) -> Tensor:
    """Sample z_t ~ q(z_t | x0): keep each token with probability alpha_t, else replace it by mask_id.

    Args:
        x0: integer tokens (B, L, ...). alpha_t: keep probability, a scalar, (B,) or broadcastable.
        fixed: optional bool tensor broadcastable to x0; True positions (e.g. a prompt) are never
            masked.
    Returns:
        z_t, same shape and dtype as x0.
    """
    check_mask_id(mask_id)
    u = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
    keep = u < _per_row(alpha_t, x0)
    if fixed is not None:
        keep = keep | fixed.to(device=x0.device, dtype=torch.bool)
    return torch.where(keep, x0, torch.full_like(x0, mask_id))


def masked_position_log_probs(logits: Tensor, mask_id: int) -> Tensor:
    """SUBS at masked positions (its rule 1 alone): log-softmax of ``logits`` (..., V) with the mask token's
    logit set to -inf, in float32 (or float64 if given float64)."""
    vocab = logits.shape[-1]
    check_mask_id(mask_id, vocab)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    is_mask_col = torch.arange(vocab, device=logits.device) == mask_id
    return torch.log_softmax(logits.masked_fill(is_mask_col, -torch.inf), dim=-1)


def subs_log_probs(logits: Tensor, z_t: Tensor, mask_id: int) -> Tensor:
    """MDLM's SUBS parameterisation (Sahoo et al. 2024) of the x0 distribution.

    1. Zero masking probabilities: the clean data never contains the mask token, so its logit is
       set to -inf before the softmax.
    2. Carry-over unmasking: an unmasked token of z_t is already the clean token, so the
       distribution at that position is a point mass on it (log prob 0 there, -inf elsewhere).

    Args:
        logits: network output (B, L, V); computed in float32 (or float64 if given float64).
        z_t: tokens (B, L) with mask_id at masked positions.
    Returns:
        log p_theta(x0 | z_t) of shape (B, L, V).
    """
    vocab = logits.shape[-1]
    logp = masked_position_log_probs(logits, mask_id)
    unmasked = (z_t != mask_id).unsqueeze(-1)
    copy = torch.full_like(logp, -torch.inf).scatter_(-1, z_t.clamp(0, vocab - 1).unsqueeze(-1), 0.0)
    return torch.where(unmasked, copy, logp)

"""Masked (absorbing-state) discrete diffusion for tokens: MDLM / MD4 / LLaDA primitives.

Shares the time convention (t in [0, 1], 0 = data), the grids of ``diffcore.timesteps`` and the
training-time sampler ``diffcore.losses.sample_t`` with the Gaussian core; alpha_t here is the
probability that a token is still unmasked at time t.

    schedule = LogLinearMasking()
    loss = masked_nelbo(model, x0, schedule, mask_id)             # model(z_t, t) -> (B, L, V)
    z = sample_masked(model, torch.full((B, L), mask_id), 128, schedule, mask_id)
"""

from .losses import block_times, masked_nelbo
from .process import check_mask_id, mask_tokens, subs_log_probs
from .samplers import SamplingStats, draw_tokens, filter_logits, sample_categorical, sample_masked, sample_masked_blocks
from .schedules import (
    CosineMasking,
    LinearMasking,
    LinearNoiseMasking,
    LogLinearMasking,
    MaskingSchedule,
    PolynomialMasking,
    masking_from_config,
)
from .testing import factorized_entropy, factorized_logits_fn, sample_factorized

__all__ = [
    "draw_tokens",
    "sample_masked_blocks",
    "MaskingSchedule", "LogLinearMasking", "LinearMasking", "CosineMasking", "PolynomialMasking",
    "LinearNoiseMasking", "masking_from_config",
    "mask_tokens", "subs_log_probs", "check_mask_id",
    "masked_nelbo", "block_times",
    "sample_masked", "SamplingStats", "filter_logits", "sample_categorical",
    "factorized_logits_fn", "factorized_entropy", "sample_factorized",
]

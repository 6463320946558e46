"""LightningModules for the masked diffusion LM and its autoregressive twin.

Both are ``diffcore.lightning.DiffusionModule``s (AdamW with warmup/decay, EMA weights used for
validation and export, the non-finite loss guard) around the same ``TransformerNet``; they differ
only in ``compute_loss`` and in the net's attention mask, so trained on the same windows with the
same recipe they see the same tokens and are compared like for like (the diffusion net runs its output
layer only at masked positions, so its step costs less).

- ``MaskedDiffusionModule``: the continuous-time NELBO of MDLM (``diffcore.discrete.masked_nelbo``:
  masked-token cross-entropy weighted by -alpha'_t / (1 - alpha_t), SUBS parameterisation,
  stratified t). Its value in nats per token bounds the negative log-likelihood.
- ``ARModule``: next-token cross-entropy. The window x_1..x_L is predicted from [BOS, x_1..x_{L-1}]
  (BOS = the extra id V), so the loss is the exact negative log-likelihood of the same L tokens the
  diffusion bound covers, with the same (no) context before the window.

Validation and test draw the diffusion model's t and masks from a generator seeded by the batch
index, so ``val/loss`` is a fixed-noise estimate comparable between evaluations.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffcore.discrete import LogLinearMasking, MaskingSchedule, masked_nelbo
from diffcore.lightning import DiffusionModule
from diffcore.lightning.base import LRDecay
from diffcore.losses import TimeSampling
from diffcore.pretrained import class_path

from .model import TransformerNet

CHECKPOINT_KEY = "textdiff"
"""Checkpoint entry holding what ``textdiff export`` needs to rebuild the net without the recipe."""


def batch_tokens(batch: Any) -> Tensor:
    """The (B, L) token tensor of a batch: the tensor itself, the first item of a tuple, or ``["tokens"]``."""
    if isinstance(batch, dict):
        batch = batch["tokens"]
    elif isinstance(batch, (list, tuple)):
        batch = batch[0]
    if not isinstance(batch, Tensor) or batch.ndim != 2:
        raise ValueError("a batch must be int64 tokens (B, L), a tuple starting with them, or {'tokens': ...}")
    return batch.long()


class TextModule(DiffusionModule):
    """What the two text systems share: the net, optional ``torch.compile``, export metadata."""

    kind = "text"

    def __init__(self, net: TransformerNet, *, compile: bool = False, lr: float = 3e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 2500, lr_decay: LRDecay = "constant",
                 max_steps: int | None = None, ema_decay: float | None = 0.9999, ema_warmup: bool = True):
        super().__init__(net, lr=lr, weight_decay=weight_decay, betas=betas, warmup_steps=warmup_steps,
                         lr_decay=lr_decay, max_steps=max_steps, ema_decay=ema_decay, ema_warmup=ema_warmup)
        self.compile = compile
        self._compiled: list[torch.nn.Module] = []  # a list keeps the compiled wrapper out of state_dict

    @property
    def run_net(self) -> torch.nn.Module:
        """The net to call in training: ``torch.compile``d once if ``compile`` (same parameters)."""
        if not self.compile:
            return self.net
        if not self._compiled:
            self._compiled.append(torch.compile(self.net))
        return self._compiled[0]

    def metadata(self) -> dict[str, Any]:
        """What a saved model needs besides the net's config (see ``textdiff.sampling.TextGenerator``)."""
        return {"kind": self.kind, "mask_id": self.net.mask_id, "seq_len": self.net.max_len}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = {"net_class": class_path(type(self.net)), "net_config": self.net.config,
                                      **self.metadata()}

    def _eval_step(self, batch: Any, batch_idx: int, key: str) -> Tensor:
        tokens = batch_tokens(batch)
        g = torch.Generator(tokens.device).manual_seed(batch_idx)
        loss = self.compute_loss(tokens, generator=g)
        self.log(key, loss, prog_bar=key.startswith("val"), batch_size=tokens.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, batch_idx, "val/loss")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, batch_idx, "test/loss")


class MaskedDiffusionModule(TextModule):
    """Masked (absorbing-state) diffusion LM trained on the MDLM NELBO, in nats per token.

    Args:
        net: a bidirectional ``TransformerNet`` (``causal=False``).
        schedule: the masking schedule (default log-linear, alpha_t = 1 - (1 - 1e-3) t, weight 1/t).
        time_sampling: "stratified" (low-discrepancy, MDLM's default), "antithetic" or "uniform".
        compile: wrap the net in ``torch.compile`` for training.
        Other arguments: ``DiffusionModule``'s optimizer, LR schedule and EMA.
    """

    kind = "diffusion"

    def __init__(self, net: TransformerNet, schedule: MaskingSchedule | None = None,
                 time_sampling: TimeSampling = "stratified", *, compile: bool = False, lr: float = 3e-4,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 2500,
                 lr_decay: LRDecay = "constant", max_steps: int | None = None, ema_decay: float | None = 0.9999,
                 ema_warmup: bool = True):
        if net.causal:
            raise ValueError("MaskedDiffusionModule needs a bidirectional net (causal=False)")
        super().__init__(net, compile=compile, lr=lr, weight_decay=weight_decay, betas=betas,
                         warmup_steps=warmup_steps, lr_decay=lr_decay, max_steps=max_steps, ema_decay=ema_decay,
                         ema_warmup=ema_warmup)
        self.schedule = schedule if schedule is not None else LogLinearMasking()
        self.time_sampling = time_sampling

    def logits_fn(self, z_t: Tensor, t: Tensor) -> Tensor:
        """``diffcore.discrete``'s ``logits_fn(z_t, t)`` for the training net."""
        return self.run_net(z_t, t if self.net.time_conditioning else None)

    def logits_at(self, z_t: Tensor, t: Tensor, positions: Tensor) -> Tensor:
        """Logits at the selected positions only (``masked_nelbo``'s ``logits_at``): the output layer runs
        where the loss needs it, the masked tokens, which saves most of its cost at low mask rates."""
        return self.run_net(z_t, t if self.net.time_conditioning else None, positions=positions)

    def compute_loss(self, batch: Any, generator: torch.Generator | None = None) -> Tensor:
        x0 = batch_tokens(batch)
        return masked_nelbo(self.logits_fn, x0, self.schedule, self.net.mask_id, time_sampling=self.time_sampling,
                            generator=generator, logits_at=self.logits_at)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "schedule": self.schedule.config()}


class ARModule(TextModule):
    """The autoregressive twin: the same ``TransformerNet`` with ``causal=True`` and next-token loss.

    The loss (nats per token) is the exact negative log-likelihood of each window given BOS; its
    exponential is the perplexity. Arguments as ``MaskedDiffusionModule`` (without the schedule).
    """

    kind = "ar"

    def __init__(self, net: TransformerNet, *, compile: bool = False, lr: float = 3e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.98), warmup_steps: int = 2500, lr_decay: LRDecay = "constant",
                 max_steps: int | None = None, ema_decay: float | None = 0.9999, ema_warmup: bool = True):
        if not net.causal:
            raise ValueError("ARModule needs a causal net (causal=True)")
        super().__init__(net, compile=compile, lr=lr, weight_decay=weight_decay, betas=betas,
                         warmup_steps=warmup_steps, lr_decay=lr_decay, max_steps=max_steps, ema_decay=ema_decay,
                         ema_warmup=ema_warmup)

    def compute_loss(self, batch: Any, generator: torch.Generator | None = None) -> Tensor:
        return ar_nll(self.run_net, batch_tokens(batch), self.net.mask_id)


def ar_nll(net: torch.nn.Module, x: Tensor, bos_id: int, reduce: bool = True) -> Tensor:
    """Next-token negative log-likelihood of windows x (B, L) given a BOS token, in nats per token.

    ``net`` maps (B, L) ids to (B, L, V + 1) logits; returns the mean over all tokens, or the
    per-window means (B,) with ``reduce=False``.
    """
    bos = torch.full_like(x[:, :1], bos_id)
    logits = net(torch.cat([bos, x[:, :-1]], dim=1))
    nll = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view_as(x)
    return nll.mean() if reduce else nll.mean(1)

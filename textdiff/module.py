"""Lightning modules for the masked diffusion LM and its autoregressive twin, and their data module.

Both are ``diffcore.lightning.DiffusionModule``s (AdamW with warmup/decay, EMA weights used for
validation and export, the non-finite loss guard) around the same ``TransformerNet``; they differ
only in ``compute_loss`` and in the net's attention mask, so trained on the same windows with the
same recipe they see the same tokens and are compared like for like (the diffusion net runs its output
layer only at masked positions, so its step costs less).

- ``MaskedDiffusionModule``: the continuous-time NELBO of MDLM (``diffcore.discrete.masked_nelbo``:
  masked-token cross-entropy weighted by -alpha'_t / (1 - alpha_t), SUBS parameterisation,
  stratified t). Its value in nats per token bounds the negative log-likelihood. With a block net
  (``TransformerNet(block_size=B)``) it is block diffusion's bound: one t per block, each block given the
  clean blocks before it.
- ``ARModule``: next-token cross-entropy. The window x_1..x_L is predicted from [BOS, x_1..x_{L-1}]
  (BOS = the extra id V), so the loss is the exact negative log-likelihood of the same L tokens the
  diffusion bound covers, with the same (no) context before the window.

Validation and test draw the diffusion model's t and masks from a generator seeded by the batch
index, so ``val/loss`` is a fixed-noise estimate comparable between evaluations.

``TokenDataModule`` serves token windows for training and evaluating both, read from memory-mapped
token arrays. A data directory holds ``train.bin``, ``validation.bin`` and ``test.bin``: flat ``np.uint16`` arrays
of token ids with documents separated by the end-of-text id, and a ``tokenizer/`` folder: a built-in
text set (``diffcore data build text --size small``, the default) or the user's own text tokenized
with ``textdiff.data.loaders.tokenize_files``; it is read with ``textdiff.data.loaders.open_tokens``.
Sequences are packed: a window is any ``seq_len`` consecutive tokens of the stream, crossing
document boundaries (the end-of-text token marks them), as in MDLM's OpenWebText set-up. No
padding, so every position carries a loss.

- training: an endless stream of windows at uniformly random offsets (nanoGPT's sampler); every DDP
  rank and dataloader worker draws its own stream. Training is sized by ``Trainer(max_steps=...)``
  and validation by an integer ``val_check_interval``.
- validation / test: the contiguous, non-overlapping windows ``[i L, (i + 1) L)`` in order (or an
  evenly spaced subset of them), the same for every model, so the diffusion model's bound and the
  autoregressive twin's perplexity are measured on exactly the same tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffcore.data import dataset_dir
from diffcore.discrete import LogLinearMasking, MaskingSchedule, mask_tokens, masking_from_config
from diffcore.discrete.process import masked_position_log_probs
from diffcore.lightning import DiffusionModule, load_net, read_checkpoint
from diffcore.losses import TimeSampling

from .data.loaders import open_tokens
from .data.windows import ContiguousWindows, RandomWindows, check_tokens
from .model import TransformerNet, ar_nll, diffusion_nelbo, draw_times


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

    def __init__(self, net: TransformerNet, *, compile: bool = False, **training: Any):
        super().__init__(net, **training)
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

    def export_metadata(self) -> dict[str, Any]:
        """What a saved model needs besides the net's config (see ``textdiff.inference.TextGenerator``)."""
        return {"kind": self.kind, "mask_id": self.net.mask_id, "seq_len": self.net.max_len}

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
        t_min: the bound integrates over t in [t_min, 1] (training too, unless ``train_t``). The NELBO's weight
            is 1/t, so t near 0 gives rare terms weighted up to 1/t_min: 1e-3 (MDLM's eps) keeps the loss's
            variance down at the cost of leaving out the bound's [0, t_min) part, which a nearly unmasked
            window makes negligible.
        train_t: training only: draw the times from this range (lo, hi) inside [t_min, 1] instead of [t_min, 1]
            (BD3-LM's clipped schedule, Arriola et al. 2025). The NELBO's 1/t weight reaches 1/t_min at rare
            small t, and a few such heavy terms make the gradient noisy; training on the middle of the range
            trades that noise for a loss that is no longer the bound (validation and test always report the
            full bound over [t_min, 1]). None: train on the bound itself.
        train_loss: "nelbo" (the bound itself) or "masked_mean": in training only, each window's masked-token
            cross-entropy is averaged over the tokens actually masked instead of weighted by 1/t and divided by
            the window length. Both have the same minimiser (every masked position's conditional is fitted by
            a proper score) and the same weight per mask rate on average, but "masked_mean" drops the noise of
            the masked count (relative variance (1 - t) / (t L), large at small t). Validation and test
            always report the NELBO.
        compile: wrap the net in ``torch.compile`` for training.
        training: the optimizer, LR schedule and EMA settings, passed to ``DiffusionModule`` (see its arguments).
    """

    kind = "diffusion"

    def __init__(self, net: TransformerNet, schedule: MaskingSchedule | None = None,
                 time_sampling: TimeSampling = "stratified", t_min: float = 1e-3,
                 train_loss: Literal["nelbo", "masked_mean"] = "nelbo", train_t: tuple[float, float] | None = None, *,
                 compile: bool = False, **training: Any):
        if net.causal:
            raise ValueError("MaskedDiffusionModule needs a bidirectional net (causal=False)")
        super().__init__(net, compile=compile, **training)
        self.schedule = schedule if schedule is not None else LogLinearMasking()
        self.time_sampling = time_sampling
        if not 0.0 < t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {t_min}")
        self.t_min = t_min
        if train_loss not in ("nelbo", "masked_mean"):
            raise ValueError(f"train_loss must be 'nelbo' or 'masked_mean', got {train_loss!r}")
        self.train_loss = train_loss
        if train_t is not None:
            train_t = (float(train_t[0]), float(train_t[1]))
            if not t_min <= train_t[0] < train_t[1] <= 1.0:
                raise ValueError(f"train_t must be a range (lo, hi) with t_min ({t_min}) <= lo < hi <= 1, "
                                 f"got {train_t}")
        self.train_t = train_t

    def logits_fn(self, z_t: Tensor, t: Tensor) -> Tensor:
        """``diffcore.discrete``'s ``logits_fn(z_t, t)`` for the training net (a block net's clean past is z_t)."""
        return self.run_net(z_t, t if self.net.time_conditioning else None)

    def logits_at(self, z_t: Tensor, t: Tensor, positions: Tensor) -> Tensor:
        """Logits at the selected positions only (``masked_nelbo``'s ``logits_at``)."""
        return self.run_net(z_t, t if self.net.time_conditioning else None, positions=positions)

    def compute_loss(self, batch: Any, generator: torch.Generator | None = None) -> Tensor:
        x0 = batch_tokens(batch)
        lo, hi = self.train_t if (self.training and self.train_t) else (self.t_min, 1.0)
        if self.training and self.train_loss == "masked_mean":
            return self.masked_mean_loss(x0, generator, (lo, hi))
        return diffusion_nelbo(self.net, x0, self.schedule, time_sampling=self.time_sampling, t_min=lo, t_max=hi,
                               generator=generator, run=self.run_net)

    def masked_mean_loss(self, x0: Tensor, generator: torch.Generator | None = None,
                         t_range: tuple[float, float] | None = None) -> Tensor:
        """Mean over windows of the cross-entropy averaged over each window's masked tokens (0 if none)."""
        lo, hi = t_range or (self.t_min, 1.0)
        t = draw_times(self.net, x0, self.time_sampling, t_min=lo, t_max=hi, generator=generator)
        alpha, _ = self.schedule(t.to(torch.float64))
        z_t = mask_tokens(x0, alpha, self.net.mask_id, generator=generator)
        active = z_t == self.net.mask_id
        kw = {"clean": x0} if self.net.block_size is not None else {}
        logits = self.run_net(z_t, t if self.net.time_conditioning else None, positions=active, **kw)
        logp = masked_position_log_probs(logits, self.net.mask_id)
        nll = -logp.gather(-1, x0[active].unsqueeze(-1)).squeeze(-1)
        rows = active.nonzero()[:, 0]
        per_window = torch.zeros(x0.shape[0], dtype=nll.dtype, device=x0.device).index_add(0, rows, nll)
        return (per_window / active.sum(1).clamp(min=1)).mean()

    def export_metadata(self) -> dict[str, Any]:
        return {**super().export_metadata(), "schedule": self.schedule.config()}


class ARModule(TextModule):
    """The autoregressive twin: the same ``TransformerNet`` with ``causal=True`` and next-token loss.

    The loss (nats per token) is the exact negative log-likelihood of each window given BOS; its
    exponential is the perplexity. Arguments as ``MaskedDiffusionModule`` (without the schedule).
    """

    kind = "ar"

    def __init__(self, net: TransformerNet, *, compile: bool = False, **training: Any):
        if not net.causal:
            raise ValueError("ARModule needs a causal net (causal=True)")
        super().__init__(net, compile=compile, **training)

    def compute_loss(self, batch: Any, generator: torch.Generator | None = None) -> Tensor:
        return ar_nll(self.run_net, batch_tokens(batch), self.net.mask_id)


# --- export ----------------------------------------------------------------------------------


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, tokenizer_dir: str | Path | None = None,
                      ema: bool = True, tokenizer: Any = None) -> Path:
    """Turn a training checkpoint into a ``TextGenerator.from_pretrained`` folder.

    The net is rebuilt from the config the module stored in the checkpoint and loaded with the EMA
    weights (``ema=False``: the raw training weights). The tokenizer comes from
    ``tokenizer_dir``, else from ``<data_dir>/tokenizer`` of the run's data module (or its built-in
    set). Checkpoints are pickles: export only ones you trained (exported folders are JSON +
    safetensors only).
    """
    from .inference import TextGenerator, load_tokenizer

    state = read_checkpoint(checkpoint, TextModule)
    net, info = load_net(state, ema=ema)
    if tokenizer is None:
        if tokenizer_dir is None:
            hp = state.get("datamodule_hyper_parameters", {})
            if hp.get("data_dir"):
                tokenizer_dir = Path(hp["data_dir"]).expanduser() / "tokenizer"
            elif hp.get("text_size"):
                tokenizer_dir = dataset_dir("text", hp["text_size"]) / "tokenizer"
            else:
                raise ValueError("the checkpoint does not name its data directory; pass --tokenizer DIR")
        tokenizer = load_tokenizer(tokenizer_dir)
    schedule = masking_from_config(info["schedule"]) if info.get("schedule") else None
    return TextGenerator(net, tokenizer, info["kind"], schedule, device="cpu").save_pretrained(out)


# --- data: packed token windows -------------------------------------------------------------


class TokenDataModule(L.LightningDataModule):
    """Packed token windows from a ``textdiff.data.text`` directory; batches are int64 tensors (B, seq_len).

    Args:
        data_dir: directory with train.bin, validation.bin, test.bin (and tokenizer/); None means the
            built-in text set of size ``text_size`` (``diffcore.data.dataset_dir("text", text_size)``).
        text_size: the built-in set's size ("tiny", "small", "full") when data_dir is None.
        seq_len: tokens per window (the model's context length).
        batch_size: windows per training batch (per device).
        eval_batch_size: windows per validation/test batch (default: batch_size).
        num_workers: dataloader worker processes.
        seed: seed of the training windows' offsets.
        max_eval_windows: evaluate on at most this many (evenly spaced) windows per split; None = all.
        vocab_size: if given, check at set-up that every token id is below it.
    """

    def __init__(self, data_dir: str | None = None, text_size: str = "small", seq_len: int = 128,
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 max_eval_windows: int | None = None, vocab_size: int | None = None):
        super().__init__()
        if seq_len < 2 or batch_size < 1:
            raise ValueError("seq_len must be >= 2 and batch_size >= 1")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir).expanduser() if data_dir else dataset_dir("text", text_size)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.seed, self.max_eval_windows = num_workers, seed, max_eval_windows
        self.vocab_size = vocab_size
        self.restarts = 0
        self._tokens: dict[str, np.ndarray] = {}

    @property
    def tokenizer_dir(self) -> Path:
        """Where the data set's tokenizer lives (saved next to exported models)."""
        return self.data_dir / "tokenizer"

    def tokens(self, split: str) -> np.ndarray:
        """The split's token array (memory-mapped, checked once)."""
        if split not in self._tokens:
            arr = open_tokens(self.data_dir, split)
            check_tokens(arr, self.seq_len, self.vocab_size, str(self.data_dir / f"{split}.bin"))
            self._tokens[split] = arr
        return self._tokens[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}.get(stage, ())
        for split in splits:
            self.tokens(split)

    def _loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), drop_last=False,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(RandomWindows(self.tokens("train"), self.seq_len, self.seed, self.restarts),
                            self.batch_size)

    def eval_dataset(self, split: str) -> ContiguousWindows:
        """The deterministic windows of ``split`` ("validation" or "test") used for evaluation."""
        return ContiguousWindows(self.tokens(split), self.seq_len, self.max_eval_windows)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("validation"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("test"), self.eval_batch_size)

    def state_dict(self) -> dict[str, int]:
        return {"restarts": self.restarts}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.restarts = int(state.get("restarts", 0)) + 1  # a resumed run draws fresh windows

"""``DiffusionModule``: the LightningModule every diffusion system here subclasses.

It owns what all of them share (optimizer and LR schedule, EMA weights, the non-finite loss check,
checkpointing of the EMA, exporting the network with ``save_pretrained``); a subclass supplies
only ``compute_loss(batch)``. The network itself stays a plain ``nn.Module`` that never imports
Lightning, so inference code loads it with ``from_pretrained`` alone.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from ..pretrained import PretrainedMixin, class_path, import_class
from .ema import EMA

CHECKPOINT_KEY = "diffcore"
"""The one checkpoint entry every ``DiffusionModule`` writes on save: the module and net classes, the net's
config and the module's ``export_metadata()``; ``load_net`` rebuilds the trained net from it."""

LRDecay = Literal["constant", "cosine", "linear"]
_LR_DECAYS = ("constant", "cosine", "linear")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; raised from ``training_step`` to stop the Trainer."""

    def __init__(self, value: float, step: int, batch_idx: int):
        self.value, self.step, self.batch_idx = value, step, batch_idx
        super().__init__(
            f"training loss is {value} at global step {step} (batch {batch_idx}); training stopped, and "
            "checkpoints already written were left as they were. Things to try: lower the learning rate "
            "(lr) or lengthen warmup_steps; clip gradients with Trainer(gradient_clip_val=1.0); train in "
            "bf16 (Trainer(precision='bf16-mixed')) rather than fp16; check the data for NaN/Inf values.")


def lr_factor(step: int, *, warmup_steps: int = 0, decay: LRDecay = "constant",
              total_steps: int | None = None, decay_steps: int | None = None) -> float:
    """Multiplier on the base LR at optimizer step ``step`` (0-based).

    Linear warmup (step + 1) / warmup_steps over the first ``warmup_steps`` steps, then constant,
    or a cosine / linear decay that reaches 0 at ``total_steps``. ``decay_steps``: the decay takes only
    the last that many steps, the rate staying constant until then (warmup-stable-decay, as in MiniCPM,
    Hu et al. 2024); None: the decay starts right after the warmup.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    if total_steps is None:
        raise ValueError(f"lr_decay={decay!r} needs total_steps")
    start = warmup_steps if decay_steps is None else max(warmup_steps, total_steps - decay_steps)
    progress = min(1.0, max(0, step - start) / max(1, total_steps - start))
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay == "linear":
        return 1.0 - progress
    raise ValueError(f"unknown lr_decay {decay!r}; choose one of {_LR_DECAYS}")


class DiffusionModule(L.LightningModule):
    """Base LightningModule for diffusion training: subclass it and implement ``compute_loss``.

    Args:
        net: the network (a plain ``nn.Module``; a ``PretrainedMixin`` one to use ``save_pretrained``).
            Everything that is trained and deployed should live inside it: the EMA tracks ``net``.
        lr, weight_decay, betas: AdamW settings. Weight decay skips biases and norm weights (ndim < 2).
        warmup_steps: linear LR warmup over this many optimizer steps.
        lr_decay: after warmup, keep the LR ("constant") or decay it to 0 at ``max_steps`` ("cosine",
            "linear").
        decay_steps: decay over only the last this many steps, at the full rate before them (None: all
            steps after the warmup).
        max_steps: the length of the decay; None means the Trainer's ``estimated_stepping_batches``.
        ema_decay: EMA decay of the net's weights, or None for no EMA.
        ema_warmup: ramp the EMA decay up as min(ema_decay, (1 + n) / (10 + n)).

    Validation, test and prediction run with the EMA weights swapped into ``net`` (the raw weights
    are put back afterwards and are what the checkpoint's ``state_dict`` holds; the EMA is saved
    under ``checkpoint["ema"]``, so resuming restores it). Use ``with self.ema_weights():`` to sample
    elsewhere. A subclass that overrides ``on_validation_start`` / ``on_validation_end`` (or the
    test / predict ones) must call ``super()``.

    Precision and clipping are Trainer settings: ``Trainer(precision="bf16-mixed")`` runs the forward
    pass under bf16 autocast with fp32 weights (prefer it to "16-mixed", whose narrow range is a
    common source of NaN losses), and ``Trainer(gradient_clip_val=1.0)`` clips the gradient norm. The
    EMA is kept in fp32 either way. A NaN or Inf loss raises ``NonFiniteLossError``; checking it costs
    one host-device sync per step.
    """

    def __init__(self, net: nn.Module, lr: float = 2e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 0,
                 lr_decay: LRDecay = "constant", max_steps: int | None = None,
                 ema_decay: float | None = 0.9999, ema_warmup: bool = True, decay_steps: int | None = None):
        super().__init__()
        if decay_steps is not None and decay_steps < 1:
            raise ValueError(f"decay_steps must be >= 1 (or None: decay over all steps after the warmup), "
                             f"got {decay_steps}")
        if lr_decay not in _LR_DECAYS:
            raise ValueError(f"unknown lr_decay {lr_decay!r}; choose one of {_LR_DECAYS}")
        if warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.lr, self.weight_decay, self.betas = lr, weight_decay, (float(betas[0]), float(betas[1]))
        self.warmup_steps, self.lr_decay, self.max_steps = warmup_steps, lr_decay, max_steps
        self.decay_steps = decay_steps
        # not an nn.Module: its tensors stay out of state_dict() and keep fp32 under .half()/.to(bf16)
        self.ema: EMA | None = EMA(net, ema_decay, ema_warmup) if ema_decay is not None else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def compute_loss(self, batch: Any) -> Tensor:
        """The scalar training loss of one batch; subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(batch) -> scalar")

    # ----------------------------------------------------------------------------------------------
    # training

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)
            if self.ema.num_updates == 0:
                # weights may have been loaded into net after construction (fine-tuning): average from them
                self.ema.reset(self.net)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.ema is not None and self.ema.is_swapped:  # a validation hook override skipped super()
            self.ema.restore(self.net)
        loss = self.compute_loss(batch)
        if loss.ndim != 0:
            raise ValueError(f"compute_loss must return a scalar, got shape {tuple(loss.shape)}")
        if not torch.isfinite(loss.detach()).item():
            raise NonFiniteLossError(loss.item(), self.global_step, batch_idx)
        bs = _batch_size(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.net)

    # ----------------------------------------------------------------------------------------------
    # validation

    def on_validation_start(self) -> None:
        self._swap_in_ema()

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.compute_loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=_batch_size(batch), sync_dist=True)
        return loss

    def on_validation_end(self) -> None:
        self._swap_out_ema()

    # ----------------------------------------------------------------------------------------------
    # test

    def on_test_start(self) -> None:
        self._swap_in_ema()

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.compute_loss(batch)
        self.log("test/loss", loss, batch_size=_batch_size(batch), sync_dist=True)
        return loss

    def on_test_end(self) -> None:
        self._swap_out_ema()

    # ----------------------------------------------------------------------------------------------
    # predict

    def on_predict_start(self) -> None:
        self._swap_in_ema()

    def on_predict_end(self) -> None:
        self._swap_out_ema()

    # ----------------------------------------------------------------------------------------------
    # optimizers

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)  # biases, norm scales, scalars: no decay
        groups = [g for g in ({"params": decay, "weight_decay": self.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas)
        total = self.max_steps
        if total is None and self.lr_decay != "constant":
            if self._trainer is None:
                raise ValueError(f"lr_decay={self.lr_decay!r} needs max_steps, or a Trainer to estimate it")
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError(f"lr_decay={self.lr_decay!r} needs max_steps or Trainer(max_steps=...)")
            total = int(total)
        schedule = functools.partial(lr_factor, warmup_steps=self.warmup_steps, decay=self.lr_decay,
                                     total_steps=total, decay_steps=self.decay_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ----------------------------------------------------------------------------------------------
    # EMA, checkpoints and export

    @contextmanager
    def ema_weights(self) -> Iterator[nn.Module]:
        """Run the block with the EMA weights in ``self.net`` (a no-op without EMA or when already in)."""
        if self.ema is None or self.ema.is_swapped:
            yield self.net
            return
        with self.ema.swap(self.net):
            yield self.net

    def export_metadata(self) -> dict[str, Any]:
        """What exporting this module's net needs besides the net's class and config (schedule, mel
        config, ...): stored in every checkpoint under ``CHECKPOINT_KEY``; subclasses extend it."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"module_class": class_path(type(self)), "net_class": class_path(type(self.net)),
                                      "net_config": self.net.config, **self.export_metadata()}
        if self.ema is None:
            return
        checkpoint["ema"] = self.ema.state_dict()
        if self.ema.is_swapped:
            # saved mid-validation (ModelCheckpoint runs in on_validation_end before this module's
            # hook): the state_dict must hold the raw training weights, not the EMA ones
            self.ema.restore(self.net)
            sd = checkpoint["state_dict"]
            for k, v in self.net.state_dict().items():
                if f"net.{k}" in sd:
                    sd[f"net.{k}"] = v.detach().clone()
            self._swap_in_ema()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is None:
            return
        if "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
        else:
            warnings.warn("checkpoint has no EMA state; the EMA restarts from its weights", stacklevel=2)
            sd = checkpoint["state_dict"]
            self.ema.reset({k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")})

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Export ``net`` (its EMA weights when EMA is on) with ``net.save_pretrained``."""
        if not isinstance(self.net, PretrainedMixin):
            raise TypeError(f"{type(self.net).__name__} does not inherit diffcore.pretrained.PretrainedMixin,"
                            " so it cannot be saved with save_pretrained")
        with self.ema_weights():
            return self.net.save_pretrained(directory, **kwargs)

    def _swap_in_ema(self) -> None:
        if self.ema is not None and not self.ema.is_swapped:
            self.ema.store(self.net)
            self.ema.copy_to(self.net)

    def _swap_out_ema(self) -> None:
        if self.ema is not None and self.ema.is_swapped:
            self.ema.restore(self.net)


def _batch_size(batch: Any) -> int | None:
    """Leading dimension of the first tensor in a batch (tensor, sequence or dict), for self.log."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.ndim else None
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        size = _batch_size(item)
        if size is not None:
            return size
    return None


# --------------------------------------------------------------------------------------------------
# export: a training checkpoint -> the trained net


def read_checkpoint(path: str | os.PathLike | dict[str, Any],
                    module: type[DiffusionModule] | None = None) -> dict[str, Any]:
    """The contents of a Lightning checkpoint written by a ``DiffusionModule`` (of class ``module`` or a
    subclass, if given), with errors that name the file. ``path`` may be contents already read (they are
    checked, not read again). Checkpoints are pickles: read only your own."""
    if isinstance(path, dict):
        ckpt, p = path, "the checkpoint"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"no checkpoint at {p}; pass the .ckpt written while training "
                                    "(e.g. lightning_logs/version_0/checkpoints/last.ckpt)")
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated or not a torch file at all
            raise ValueError(f"{p} is not a readable training checkpoint ({type(e).__name__}: {e})") from e
    meta = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if meta is None:
        raise ValueError(f"{p} was not written by a diffcore DiffusionModule (no {CHECKPOINT_KEY!r} entry)")
    if module is not None:
        stored = import_class(meta["module_class"])
        if not issubclass(stored, module):
            raise ValueError(f"{p} is a {stored.__name__} checkpoint, not a {module.__name__} one; export it "
                             f"with the command of the model it belongs to")
    return ckpt


def load_net(checkpoint: str | os.PathLike | dict[str, Any], ema: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The trained net of a checkpoint (a path or ``read_checkpoint``'s dict), rebuilt from its stored class
    and config, in eval mode, and the checkpoint's metadata (``CHECKPOINT_KEY``).

    Args:
        ema: load the EMA weights when the checkpoint has them; ``False``: the raw training weights.
    """
    ckpt = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    meta = ckpt[CHECKPOINT_KEY]
    net = import_class(meta["net_class"])(**meta["net_config"])
    if ema and "ema" in ckpt:
        state = {**ckpt["ema"]["params"], **ckpt["ema"]["buffers"]}
    else:
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    own = net.state_dict()  # non-persistent buffers are not in it and are rebuilt by the constructor
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return net.eval(), meta

"""Exponential moving average (EMA) of a module's weights, the weights diffusion models sample with.

After each optimizer step, theta_ema <- d theta_ema + (1 - d) theta. With ``warmup`` the decay
grows as d_n = min(decay, (1 + n) / (10 + n)) over the first updates (n = updates so far), so early
training is not averaged with the random initialisation for ~1/(1 - decay) steps.

Plain torch: no Lightning needed, so sampling scripts can use it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


class EMA:
    """EMA of ``module``'s parameters; buffers (e.g. norm statistics) are copied, not averaged.

    The averages are kept in (at least) float32 on the module's device, whatever the module's
    dtype, so bf16 training does not lose the small (1 - decay) increments to rounding. Tied
    parameters are tracked once.
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.params: dict[str, Tensor] = {n: _ema_copy(p) for n, p in module.named_parameters()}
        self.buffers: dict[str, Tensor] = {n: b.detach().clone() for n, b in module.named_buffers()}
        self._backup: dict[str, Tensor] | None = None

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the module's current weights into the average (call after each optimizer step)."""
        w = 1.0 - self.current_decay()
        avg, new = [], []
        for name, p in self._named(module.named_parameters(), self.params, "parameter"):
            e = self.params[name]
            if e.device != p.device:  # the module moved (e.g. Lightning put it on the GPU)
                e = self.params[name] = e.to(p.device)
            if e.is_floating_point():
                avg.append(e)
                new.append(p.detach().to(e.dtype))
            else:
                e.copy_(p)
        if avg:
            torch._foreach_lerp_(avg, new, w)
        for name, b in self._named(module.named_buffers(), self.buffers, "buffer"):
            if self.buffers[name].device != b.device:
                self.buffers[name] = self.buffers[name].to(b.device)
            self.buffers[name].copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite the module's weights with the averages (cast to the module's dtypes)."""
        for name, p in self._named(module.named_parameters(), self.params, "parameter"):
            p.copy_(self.params[name])
        for name, b in self._named(module.named_buffers(), self.buffers, "buffer"):
            b.copy_(self.buffers[name])

    @torch.no_grad()
    def reset(self, source: nn.Module | Mapping[str, Tensor]) -> None:
        """Restart the average at ``source``'s weights (a module or a state dict).

        Buffers absent from a state dict (non-persistent ones) keep their current copies.
        """
        if isinstance(source, nn.Module):
            state = {**dict(source.named_parameters()), **dict(source.named_buffers())}
        else:
            state = source
        missing = [k for k in self.params if k not in state]
        if missing:
            raise KeyError(f"EMA.reset: source lacks {len(missing)} tracked parameters, e.g. {missing[:5]}")
        for name, e in self.params.items():
            e.copy_(state[name])
        for name, e in self.buffers.items():
            if name in state:
                e.copy_(state[name])
        self.num_updates = 0

    # ----------------------------------------------------------------------------------------------
    # temporarily using the averaged weights

    @property
    def is_swapped(self) -> bool:
        """True between ``store`` and ``restore`` (i.e. inside ``swap``)."""
        return self._backup is not None

    @torch.no_grad()
    def store(self, module: nn.Module) -> None:
        """Keep a copy of the module's current (raw) weights for ``restore``."""
        if self._backup is not None:
            raise RuntimeError("EMA.store called twice without restore; the raw weights are already stored")
        self._backup = {f"p.{n}": p.detach().clone() for n, p in module.named_parameters()}
        self._backup.update({f"b.{n}": b.detach().clone() for n, b in module.named_buffers()})

    @torch.no_grad()
    def restore(self, module: nn.Module) -> None:
        """Put back the weights saved by ``store``."""
        if self._backup is None:
            raise RuntimeError("EMA.restore called without a matching store")
        for n, p in module.named_parameters():
            p.copy_(self._backup[f"p.{n}"])
        for n, b in module.named_buffers():
            b.copy_(self._backup[f"b.{n}"])
        self._backup = None

    @contextmanager
    def swap(self, module: nn.Module) -> Iterator[nn.Module]:
        """``with ema.swap(net): sample(net)`` runs with the averaged weights, then restores the raw ones."""
        self.store(module)
        try:
            self.copy_to(module)
            yield module
        finally:
            self.restore(module)

    # ----------------------------------------------------------------------------------------------
    # state

    def to(self, device: torch.device | str) -> EMA:
        self.params = {k: v.to(device) for k, v in self.params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        """Averages, buffers and the update count (decay and warmup come from the constructor)."""
        return {"num_updates": self.num_updates, "decay": self.decay, "warmup": self.warmup,
                "params": dict(self.params), "buffers": dict(self.buffers)}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load ``state_dict()`` output into this EMA, keeping its tensors' devices and dtypes.

        The decay and warmup given to the constructor are kept, so a resumed run may change them.
        """
        for key, store in (("params", self.params), ("buffers", self.buffers)):
            saved = state[key]
            missing, unexpected = sorted(store.keys() - saved.keys()), sorted(saved.keys() - store.keys())
            if missing or unexpected:
                raise KeyError(f"EMA state does not match the module ({key}): missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
            for name, e in store.items():
                if saved[name].shape != e.shape:
                    raise ValueError(f"EMA state for {name!r} has shape {tuple(saved[name].shape)}, "
                                     f"module has {tuple(e.shape)}")
                e.copy_(saved[name])
        self.num_updates = int(state["num_updates"])

    @staticmethod
    def _named(items: Iterator[tuple[str, Tensor]], store: dict[str, Tensor], what: str):
        for name, t in items:
            if name not in store:
                raise KeyError(f"{what} {name!r} is not tracked by this EMA; was it made for another module?")
            yield name, t


def _ema_copy(p: Tensor) -> Tensor:
    p = p.detach()
    if p.is_floating_point():
        return p.to(torch.promote_types(p.dtype, torch.float32), copy=True)
    return p.clone()

"""Packed windows of a token stream: random ones for training, fixed contiguous ones for evaluation.

Kept apart from the Lightning modules so that evaluation and sampling do not import Lightning.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info


def check_tokens(tokens: np.ndarray, seq_len: int, vocab_size: int | None, name: str) -> None:
    if len(tokens) < seq_len:
        raise ValueError(f"{name} holds {len(tokens)} tokens, fewer than one window of seq_len={seq_len}")
    if vocab_size is not None and len(tokens):
        top = int(tokens.max())
        if top >= vocab_size:
            raise ValueError(f"{name} holds token id {top}, outside the model's vocabulary of {vocab_size}")


class RandomWindows(IterableDataset):
    """Endless windows of ``seq_len`` tokens at uniform random offsets, as int64 tensors (seq_len,).

    The stream's seed combines ``seed``, ``restarts`` (bumped on resume, so a resumed run does not
    replay the windows it has already seen), the DDP rank and the dataloader worker.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int = 0, restarts: int = 0):
        self.tokens, self.seq_len, self.seed, self.restarts = tokens, seq_len, seed, restarts

    def __iter__(self):
        worker = get_worker_info()
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and \
            torch.distributed.is_initialized() else 0
        rng = np.random.default_rng([self.seed, self.restarts, rank, worker.id if worker else 0])
        high = len(self.tokens) - self.seq_len + 1
        while True:
            start = int(rng.integers(0, high))
            yield torch.from_numpy(self.tokens[start:start + self.seq_len].astype(np.int64))


class ContiguousWindows(Dataset):
    """The non-overlapping windows ``tokens[i L:(i + 1) L]``; with ``max_windows`` an evenly spaced
    subset of them (always the same one)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, max_windows: int | None = None):
        self.tokens, self.seq_len = tokens, seq_len
        n = len(tokens) // seq_len
        if max_windows is not None and max_windows < n:
            self.index = np.linspace(0, n - 1, max_windows).round().astype(np.int64)
        else:
            self.index = np.arange(n)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        a = int(self.index[i]) * self.seq_len
        return torch.from_numpy(self.tokens[a:a + self.seq_len].astype(np.int64))

"""Token windows for training and evaluating the text models, read from memory-mapped token arrays.

A data directory holds ``train.bin``, ``validation.bin`` and ``test.bin``: flat ``np.uint16`` arrays
of token ids with documents separated by the end-of-text id, and a ``tokenizer/`` folder: a built-in
text set (``diffcore data build text --size small``, the default) or the user's own text tokenized
with ``textdiff.loaders.tokenize_files``; it is read with ``textdiff.loaders.open_tokens``.
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

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from diffcore.data import dataset_dir

from .loaders import open_tokens


def _check(tokens: np.ndarray, seq_len: int, vocab_size: int | None, name: str) -> None:
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


class TokenDataModule(L.LightningDataModule):
    """Packed token windows from a ``textdiff.data`` directory; batches are int64 tensors (B, seq_len).

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
            _check(arr, self.seq_len, self.vocab_size, str(self.data_dir / f"{split}.bin"))
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

"""``AtomicCheckpointIO``: Lightning checkpoints that are never seen half-written.

Lightning's ``TorchCheckpointIO`` writes the file in place, so a run killed mid-write (Ctrl-C, an out-of-memory
kill, a full disk) leaves a truncated ``last.ckpt`` that the next ``--ckpt_path last`` fails to load, and the
previous good checkpoint is gone. This plugin writes to a hidden sibling, fsyncs it and renames it over the
target: a reader sees the old checkpoint or the new one, nothing in between.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temporary-then-rename saves (local paths; remote URLs, which have
    no atomic rename here, are written by the parent class). Use as ``Trainer(plugins=[AtomicCheckpointIO()])``
    or in a recipe: ``trainer.plugins: [{class_path: diffcore.lightning.AtomicCheckpointIO}]``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:  # make the rename itself durable
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            tmp.unlink(missing_ok=True)

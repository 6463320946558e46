"""The audiofolder format: how our built-in audio sets are written and how users' folders are read.

It is the Hugging Face ``audiofolder`` convention::

    <root>/<split>/metadata.csv     columns: file_name (relative to the csv's folder), text or caption, ...
    <root>/<split>/<file>.wav

A folder without split subfolders (``<root>/metadata.csv``) is a single split. Our builders write
16-bit mono WAV at the project rate and one ``metadata.csv`` per split, so ``load_dataset("audiofolder",
data_dir=root)`` reads them too.
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from typing import Any

import numpy as np

from diffcore.data import DataError

from ..audio import SAMPLE_RATE, write_wav

METADATA = "metadata.csv"
SPLITS = ("train", "validation", "test")


class AudioFolderWriter:
    """Collects clips and their metadata, writing WAVs as they come and one sorted ``metadata.csv`` per split.

    Safe to call from several threads. Rows are sorted by ``file_name`` when written, so the output does
    not depend on the order in which parallel workers finished.
    """

    def __init__(self, root: Path, sample_rate: int = SAMPLE_RATE):
        self.root, self.sample_rate = Path(root), sample_rate
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._names: set[str] = set()

    def add(self, split: str, name: str, wave: np.ndarray, **meta: Any) -> dict[str, Any]:
        """Write ``wave`` as ``<split>/<name>.wav`` and remember its metadata row (``seconds`` is added)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        folder = self.root / split
        folder.mkdir(parents=True, exist_ok=True)
        file_name = f"{name}.wav"
        with self._lock:
            if file_name in self._names:
                raise ValueError(f"two clips are named {file_name!r}; clip names must be unique in a data set")
            self._names.add(file_name)
        write_wav(folder / file_name, wave, self.sample_rate)
        row = {"file_name": file_name, **meta, "seconds": round(len(wave) / self.sample_rate, 4)}
        with self._lock:
            self._rows.setdefault(split, []).append(row)
        return row

    def finish(self) -> dict[str, dict[str, Any]]:
        """Write the metadata files; returns ``{split: {"clips": n, "seconds": total}}``."""
        stats = {}
        for split, rows in sorted(self._rows.items()):
            rows = sorted(rows, key=lambda r: r["file_name"])
            names = [n for n in rows[0] if n != "seconds"]
            names += sorted({k for r in rows for k in r} - set(names) - {"seconds"}) + ["seconds"]
            with open(self.root / split / METADATA, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=names, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
            stats[split] = {"clips": len(rows), "seconds": round(sum(r["seconds"] for r in rows), 2)}
        return stats


def find_metadata(root: str | Path, split: str | None) -> Path:
    """The ``metadata.csv`` of ``split`` under ``root`` (or of the single-split folder ``root``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"audio folder {root} does not exist or is not a directory")
    candidates = ([root / split / METADATA] if split else []) + [root / METADATA]
    for c in candidates:
        if c.is_file():
            return c
    present = sorted(p.parent.name for p in root.glob(f"*/{METADATA}"))
    hint = f"splits found: {', '.join(present)}" if present else f"no {METADATA} anywhere under {root}"
    raise DataError(f"no {METADATA} for split {split!r} in {root} ({hint}); an audio folder needs "
                    f"<root>/<split>/{METADATA} (or <root>/{METADATA}) with a file_name column")


def read_metadata(path: Path, text_column: str | None = None) -> tuple[list[dict[str, str]], str | None]:
    """Rows of a ``metadata.csv`` and the name of its text column (``text_column``, else caption/text).

    Raises :class:`DataError` for a file that is not UTF-8 CSV, lacks ``file_name``, or lacks the
    requested text column (naming the columns it has).
    """
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 ({e}); convert it, e.g. `iconv -f latin1 -t utf-8`") from e
    if "file_name" not in columns:
        raise DataError(f"{path} has no file_name column (columns: {', '.join(columns) or 'none'}); "
                        "the first column must be file_name, the audio path relative to the csv")
    if text_column is not None and text_column not in columns:
        raise DataError(f"{path} has no {text_column!r} column (columns: {', '.join(columns)}); pass "
                        "text_column= naming your caption/transcript column, or add the column")
    if text_column is None:
        text_column = next((c for c in ("caption", "text") if c in columns), None)
    return rows, text_column


def parse_value(text: str) -> Any:
    """A metadata cell with numbers parsed back (int, then float); anything else stays a string."""
    for kind in (int, float):
        try:
            return kind(text)
        except (TypeError, ValueError):
            pass
    return text

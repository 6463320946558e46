"""Load audio clips with their text from a built-in set, an audio folder, or a Hugging Face data set.

One code path for ours and users' data::

    AudioClips("speech-small", split="train")                  # a built-in set (built with `diffcore data build`)
    AudioClips("path/to/folder", split="train")                # audiofolder: <split>/metadata.csv + audio files
    AudioClips("hf:user/name", split="train", text_column="caption")  # datasets.load_dataset(name)
    AudioClips("path/saved_with_save_to_disk", split="train")   # datasets.load_from_disk
    AudioStream("hf:user/name", split="train")                 # streaming, as an IterableDataset

Each item is a dict: ``audio`` (float32 tensor (T,) at ``sample_rate``), ``path``, ``text`` (the caption or
transcript, or None) and the other metadata columns. Bad files raise :class:`~diffcore.data.DataError`
naming the file and the fix; with ``skip_bad=True`` they are dropped and counted in ``skipped``.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset, IterableDataset

from diffcore.data import SIZES, DataError, data_home

from ..audio import SAMPLE_RATE, read_audio, resample
from .audiofolder import find_metadata, parse_value, read_metadata

_TEXT_KEYS = ("file_name", "text", "caption", "speaker", "title")


def resolve_source(source: str | os.PathLike) -> tuple[str, Any]:
    """``("folder", Path)``, ``("saved", Path)`` or ``("hub", name)`` for a loader ``source`` string."""
    text = os.fspath(source)
    if text.startswith("hf:"):
        name = text[3:]
        if Path(name).expanduser().is_dir():
            return _local_kind(Path(name).expanduser())
        return "hub", name
    path = Path(text).expanduser()
    if path.exists():
        return _local_kind(path)
    m = re.fullmatch(r"(speech|sounds)-(" + "|".join(SIZES) + r")", text)
    if m:
        built = data_home() / text
        if not built.is_dir():
            raise DataError(f"the built-in set {text!r} is not built yet (looked in {built}); build it with "
                            f"`diffcore data build {m.group(1)} --size {m.group(2)}`")
        return "folder", built
    raise DataError(f"{text!r} is neither an existing path, a built-in set (speech-small, sounds-tiny, ...), "
                    "nor a Hugging Face data set (prefix the name with hf:, e.g. hf:user/name)")


def _local_kind(path: Path) -> tuple[str, Path]:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() \
            or (path / "state.json").is_file():
        return "saved", path
    return "folder", path


class AudioClips(Dataset):
    """A map-style data set of audio clips with metadata (see the module docstring).

    Args:
        source: built-in set name (``"speech-small"``), audio folder path, ``hf:<name or path>``.
        split: ``train``, ``validation`` or ``test`` (ignored for a single-split folder).
        sample_rate: the rate every clip is returned at.
        text_column: the caption/transcript column (default: ``caption`` or ``text`` if present).
        resample: resample clips at another rate; if False (default) such a clip is an error, because a
            silently resampled data set is usually a mistake in the data (e.g. 16 kHz clips for a 22 kHz model).
        skip_bad: drop unreadable, empty or wrong-rate files instead of raising; see ``skipped``.
    """

    def __init__(self, source: str | os.PathLike, split: str = "train", *, sample_rate: int = SAMPLE_RATE,
                 text_column: str | None = None, resample: bool = False, skip_bad: bool = False):
        self.sample_rate, self.skip_bad = sample_rate, skip_bad
        self._rate = _Rate(sample_rate, resample)
        self.skipped: list[tuple[str, str]] = []
        kind, where = resolve_source(source)
        if kind == "folder":
            self._init_folder(where, split, text_column)
        else:
            self._init_hf(kind, where, split, text_column)
        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} bad audio file(s) of {source} ({split}); first: "
                          f"{self.skipped[0][0]}: {self.skipped[0][1]}", stacklevel=2)
        if not self.items:
            raise DataError(f"{source} ({split}) has no usable audio clips")

    def _init_folder(self, root: Path, split: str, text_column: str | None) -> None:
        meta = find_metadata(root, split)
        rows, self.text_column = read_metadata(meta, text_column)
        self.items: list[dict[str, Any]] = []
        for row in rows:
            path = meta.parent / row["file_name"]
            try:
                sr = self._check_header(path)
            except DataError as e:
                if not self.skip_bad:
                    raise
                self.skipped.append((str(path), str(e)))
                continue
            parsed = {k: (v if k in _TEXT_KEYS else parse_value(v)) for k, v in row.items()}
            self.items.append({**parsed, "path": str(path), "file_sample_rate": sr,
                               "text": row.get(self.text_column) if self.text_column else None})

    def _check_header(self, path: Path) -> int:
        """The file's sample rate, after checking it exists, parses, is non-empty and has an allowed rate."""
        if not path.is_file():
            raise DataError(f"audio file {path} listed in metadata.csv does not exist; fix the file_name or "
                            "remove the row (or pass skip_bad=True)")
        try:
            info = sf.info(path)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DataError(f"cannot read audio file {path} ({e}); re-encode it as WAV/FLAC/OGG or pass "
                            "skip_bad=True") from e
        if info.frames == 0:
            raise DataError(f"audio file {path} is empty (0 samples); remove it or pass skip_bad=True")
        self._rate.check(int(info.samplerate), str(path))
        return int(info.samplerate)

    def _init_hf(self, kind: str, where: Any, split: str, text_column: str | None) -> None:
        ds = _load_hf(kind, where, split, streaming=False)
        self._hf, self._audio_col = ds, _audio_column(ds, where)
        self.text_column = _hf_text_column(ds.column_names, text_column, where)
        self.items = [{"row": i} for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        if "row" in item:  # Hugging Face data set
            return self._rate.hf_row(self._hf[item["row"]], self._audio_col, self.text_column, f"row {item['row']}")
        wave, sr = read_audio(item["path"])
        out = {k: v for k, v in item.items() if k != "file_sample_rate"}
        out["audio"] = self._rate.tensor(wave, sr)
        return out


@dataclass(frozen=True)
class _Rate:
    """The target sample rate and whether other rates are resampled (True) or an error (False)."""

    sample_rate: int
    resample: bool

    def check(self, sr: int, where: str) -> None:
        if sr != self.sample_rate and not self.resample:
            raise DataError(f"{where} has sample rate {sr} Hz but {self.sample_rate} Hz is expected; pass "
                            f"resample=True to resample on loading, or convert the files first (e.g. "
                            f"`sox in.wav -r {self.sample_rate} out.wav`)")

    def tensor(self, wave: np.ndarray, sr: int) -> torch.Tensor:
        return torch.from_numpy(resample(wave, sr, self.sample_rate) if sr != self.sample_rate else wave)

    def hf_row(self, row: dict[str, Any], audio_col: str, text_column: str | None, where: str) -> dict[str, Any]:
        """One Hugging Face row as an item: decoded, rate-checked audio plus the other columns."""
        wave, sr, path = _decode_hf_audio(row[audio_col], where)
        self.check(sr, path or where)
        meta = {k: v for k, v in row.items() if k != audio_col}
        return {**meta, "audio": self.tensor(wave, sr), "path": path or where,
                "text": row.get(text_column) if text_column else None}


class AudioStream(IterableDataset):
    """Streaming counterpart of :class:`AudioClips` for Hugging Face data sets (``datasets`` streaming mode)."""

    def __init__(self, source: str | os.PathLike, split: str = "train", *, sample_rate: int = SAMPLE_RATE,
                 text_column: str | None = None, resample: bool = False, skip_bad: bool = False):
        kind, where = resolve_source(source)
        if kind == "folder":
            raise DataError(f"{source} is an audio folder; use AudioClips for it (streaming is for hf: sources)")
        self._ds = _load_hf(kind, where, split, streaming=True)
        self._where, self._text_column, self.skip_bad = where, text_column, skip_bad
        self._rate = _Rate(sample_rate, resample)
        self.skipped = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        audio_col = text_column = None
        for i, row in enumerate(self._ds):
            if audio_col is None:  # a stream's columns are known from its first row
                audio_col = _audio_column_of_row(row, self._where)
                text_column = _hf_text_column(list(row), self._text_column, self._where)
            try:
                yield self._rate.hf_row(row, audio_col, text_column, f"row {i}")
            except DataError:
                if not self.skip_bad:
                    raise
                self.skipped += 1


def _load_hf(kind: str, where: Any, split: str, streaming: bool) -> Any:
    import datasets

    if kind == "saved":
        ds = datasets.load_from_disk(str(where))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{where} has splits {', '.join(ds)}, not {split!r}")
            ds = ds[split]
        if streaming:
            ds = ds.to_iterable_dataset()
    else:
        try:
            ds = datasets.load_dataset(where, split=split, streaming=streaming)
        except Exception as e:  # the hub being unreachable surfaces as several exception types
            raise DataError(f"could not load the Hugging Face data set {where!r} ({type(e).__name__}: {e}); this "
                            "machine may be offline: download it elsewhere and pass its local path "
                            "(save_to_disk or an audiofolder)") from e
    if not streaming:
        ds = ds.cast_column(_audio_column(ds, where), datasets.Audio(decode=False))
    return ds


def _audio_column(ds: Any, where: Any) -> str:
    import datasets

    cols = [k for k, f in ds.features.items() if isinstance(f, datasets.Audio)]
    if not cols:
        raise DataError(f"{where} has no Audio column (columns: {', '.join(ds.column_names)}); cast one with "
                        "ds.cast_column('audio', datasets.Audio()) before saving")
    return cols[0]


def _audio_column_of_row(row: dict[str, Any], where: Any) -> str:
    for k, v in row.items():
        if isinstance(v, dict) and ({"bytes", "path"} & set(v) or "array" in v):
            return k
    raise DataError(f"{where}: no audio column found in the streamed rows (columns: {', '.join(row)})")


def _hf_text_column(columns: list[str], text_column: str | None, where: Any) -> str | None:
    if text_column is not None:
        if text_column not in columns:
            raise DataError(f"{where} has no {text_column!r} column (columns: {', '.join(columns)}); pass "
                            "text_column= naming your caption/transcript column")
        return text_column
    return next((c for c in ("caption", "text") if c in columns), None)


def _decode_hf_audio(value: Any, where: str) -> tuple[np.ndarray, int, str | None]:
    """Decode one Hugging Face audio cell (bytes/path from ``Audio(decode=False)``, or a decoded array)."""
    if isinstance(value, dict) and value.get("array") is not None:
        wave = np.asarray(value["array"], dtype=np.float32)
        return (wave.mean(axis=0) if wave.ndim == 2 else wave), int(value["sampling_rate"]), value.get("path")
    if isinstance(value, dict) and value.get("bytes"):
        try:
            wave, sr = sf.read(io.BytesIO(value["bytes"]), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DataError(f"cannot decode the audio of {value.get('path') or where} ({e})") from e
        if wave.shape[0] == 0:
            raise DataError(f"the audio of {value.get('path') or where} is empty")
        return wave.mean(axis=1), int(sr), value.get("path")
    if isinstance(value, dict) and value.get("path"):
        wave, sr = read_audio(value["path"])
        return wave, sr, value["path"]
    raise DataError(f"{where}: audio cell has neither bytes nor a path")

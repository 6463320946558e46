"""Loaders that turn anyone's text into token files: plain text files, Hugging Face data sets, built sets.

The built-in ``text`` set (:mod:`textdiff.data`) is tokenized by these same functions, so ours and
users' data go through one code path::

    tok = Tokenizer.from_dir(diffcore.data.dataset_dir("text", "tiny"))   # or any folder with gpt2.tiktoken
    tokenize_files("my_texts/", tok, "mine/train.bin")                     # one document per .txt file
    tokenize_text_dataset("rows.jsonl", tok, "mine/validation.bin", text_column="body", streaming=True)
    ids = open_tokens("mine", "train")                                     # np.memmap of uint16
    tokenize_corpus("text-small", "char", "shk_char", sources=["shakespeare"])  # a tokenizer learnt from the corpus
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffcore.data import MANIFEST, DataError, require_module
from textdiff.tokenizer import Tokenizer

SPLITS = ("train", "validation", "test")
BUILD_COMMAND = "diffcore data build text --size small"


# --- loaders: users' text goes through the same code --------------------------------------------


@dataclass
class TokenStats:
    """What :func:`tokenize_files` / :func:`tokenize_text_dataset` wrote and what they left out."""

    documents: int = 0  #: documents written, each followed by the end-of-text id
    tokens: int = 0  #: ids written to the .bin (end-of-text ids included)
    bytes_text: int = 0  #: UTF-8 bytes of the text tokenized
    skipped: int = 0  #: bad inputs left out because skip_bad=True
    empty: int = 0  #: empty (or whitespace-only) documents left out
    doc_tokens: list[int] = field(default_factory=list)  #: text tokens of each written document, in order
    problems: list[str] = field(default_factory=list)  #: why each skipped input was skipped (first 100)

    def skip(self, why: str) -> None:
        self.skipped += 1
        if len(self.problems) < 100:
            self.problems.append(why)


class _TokenWriter:
    """Appends documents to ``<out_bin>`` as uint16 ids + end-of-text; the file appears only when complete."""

    def __init__(self, out_bin: str | os.PathLike, tokenizer: Tokenizer, stats: TokenStats):
        if tokenizer.vocab_size > 2**16:
            raise DataError(f"a vocabulary of {tokenizer.vocab_size} ids does not fit the uint16 token files")
        self.out, self.tokenizer, self.stats, self.buffer = Path(out_bin), tokenizer, stats, []
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        self.file = open(self.tmp, "wb")

    def add(self, text: str, where: str) -> None:
        if not text.strip():
            self.stats.empty += 1
            return
        try:
            ids = self.tokenizer.encode(text)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from e
        self.buffer += ids
        self.buffer.append(self.tokenizer.eot_id)
        self.stats.documents += 1
        self.stats.tokens += len(ids) + 1
        self.stats.bytes_text += len(text.encode("utf-8"))
        self.stats.doc_tokens.append(len(ids))
        if len(self.buffer) >= 1 << 20:
            self.flush()

    def flush(self) -> None:
        np.asarray(self.buffer, dtype=np.uint16).tofile(self.file)
        self.buffer = []

    def __enter__(self) -> _TokenWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                self.flush()
                self.file.flush()
                os.fsync(self.file.fileno())
        finally:
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.out)
            else:
                self.tmp.unlink(missing_ok=True)


def _text_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*.txt") if p.is_file())
            if not found:
                raise DataError(f"{item} holds no .txt files; pass the text files themselves, or rename them to *.txt")
            out += found
        elif item.is_file():
            out.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not out:
        raise DataError("no text files were given")
    return out


def read_text_file(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped, nothing else changed).

    Raises:
        DataError: the file is not UTF-8 (the message names the byte, the line and the ``iconv`` command
            that converts it) or is binary.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path} is UTF-16, not UTF-8; convert it with `iconv -f UTF-16 -t UTF-8 '{path}' > "
                        f"'{path}.utf8'` (or pass skip_bad=True to skip such files)")
    if b"\x00" in raw:
        raise DataError(f"{path} contains NUL bytes: it is a binary file, not text; remove it from the inputs "
                        "(or pass skip_bad=True to skip such files)")
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line}); "
                        f"convert it with `iconv -f latin1 -t utf-8 '{path}' > '{path}.utf8'` (put the file's "
                        "real encoding in place of latin1; `file -i` guesses it), or pass skip_bad=True to skip "
                        "such files") from None


def _progress(items: Iterable[Any], progress: bool, desc: str, total: int | None = None) -> Iterator[Any]:
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, disable=not progress, leave=False, dynamic_ncols=True)


def tokenize_files(paths: str | os.PathLike | Iterable[str | os.PathLike], tokenizer: Tokenizer,
                   out_bin: str | os.PathLike, skip_bad: bool = False, *, progress: bool = False,
                   desc: str = "tokenizing") -> TokenStats:
    """Tokenize text files into one token file (the path the built-in set takes too): one document per file.

    Args:
        paths: text files, or folders whose ``*.txt`` files (recursively, sorted) are taken; in this order.
        tokenizer: e.g. ``Tokenizer.from_dir(<built text set>)``.
        out_bin: the ``.bin`` to write (flat uint16 ids, each document followed by ``tokenizer.eot_id``); it
            appears only once complete. Read it with ``np.memmap(out_bin, np.uint16)`` or :func:`open_tokens`.
        skip_bad: skip files that are not UTF-8 text (counted in ``stats.skipped``, reasons in
            ``stats.problems``) instead of stopping with a :class:`DataError` that names the file and the fix.
        progress: show a progress bar (``desc`` labels it).

    Each file's text is encoded exactly (no newline or whitespace changes; ``<|endoftext|>`` written in the
    text is ordinary text). Empty files are left out and counted in ``stats.empty``.
    """
    files = _text_paths(paths)
    stats = TokenStats()
    with _TokenWriter(out_bin, tokenizer, stats) as writer:
        for path in _progress(files, progress, desc):
            try:
                text = read_text_file(path)
            except DataError as e:
                if not skip_bad:
                    raise
                stats.skip(str(e))
                continue
            writer.add(text, str(path))
    return stats


_DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def _load_dataset(source: str | os.PathLike, split: str, streaming: bool, config: str | None,
                  cache_dir: str | None) -> Any:
    datasets = require_module("datasets", "pip install datasets")
    path = Path(source).expanduser()
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))  # written by save_to_disk
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{source} has no split {split!r}; it has {', '.join(ds)}")
                ds = ds[split]
            return ds.to_iterable_dataset() if streaming else ds
        if path.is_file():
            name = re.sub(r"\.(gz|bz2|xz|zst)$", "", path.name.lower())  # datasets decompresses these itself
            builder = next((b for s, b in _DATA_FILE_BUILDERS.items() if name.endswith(s)), None)
            if builder is None:
                hint = " (for plain text use tokenize_files: one document per file)" if name.endswith(".txt") else ""
                raise DataError(f"{path}: cannot tell its format from the name; use one of "
                                f"{', '.join(_DATA_FILE_BUILDERS)}{hint}")
            kwargs = {"delimiter": "\t"} if name.endswith(".tsv") else {}
            return datasets.load_dataset(builder, data_files={split: str(path)}, split=split, streaming=streaming,
                                         cache_dir=cache_dir, **kwargs)
        return datasets.load_dataset(str(source) if path.exists() else source, name=config, split=split,
                                     streaming=streaming, cache_dir=cache_dir)
    except DataError:
        raise
    except Exception as e:  # datasets raises many kinds; keep the original as the cause
        where = "a local folder" if path.exists() else "a name on the Hugging Face Hub (needs the network)"
        raise DataError(f"could not load the data set {str(source)!r}, split {split!r}, as {where}: "
                        f"{type(e).__name__}: {e}") from e


def tokenize_text_dataset(source: str | os.PathLike, tokenizer: Tokenizer, out_bin: str | os.PathLike, *,
                          text_column: str = "text", split: str = "train", streaming: bool = False,
                          config: str | None = None, skip_bad: bool = False, max_documents: int | None = None,
                          cache_dir: str | None = None, progress: bool = False) -> TokenStats:
    """Tokenize a Hugging Face ``datasets`` data set into a token file, one document per row.

    Args:
        source: a Hub name (``"user/set"``), a folder written by ``save_to_disk``, a data-set folder
            (loaded by ``datasets.load_dataset``) or one ``.json``/``.jsonl``/``.csv``/``.tsv``/``.parquet`` file.
        tokenizer, out_bin: as in :func:`tokenize_files`.
        text_column: the column holding each document's text.
        split: which split to read.
        streaming: read rows as they come instead of preparing the whole set first.
        config: the data set's configuration name, if it has several.
        skip_bad: skip rows whose text is missing or not a string (counted in ``stats.skipped``) instead of
            stopping with a :class:`DataError` naming the row.
        max_documents: stop after this many rows.
        cache_dir: where ``datasets`` keeps its cache.
    """
    ds = _load_dataset(source, split, streaming, config, cache_dir)
    columns = ds.column_names
    if columns is None:  # a stream whose features are unknown until its first row
        columns = list(next(iter(ds), None) or {})
    if text_column not in columns:
        raise DataError(f"{source} has no column {text_column!r}; its columns are {', '.join(columns) or 'none'}; "
                        "pass text_column= naming the one that holds the text")
    texts = (t for batch in ds.select_columns([text_column]).iter(batch_size=1000) for t in batch[text_column])
    stats = TokenStats()
    with _TokenWriter(out_bin, tokenizer, stats) as writer:
        for i, text in enumerate(_progress(texts, progress, f"tokenizing {source}")):
            if max_documents is not None and i >= max_documents:
                break
            if not isinstance(text, str):
                why = (f"{source}, row {i}: column {text_column!r} holds {type(text).__name__} {text!r:.60}, not "
                       "text; fix or drop such rows, or pass skip_bad=True to skip them")
                if not skip_bad:
                    raise DataError(why)
                stats.skip(why)
                continue
            writer.add(text, f"{source}, row {i}")
    return stats


def open_tokens(directory: str | os.PathLike, split: str = "train") -> np.memmap:
    """The token ids of ``split`` in a built text set (or any folder holding ``<split>.bin``), memory-mapped.

    Documents are separated by the end-of-text id 50256. Raises :class:`DataError` (naming the build command)
    when the set is not built.
    """
    directory = Path(directory).expanduser()
    path = directory / f"{split}.bin"
    if not path.is_file():
        if not (directory / MANIFEST).is_file():
            raise DataError(f"{directory} is not a built text set (no {split}.bin); build it with "
                            f"`{BUILD_COMMAND}` (or diffcore.data.build('text', 'small')) and pass "
                            "diffcore.data.dataset_dir('text', 'small'), or write your own with tokenize_files")
        have = sorted(p.stem for p in directory.glob("*.bin"))
        raise DataError(f"{directory} has no split {split!r}; it has {', '.join(have) or 'none'}")
    if (directory / MANIFEST).is_file():
        from diffcore.data import load_manifest

        manifest = load_manifest(directory)
        if manifest.get("format") != "tokens" or manifest.get("dtype", "uint16") != "uint16":
            raise DataError(f"{directory} is a {manifest.get('name', '?')} set, not a uint16 token set")
    if path.stat().st_size % 2:
        raise DataError(f"{path} has an odd number of bytes, so it is not a uint16 token file (truncated?); "
                        f"rebuild it (`{BUILD_COMMAND} --force`)")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.uint16).view(np.memmap)
    return np.memmap(path, dtype=np.uint16, mode="r")


# --- a corpus with its own tokenizer ------------------------------------------------------------------


def _corpus_files(source: str | os.PathLike, sources: Iterable[str] | None) -> tuple[Path, dict[str, list[Path]]]:
    """``(root, {split: text files})`` of a built text set (a name such as ``text-small`` or its folder, optionally
    only the documents of some ``sources``) or of a folder with ``train/``, ``validation/``, ``test/`` text files."""
    import csv

    from diffcore.data import dataset_dir

    name = str(source)
    m = re.fullmatch(r"text-(tiny|small|full)", name)
    root = dataset_dir("text", m.group(1)) if m else Path(source).expanduser()
    wanted = set(sources) if sources else None
    if (root / "documents.csv").is_file() and (root / "text").is_dir():
        with open(root / "documents.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        have = sorted({r["source"] for r in rows})
        if wanted and (unknown := wanted - set(have)):
            raise DataError(f"{root} has no source {', '.join(sorted(unknown))}; it has {', '.join(have)}")
        files = {s: [root / "text" / s / f"{r['doc_id']}.txt" for r in rows
                     if r["split"] == s and (wanted is None or r["source"] in wanted)] for s in SPLITS}
        return root, files
    if m or not root.exists():
        hint = f"build it with `diffcore data build text --size {m.group(1)}`" if m else "no such folder"
        raise DataError(f"{root}: not a built text set ({hint})")
    if wanted:
        raise DataError(f"{root} is not a built text set, so it has no sources to choose from; leave out sources")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise DataError(f"{root} needs the folders train/, validation/ and test/ of .txt files (one document per "
                        f"file); it lacks {', '.join(missing)}/")
    return root, {s: _text_paths(root / s) for s in SPLITS}


def tokenize_corpus(source: str | os.PathLike, tokenizer: str | Any, out_dir: str | os.PathLike, *,
                    sources: Iterable[str] | None = None, unknown: str = "replace",
                    progress: bool = False) -> dict[str, Any]:
    """Token files for ``TokenDataModule`` with a tokenizer learnt from the corpus's training split.

    Args:
        source: a built text set (``"text-small"``, or its folder) or a folder with ``train/``,
            ``validation/`` and ``test/`` holding ``.txt`` files (one document per file).
        tokenizer: a spec, ``"char"``, ``"byte"``, ``"bpe:N"`` (a byte-level BPE of N ids) or ``"gpt2"``
            (from the built set), or a tokenizer object to use as it is.
        out_dir: gets ``train.bin``, ``validation.bin``, ``test.bin``, ``tokenizer/`` and ``tokens.json``
            (tokens, characters and UTF-8 bytes per split, and the tokenizer's kind and vocabulary size).
        sources: of a built set, only the documents of these sources (``shakespeare``, ``milton``, ``austen``,
            ``wordnet``); e.g. ``["shakespeare"]`` for nanoGPT's shakespeare_char-like set.
        unknown: a character tokenizer's treatment of characters its training split lacks, in the evaluation
            splits: ``"replace"`` (by U+FFFD, counted per split in ``tokens.json`` as ``unknown``) or ``"error"``.

    Returns the contents of ``tokens.json``.
    """
    import json

    from textdiff.tokenizer import count_characters, train_tokenizer

    root, files = _corpus_files(source, sources)
    for split, paths in files.items():
        if not paths:
            raise DataError(f"{root}: the {split} split has no documents" + (f" from {', '.join(sources)}"
                                                                             if sources else ""))
    if isinstance(tokenizer, str):
        spec = tokenizer
        tokenizer = train_tokenizer(spec, (read_text_file(p) for p in files["train"]), gpt2_dir=root,
                                    unknown=unknown)
    out = Path(out_dir).expanduser()
    tokenizer.save(out / "tokenizer")
    splits = {}
    for split, paths in files.items():
        stats = tokenize_files(paths, tokenizer, out / f"{split}.bin", progress=progress, desc=f"tokenizing {split}")
        ids = np.fromfile(out / f"{split}.bin", dtype=np.uint16)
        splits[split] = {"documents": stats.documents, "tokens": stats.tokens, "bytes_text": stats.bytes_text,
                         "characters": count_characters(tokenizer, ids)}
        if hasattr(tokenizer, "unk_id"):
            splits[split]["unknown"] = int((ids == tokenizer.unk_id).sum())
    info = {"source": str(root), "sources": sorted(sources) if sources else None,
            "tokenizer": {"kind": getattr(tokenizer, "kind", type(tokenizer).__name__),
                          "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id},
            "splits": splits}
    (out / "tokens.json").write_text(json.dumps(info, indent=1) + "\n")
    return info

"""The GPT-2 byte-level BPE tokenizer, rebuilt offline from a ``gpt2.tiktoken`` rank file.

tiktoken's built-in ``"gpt2"`` encoding downloads its vocabulary on first use; here the same vocabulary
comes from the file ``whisper/assets/gpt2.tiktoken`` that ships inside the ``openai-whisper`` source
archive (or from the copy every built text set keeps in ``<set>/tokenizer/``). Together with GPT-2's
pre-tokenization regex and the single special token ``<|endoftext|>`` = 50256 it gives exactly the GPT-2
tokenizer ("Hello world" -> [15496, 995]).

    >>> tok = Tokenizer.from_dir(diffcore.data.dataset_dir("text", "small"))   # a built set, or a folder
    >>> tok.encode("Hello world"), tok.eot_id, tok.vocab_size
    ([15496, 995], 50256, 50257)
"""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from diffcore.data import DataError, MissingDependencyError, require_module

BPE_FILE = "gpt2.tiktoken"
EOT = "<|endoftext|>"
#: SHA-256 of ``whisper/assets/gpt2.tiktoken`` in openai-whisper 20250625 (GPT-2's 50,256 byte-pair ranks).
GPT2_BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"
#: GPT-2's pre-tokenizer: English contractions, letter runs, digit runs and other-symbol runs (each with at most
#: one leading space), then whitespace; BPE merges happen only inside these pieces.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

HOW_TO_GET = (f"get the GPT-2 BPE file with `pip download --no-deps --no-binary :all: {WHISPER_SDIST}` and extract "
              f"it with `tar xzf openai_whisper-20250625.tar.gz openai_whisper-20250625/{WHISPER_MEMBER}`, "
              "or build the text set (`diffcore data build text --size tiny`), which keeps a copy in "
              f"<set>/tokenizer/{BPE_FILE}")


def parse_ranks(bpe: bytes, origin: str = "the BPE file") -> dict[bytes, int]:
    """``{token bytes: rank}`` from the tiktoken format (one ``base64(token) rank`` per line)."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(bpe.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise DataError(f"{origin}, line {n}: expected `<base64 token> <rank>`, got {line[:60]!r} ({e}); "
                            f"it is not a tiktoken rank file: {HOW_TO_GET}") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise DataError(f"{origin}: the ranks are not 0..{len(ranks) - 1} without gaps, so it is not a BPE rank file")
    return ranks


class Tokenizer:
    """GPT-2 byte-level BPE (via tiktoken) with ``<|endoftext|>`` as the only special token.

    Args:
        bpe: the contents of a ``gpt2.tiktoken`` rank file.
        origin: where ``bpe`` came from (used in error messages).
    """

    def __init__(self, bpe: bytes, origin: str = "gpt2.tiktoken"):
        tiktoken = require_module("tiktoken", "pip install tiktoken")
        self.origin = origin
        self._bpe = bytes(bpe)
        ranks = parse_ranks(self._bpe, origin)
        self.eot_id = len(ranks)  # GPT-2 puts its one special token right after the 50,256 merges
        self._enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={EOT: self.eot_id})
        self.sha256 = hashlib.sha256(self._bpe).hexdigest()

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a ``gpt2.tiktoken`` rank file; :class:`MissingDependencyError` (saying how to get it) if absent."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingDependencyError(f"the GPT-2 BPE file {path} does not exist: {HOW_TO_GET}")
        return cls(path.read_bytes(), origin=str(path))

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Load ``<path>/gpt2.tiktoken``; a built text set (whose copy is in ``<path>/tokenizer/``) works too."""
        path = Path(path).expanduser()
        if path.is_file():  # the rank file itself
            return cls.from_file(path)
        for candidate in (path / BPE_FILE, path / "tokenizer" / BPE_FILE):
            if candidate.is_file():
                return cls.from_file(candidate)
        raise MissingDependencyError(f"{path} holds no {BPE_FILE} (nor tokenizer/{BPE_FILE}): {HOW_TO_GET}")

    @classmethod
    def from_whisper_sdist(cls, archive: str | os.PathLike, check: bool = True) -> Tokenizer:
        """Read ``whisper/assets/gpt2.tiktoken`` out of an openai-whisper source archive (nothing is installed).

        Args:
            archive: the ``openai_whisper-*.tar.gz`` from ``pip download --no-deps --no-binary :all:``.
            check: insist that the file is byte-identical to the one GPT-2's vocabulary is known by.
        """
        archive = Path(archive)
        try:
            with tarfile.open(archive, "r:*") as tar:
                member = next((m for m in tar.getmembers() if m.name.endswith("/" + WHISPER_MEMBER)), None)
                if member is None:
                    raise DataError(f"{archive} has no {WHISPER_MEMBER}; use the {WHISPER_SDIST} source archive")
                bpe = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot read {archive} ({e}); delete it and download it again: {HOW_TO_GET}") from e
        tok = cls(bpe, origin=f"{archive}:{WHISPER_MEMBER}")
        if check and tok.sha256 != GPT2_BPE_SHA256:
            raise DataError(f"{archive}:{WHISPER_MEMBER} has SHA-256 {tok.sha256}, not GPT-2's {GPT2_BPE_SHA256}; "
                            f"use the {WHISPER_SDIST} source archive")
        return tok

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the rank file as ``<directory>/gpt2.tiktoken`` (byte-identical to what was loaded); return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / BPE_FILE
        path.write_bytes(self._bpe)
        return path

    # --- use ---------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids (50,257 for GPT-2: 50,256 byte pairs plus ``<|endoftext|>``)."""
        return self._enc.n_vocab

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``.

        Args:
            text: any string that can be written as UTF-8.
            allow_special: map the literal ``<|endoftext|>`` in ``text`` to the end-of-text id. By default it
                is encoded as the ordinary characters it consists of, so users' text can never inject it.

        Raises:
            ValueError: ``text`` holds a character UTF-8 cannot encode (a lone surrogate, as made by decoding
                bytes with ``errors="surrogateescape"``); tiktoken would silently replace it.
        """
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"cannot encode the text: {text[e.start:e.end]!r} at character {e.start} is a lone "
                             "surrogate, which has no UTF-8 form (it usually comes from decoding bytes with "
                             "errors='surrogateescape'); decode the source with its real encoding") from None
        if allow_special:
            return self._enc.encode(text, allowed_special={EOT})
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int] | np.ndarray, errors: str = "replace") -> str:
        """The text of token ``ids`` (a list, NumPy array or CPU tensor).

        Args:
            ids: token ids in ``[0, vocab_size)``; the end-of-text id decodes to ``<|endoftext|>``.
            errors: what to do with byte sequences that are not UTF-8 (a cut through a character):
                ``"replace"`` (U+FFFD) or ``"strict"`` (raise).
        """
        ids = np.asarray(ids).reshape(-1).tolist()
        bad = next((i for i, t in enumerate(ids) if not (isinstance(t, int) and 0 <= t < self.vocab_size)), None)
        if bad is not None:
            raise ValueError(f"token id {ids[bad]!r} at position {bad} is not in [0, {self.vocab_size}) "
                             "(a mask or padding id must be removed before decoding)")
        return self._enc.decode(ids, errors=errors)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id}, origin={self.origin!r})"

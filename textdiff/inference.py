"""Generating text: masked-diffusion sampling with prompts and infilling, AR decoding with a KV cache.

    gen = TextGenerator.from_pretrained("runs/tiny/model")
    gen.sample(n=4, length=128, steps=64, prompt="To be, or not to be", seed=0)
    gen.infill("The [MASK:20] of Denmark", steps=20, seed=0)

Canvas: a sample is a sequence of ``length`` tokens (the prompt included, like the model's training
windows). Positions to generate start as the mask token; known ones (a prompt, the text around
infilling slots) are never changed: the masked sampler only ever fills masks.

Variable length: the model was trained on packed windows where documents end with the end-of-text
token, so it learns to emit it. A sample's text ends at the first end-of-text token it generated
after the prompt (``stop_at_eot``); inside an infilling slot that is followed by more fixed text,
end-of-text is forbidden (the slot must join its two sides), while a slot at the end of the
template may end early.

Infilling template syntax: plain text with slots ``[MASK:N]``, N >= 1 tokens to generate there,
e.g. ``"The [MASK:20] of Denmark"`` or ``"[MASK:8] said the king."``. With a BPE tokenizer
(``strip_before_slot``) whitespace just before a slot is dropped, because BPE word tokens carry their leading
space, so the generated word brings its own; a character or byte tokenizer keeps the template as written.
Any other text that starts like a slot (``[MASK]``, ``[MASK:x]``, ``[MASK:0]``, ``[mask:3]``, an
unclosed ``[MASK:3``) is an error rather than literal text.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from diffcore.discrete import LogLinearMasking, MaskingSchedule, masking_from_config
from diffcore.discrete.samplers import draw_tokens, sample_masked, sample_masked_blocks
from diffcore.pretrained import read_json

from .model import KVCache, TransformerNet

META_FILE = "textdiff.json"
TOKENIZER_DIR = "tokenizer"
SLOT = re.compile(r"\[MASK:([1-9][0-9]*)\]")
SLOT_LIKE = re.compile(r"\[\s*mask", re.IGNORECASE)
Method = Literal["ancestral", "confidence"]


class TokenizerLike(Protocol):
    """What the samplers need of ``textdiff.tokenizer.Tokenizer``."""

    eot_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: str | Path) -> Any: ...


def load_tokenizer(directory: str | Path) -> TokenizerLike:
    """``textdiff.tokenizer.load_tokenizer(directory)``: whichever tokenizer was saved there (character,
    byte, a corpus-trained BPE or GPT-2); imported here, when first needed."""
    from .tokenizer import load_tokenizer as load

    return load(directory)


# --------------------------------------------------------------------------------------------------
# prompts and infilling templates


@dataclass
class Canvas:
    """A sequence to complete: ``tokens`` (L,) with ``mask_id`` where text is to be generated.

    start: first generated position (the prompt's length; 0 for infilling). no_eot: positions where
    end-of-text is forbidden (L,) bool. cut_from: an end-of-text token at or after this position ends
    the text.
    """

    tokens: Tensor
    start: int
    no_eot: Tensor
    cut_from: int


def _encode(tokenizer: TokenizerLike, text: str, what: str) -> list[int]:
    try:
        return list(tokenizer.encode(text))
    except ValueError as e:
        raise ValueError(f"cannot encode the {what}: {e}") from e


def prompt_canvas(tokenizer: TokenizerLike, prompt: str | None, length: int, mask_id: int) -> Canvas:
    """The canvas for a prefix prompt: its tokens, then masks up to ``length`` tokens in all."""
    ids = _encode(tokenizer, prompt, "prompt") if prompt else []
    if len(ids) >= length:
        raise ValueError(f"the prompt is {len(ids)} tokens, which leaves nothing to generate in a sequence of "
                         f"{length} tokens; shorten the prompt or raise the length")
    tokens = torch.tensor(ids + [mask_id] * (length - len(ids)), dtype=torch.long)
    return Canvas(tokens, len(ids), torch.zeros(length, dtype=torch.bool), len(ids))


def parse_infill(template: str, tokenizer: TokenizerLike, mask_id: int) -> Canvas:
    """Turn an infilling template (module docstring: ``[MASK:N]`` slots) into a canvas.

    Raises ValueError for a template without slots, for slot-like text of unknown syntax and for
    text the tokenizer cannot encode.
    """
    pieces: list[str | int] = []
    pos = 0
    for m in SLOT.finditer(template):
        pieces.append(template[pos:m.start()])
        pieces.append(int(m.group(1)))
        pos = m.end()
    pieces.append(template[pos:])
    for piece in pieces:
        if isinstance(piece, str) and (bad := SLOT_LIKE.search(piece)):
            close = piece.find("]", bad.start(), bad.start() + 16)
            snippet = piece[bad.start():close + 1 if close >= 0 else bad.start() + 8]
            raise ValueError(f"unknown slot syntax {snippet!r} in the infilling template; write [MASK:N] for N >= 1 "
                             "tokens to generate, e.g. 'The [MASK:20] of Denmark'")
    if not any(isinstance(p, int) for p in pieces):
        raise ValueError("the infilling template has no [MASK:N] slot, so there is nothing to fill in; "
                         "e.g. 'The [MASK:20] of Denmark'")
    ids: list[int] = []
    no_eot: list[bool] = []
    last_slot_start = 0
    for i, piece in enumerate(pieces):
        if isinstance(piece, int):
            trailing = i + 1 < len(pieces) and any(isinstance(q, int) or q.strip() for q in pieces[i + 1:])
            last_slot_start = len(ids)
            ids += [mask_id] * piece
            no_eot += [trailing] * piece  # a slot with fixed text after it must not end the document
        else:
            if i + 1 < len(pieces) and getattr(tokenizer, "strip_before_slot", True):
                piece = piece.rstrip()  # BPE: the slot's first word token brings its own leading space
            if piece:
                enc = _encode(tokenizer, piece, "infilling template")
                ids += enc
                no_eot += [False] * len(enc)
    return Canvas(torch.tensor(ids, dtype=torch.long), 0, torch.tensor(no_eot), last_slot_start)


def trim_at_eot(ids: list[int], eot_id: int, cut_from: int, skip_leading: bool) -> list[int]:
    """Drop everything from the first end-of-text token at or after ``cut_from`` (with ``skip_leading``,
    end-of-text tokens right at ``cut_from`` are skipped first, for unprompted samples that open a
    new document)."""
    start = cut_from
    if skip_leading:
        while start < len(ids) and ids[start] == eot_id:
            start += 1
        ids = ids[:cut_from] + ids[start:]
    for i in range(cut_from, len(ids)):
        if ids[i] == eot_id:
            return ids[:i]
    return ids


# --------------------------------------------------------------------------------------------------
# autoregressive decoding


@torch.inference_mode()
def sample_autoregressive(net: TransformerNet, prefix: Tensor, length: int, *, temperature: float = 1.0,
                          top_k: int | None = None, top_p: float | None = None,
                          generator: torch.Generator | None = None, use_cache: bool = True,
                          stop_id: int | None = None) -> Tensor:
    """Decode a causal ``TransformerNet`` from BOS + ``prefix`` (B, P) to ``length`` tokens (B, length).

    With ``use_cache`` each new token costs one single-position forward pass against the KV cache;
    without it every step recomputes the whole prefix (the reference the cache is tested against).
    With ``stop_id`` a row that emitted it is padded with it, and decoding stops when all rows have.
    """
    if not net.causal:
        raise ValueError("autoregressive decoding needs a causal net")
    if prefix.ndim != 2 or prefix.shape[1] >= length:
        raise ValueError(f"prefix must be (batch, P) with P < length={length}, got {tuple(prefix.shape)}")
    b = prefix.shape[0]
    x = torch.cat([torch.full((b, 1), net.mask_id, dtype=torch.long, device=prefix.device), prefix.long()], 1)
    device_type = prefix.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    cache = KVCache(net, b, length, dtype=dtype) if use_cache else None  # BOS + length - 1 inputs at most
    logits = net(x, cache=cache)[:, -1]
    done = torch.zeros(b, dtype=torch.bool, device=prefix.device)
    while True:
        tok = draw_tokens(logits, temperature, top_k, top_p, generator)
        if stop_id is not None:
            tok = torch.where(done, torch.full_like(tok, stop_id), tok)
            done = done | (tok == stop_id)
        x = torch.cat([x, tok[:, None]], 1)
        if x.shape[1] == length + 1 or bool(done.all()):
            break
        logits = (net(tok[:, None], cache=cache) if use_cache else net(x))[:, -1]
    out = x[:, 1:]
    if out.shape[1] < length:
        out = torch.cat([out, torch.full((b, length - out.shape[1]), stop_id, dtype=out.dtype, device=out.device)], 1)
    return out


# --------------------------------------------------------------------------------------------------
# the user-facing generator


def _check_steps(steps: int | None) -> None:
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer (the number of denoising steps), got {steps!r}")


class TextGenerator:
    """A trained text model (masked diffusion or its AR twin) with its tokenizer, ready to generate.

    Args:
        net: the ``TransformerNet`` (bidirectional for kind "diffusion", causal for "ar").
        tokenizer: ``textdiff.tokenizer.Tokenizer`` (or any object with its interface).
        kind: "diffusion" or "ar".
        schedule: the masking schedule used in training (diffusion only; default log-linear).
        device: where to run.
        bf16: run the network under bf16 autocast on CUDA (sampling itself stays in float64).
    """

    def __init__(self, net: TransformerNet, tokenizer: TokenizerLike, kind: str = "diffusion",
                 schedule: MaskingSchedule | None = None, device: str | torch.device | None = None,
                 bf16: bool = True):
        if kind not in ("diffusion", "ar"):
            raise ValueError(f"kind must be 'diffusion' or 'ar', got {kind!r}")
        if net.causal != (kind == "ar"):
            raise ValueError(f"a {kind} generator needs a {'causal' if kind == 'ar' else 'bidirectional'} net")
        if tokenizer.vocab_size != net.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model {net.vocab_size}")
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net = net.to(self.device).eval()
        self.tokenizer, self.kind = tokenizer, kind
        self.schedule = schedule or LogLinearMasking()
        self.bf16 = bf16 and self.device.type == "cuda"

    # ---------------------------------------------------------------------------------------------- I/O

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        tokenizer: TokenizerLike | None = None) -> TextGenerator:
        """Load a model saved by ``save_pretrained`` (or ``textdiff export``): net, kind, schedule and
        the tokenizer stored in its ``tokenizer/`` folder (unless one is given)."""
        root = Path(directory).expanduser()
        net = TransformerNet.from_pretrained(root, map_location=device)
        meta = read_json(root, META_FILE)
        schedule = masking_from_config(meta["schedule"]) if meta.get("schedule") else None
        if tokenizer is None:
            tokenizer = load_tokenizer(root / TOKENIZER_DIR)
        return cls(net, tokenizer, meta.get("kind", "diffusion"), schedule, device)

    def metadata(self) -> dict[str, Any]:
        meta = {"kind": self.kind, "mask_id": self.net.mask_id, "seq_len": self.net.max_len}
        if self.kind == "diffusion":
            meta["schedule"] = self.schedule.config()
        return meta

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the net (config.json, model.safetensors), textdiff.json and the tokenizer/ folder."""
        root = self.net.save_pretrained(directory, extra={META_FILE: self.metadata()})
        self.tokenizer.save(root / TOKENIZER_DIR)
        return root

    # ---------------------------------------------------------------------------------------------- sampling

    def _generator(self, seed: int | None) -> torch.Generator:
        g = torch.Generator(self.device)
        g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        return g

    def logits_fn(self, no_eot: Tensor | None = None):
        """``diffcore.discrete``'s ``logits_fn(z_t, t)`` for this net; end-of-text is forbidden at the
        ``no_eot`` positions (L,)."""
        eot = self.tokenizer.eot_id
        use_t = self.net.time_conditioning

        def fn(z: Tensor, t: Tensor) -> Tensor:
            logits = self.net(z, t if use_t else None).float()
            if no_eot is not None and bool(no_eot.any()):
                logits[:, no_eot.to(z.device), eot] = float("-inf")
            return logits

        return fn

    @torch.inference_mode()
    def fill(self, canvas: Canvas, n: int = 1, *, steps: int | None = None, method: Method = "ancestral",
             block_size: int | None = None, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None, cache: bool = True,
             return_stats: bool = False):
        """Complete ``n`` copies of a canvas; returns tokens (n, L) (and ``SamplingStats`` for diffusion)."""
        _check_steps(steps)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        length = canvas.tokens.shape[0]
        if length > self.net.max_len:
            warnings.warn(f"generating {length} tokens with a model trained on windows of {self.net.max_len}",
                          stacklevel=3)
        g = self._generator(seed)
        z = canvas.tokens.to(self.device).expand(n, -1).clone()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._fill(canvas, z, g, steps, method, block_size, temperature, top_k, top_p, cache, return_stats)

    def _fill(self, canvas: Canvas, z: Tensor, g: torch.Generator, steps: int | None, method: Method,
              block_size: int | None, temperature: float, top_k: int | None, top_p: float | None, cache: bool,
              return_stats: bool):
        length = z.shape[1]
        if self.kind == "ar":
            if bool((z[:, canvas.start:] != self.net.mask_id).any()):
                raise ValueError("the autoregressive twin can only continue a prefix; use a diffusion model to infill")
            out = sample_autoregressive(self.net, z[:, :canvas.start], length, temperature=temperature, top_k=top_k,
                                        top_p=top_p, generator=g)
            return (out, None) if return_stats else out
        n_masked = int((canvas.tokens == self.net.mask_id).sum())
        steps = steps or n_masked
        kw = {"method": method, "temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": g,
              "cache": cache, "time_conditioned": self.net.time_conditioning, "return_stats": True}
        fn = self.logits_fn(canvas.no_eot)
        trained = self.net.block_size
        if trained is not None:  # a block-diffusion net sees only decoded blocks as its past: blocks in order
            if block_size and trained % block_size:
                raise ValueError(f"this model was trained on blocks of {trained} tokens: sample with blocks of "
                                 f"{trained} or a divisor of it (--block-size), or leave the block size out")
            block_size = block_size or trained
        if block_size:
            out, stats = sample_masked_blocks(fn, z, steps, self.schedule, self.net.mask_id, block_size=block_size,
                                              **kw)
        else:
            out, stats = sample_masked(fn, z, steps, self.schedule, self.net.mask_id, **kw)
        return (out, stats) if return_stats else out

    def _decode(self, tokens: Tensor, canvas: Canvas, stop_at_eot: bool) -> list[str]:
        texts = []
        for row in tokens.tolist():
            if stop_at_eot:
                row = trim_at_eot(row, self.tokenizer.eot_id, canvas.cut_from, skip_leading=canvas.cut_from == 0)
            texts.append(self.tokenizer.decode(row))
        return texts

    def sample(self, n: int = 1, *, length: int | None = None, steps: int | None = None, prompt: str | None = None,
               method: Method = "ancestral", block_size: int | None = None, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop_at_eot: bool = True) -> list[str]:
        """Generate ``n`` texts of up to ``length`` tokens (default: the training length), the prompt
        included, with ``steps`` denoising steps (default: one per generated token; ignored by the AR
        twin). ``block_size`` decodes semi-autoregressively (a block-diffusion model always does, in its own
        blocks unless given a divisor of them); ``method`` "confidence" is LLaDA's
        low-confidence remasking. Returns the texts (the prompt included), cut at end-of-text."""
        canvas = prompt_canvas(self.tokenizer, prompt, length or self.net.max_len, self.net.mask_id)
        tokens = self.fill(canvas, n, steps=steps, method=method, block_size=block_size, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed)
        return self._decode(tokens, canvas, stop_at_eot)

    def infill(self, template: str, n: int = 1, *, steps: int | None = None, method: Method = "ancestral",
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None, stop_at_eot: bool = True) -> list[str]:
        """Fill the ``[MASK:N]`` slots of ``template`` (module docstring); returns ``n`` texts. A block-diffusion
        model fills its blocks left to right and sees fixed text only up to the end of the block it fills."""
        if self.kind == "ar":
            raise ValueError("the autoregressive twin cannot infill; load a masked diffusion model")
        canvas = parse_infill(template, self.tokenizer, self.net.mask_id)
        tokens = self.fill(canvas, n, steps=steps, method=method, temperature=temperature, top_k=top_k,
                           top_p=top_p, seed=seed)
        return self._decode(tokens, canvas, stop_at_eot)


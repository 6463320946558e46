"""The text transformer shared by the masked diffusion LM and its autoregressive twin.

One ``TransformerNet`` class serves both: ``causal=False`` gives the bidirectional denoiser of the
masked diffusion model (MDLM), ``causal=True`` the next-token model (the "AR twin") with exactly
the same layers, widths and parameter count, so the two can be compared like for like.

Vocabulary layout (``vocab_size`` = V real tokens, e.g. 50257 for GPT-2 BPE):

    ids 0 .. V-1      real tokens (the end-of-text id among them)
    id  V             the extra token: MASK for the diffusion model, BOS (start of window) for the AR twin
    ids V+1 .. R-1    padding rows of the embedding (R = V + 1 rounded up to ``pad_multiple``), never used

The logits have V + 1 columns; the last one (id V) is always -inf, so neither model can ever
predict the mask/BOS token (the "zero masking probabilities" half of MDLM's SUBS parameterisation),
and the padding rows are never predicted because they are not in the output at all.

Layers: pre-norm blocks, rotary position embeddings (RoPE, Su et al. 2021) on queries and keys,
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels where the
device has them; no flash-attn dependency), a GELU MLP, tied input/output embeddings by default.
With ``time_conditioning=True`` each block's norms are modulated by an embedding of t (adaptive
LayerNorm, as in SEDD's DiT blocks); MDLM found the masked model does not need it, so it is off by
default, which also lets the sampler reuse network outputs between steps where nothing changed.

Block diffusion (``block_size``; BD3-LM, Arriola et al. 2025): the window is cut into blocks of
``block_size`` tokens; the net reads the noisy window and a clean copy side by side (2L tokens, one
attention pass). A noisy token sees its own block's noisy tokens and the clean tokens of earlier blocks;
a clean token sees the clean tokens of its own and earlier blocks. So each block is denoised given the
clean past only: autoregressive over blocks, masked diffusion within one (block size 1 is an AR model,
block size L is MDLM). In sampling the clean copy is the sequence itself, whose earlier blocks are
already decoded (``textdiff.inference`` fills blocks left to right).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcore.discrete import MaskingSchedule, block_times, masked_nelbo
from diffcore.losses import TimeSampling, sample_t
from diffcore.nn import NoiseLevelEmbedding
from diffcore.pretrained import PretrainedMixin, capture_config

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 128, "depth": 4, "heads": 4},      # CPU tests and demos (~0.8M + embeddings)
    "mini": {"dim": 384, "depth": 6, "heads": 6},
    "small": {"dim": 768, "depth": 12, "heads": 12},   # MDLM/GPT-2 small: 85M + 39M tied embeddings
}
"""Named sizes for ``TransformerNet.from_size``."""


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i + d/2}) of x (B, H, T, D) by the angles whose cos/sin are (T, D/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.type_as(x)


class KVCache:
    """Keys and values of every layer for incremental decoding with a causal ``TransformerNet``.

    Preallocated as (depth, B, H, max_len, head_dim); ``pos`` is the number of positions already
    written. ``net(x, cache=cache)`` appends x's keys/values at ``pos`` and advances it.
    """

    def __init__(self, net: TransformerNet, batch: int, max_len: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        if not net.causal:
            raise ValueError("a KV cache needs a causal (autoregressive) TransformerNet")
        p = next(net.parameters())
        shape = (net.depth, batch, net.heads, max_len, net.dim // net.heads)
        self.k = torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0
        self.max_len = max_len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, T, D) at positions pos..pos+T-1; return all keys/values up to pos+T."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache of length {self.max_len} is full (needs {end})")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, causal: bool, dropout: float):
        super().__init__()
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None, layer: int,
                mask: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        is_causal = self.causal and mask is None
        if cache is not None:
            start = cache.pos
            k, v = cache.update(layer, k, v)
            if n == 1:  # one new query attends to every cached key
                is_causal = False
            elif start > 0:  # query i sits at absolute position start + i: keys up to there are visible
                keys = torch.arange(start + n, device=x.device)
                mask = keys[None, :] <= start + torch.arange(n, device=x.device)[:, None]
                is_causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block; with a condition c (B, dim) the norms get a learnt scale and shift."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, causal: bool, dropout: float, conditioned: bool):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, bias=False)
        self.attn = Attention(dim, heads, causal, dropout)
        self.norm2 = nn.LayerNorm(dim, bias=False)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)
        # adaptive LayerNorm: (shift1, scale1, shift2, scale2) from c; TransformerNet zero-initialises it
        self.ada = nn.Linear(dim, 4 * dim) if conditioned else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, c: Tensor | None, cache: KVCache | None,
                layer: int, mask: Tensor | None = None) -> Tensor:
        h1, h2 = self.norm1(x), None
        if self.ada is not None and c is not None:
            shift1, scale1, shift2, scale2 = self.ada(c)[:, None].chunk(4, dim=-1)
            h1 = h1 * (1 + scale1) + shift1
        x = x + self.drop(self.attn(h1, cos, sin, cache, layer, mask))
        h2 = self.norm2(x)
        if self.ada is not None and c is not None:
            h2 = h2 * (1 + scale2) + shift2
        return x + self.drop(self.fc2(F.gelu(self.fc1(h2), approximate="tanh")))


class TransformerNet(PretrainedMixin, nn.Module):
    """Bidirectional (masked diffusion) or causal (AR twin) transformer over token ids.

    Args:
        vocab_size: number of real tokens V; id V is the mask (diffusion) / BOS (AR) token.
        dim, depth, heads: width, number of blocks, attention heads (dim % heads == 0, head dim even).
        mlp_ratio: MLP hidden width as a multiple of dim.
        max_len: the sequence length the model is trained at (recorded for samplers; RoPE itself
            works at any length).
        causal: causal attention (the AR twin) instead of bidirectional.
        time_conditioning: condition every block on the diffusion time t (adaptive LayerNorm).
        tie_weights: share the input embedding with the output projection.
        dropout: dropout on attention weights and residual branches.
        rope_base: RoPE frequency base.
        pad_multiple: round the embedding table's rows (V + 1) up to a multiple of this.
        block_size: block diffusion (module docstring): each block of this many tokens is denoised given
            the clean earlier blocks. None (default): one block, plain masked diffusion or the AR twin.
    """

    def __init__(self, vocab_size: int = 50257, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, max_len: int = 128, causal: bool = False, time_conditioning: bool = False,
                 tie_weights: bool = True, dropout: float = 0.0, rope_base: float = 10000.0, pad_multiple: int = 64,
                 block_size: int | None = None):
        super().__init__()
        self.config = capture_config(locals())
        if vocab_size < 1 or dim < 1 or depth < 1 or heads < 1 or max_len < 1 or pad_multiple < 1:
            raise ValueError("vocab_size, dim, depth, heads, max_len and pad_multiple must be positive")
        if block_size is not None:
            if block_size < 1:
                raise ValueError(f"block_size must be >= 1, got {block_size}")
            if causal or time_conditioning:
                raise ValueError("block diffusion (block_size) needs causal=False and time_conditioning=False: "
                                 "the blocks already order the sequence, and blocks have different times")
        self.block_size = block_size
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads}) with an even head dim (RoPE)")
        self.vocab_size, self.dim, self.depth, self.heads = vocab_size, dim, depth, heads
        self.max_len, self.causal, self.time_conditioning = max_len, causal, time_conditioning
        self.mask_id = vocab_size  # also the AR twin's BOS
        rows = math.ceil((vocab_size + 1) / pad_multiple) * pad_multiple
        self.embed = nn.Embedding(rows, dim)
        self.time_embed = NoiseLevelEmbedding(dim) if time_conditioning else None
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, causal, dropout, time_conditioning)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, bias=False)
        self.head = None if tie_weights else nn.Linear(dim, vocab_size + 1, bias=False)
        half = dim // heads // 2
        inv_freq = rope_base ** (-torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: scale residual projections by 1/sqrt(2 depth)
            for lin in (block.attn.proj, block.fc2):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * depth))
            if block.ada is not None:  # conditioning starts as the identity
                nn.init.zeros_(block.ada.weight)
                nn.init.zeros_(block.ada.bias)

    @classmethod
    def from_size(cls, size: str, **kwargs: Any) -> TransformerNet:
        """A named size from ``SIZES`` ("tiny", "mini", "small"); other arguments pass through."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
        return cls(**{**SIZES[size], **kwargs})

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once); optionally without the token embedding table."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM's 6N + 12 * depth * dim * seq_len, with N
        counting the output projection (V + 1 columns) but not the embedding lookup."""
        seq_len = seq_len or self.max_len
        n = self.num_parameters(exclude_embeddings=True) + self.dim * (self.vocab_size + 1)
        if self.head is not None:
            n -= self.head.weight.numel()  # already counted above
        return 6.0 * n + 12.0 * self.depth * self.dim * seq_len

    def forward(self, x: Tensor, t: Tensor | None = None, *, cache: KVCache | None = None,
                positions: Tensor | None = None, clean: Tensor | None = None) -> Tensor:
        """Logits (B, T, V + 1) for token ids x (B, T); column V (mask/BOS) is always -inf.

        Args:
            x: token ids in [0, V] (V = the mask token for diffusion, BOS for the AR twin).
            t: diffusion times (B,), used only if the net was built with ``time_conditioning``
                (and then required); ignored otherwise.
            cache: a ``KVCache`` for incremental causal decoding: x holds the next positions.
            positions: optional bool (B, T): return logits (N, V + 1) for only these positions, in
                row-major order. The output projection is most of a small model's cost (V = 50,257), and
                the masked-diffusion loss needs it only where tokens are masked.
            clean: block diffusion only: the clean tokens (B, T) that later blocks see as their past (the
                data x0 in training); default x itself, which is right when x's earlier blocks are decoded.
        """
        if x.ndim != 2:
            raise ValueError(f"x must be (batch, length) token ids, got shape {tuple(x.shape)}")
        b, n = x.shape
        c = None
        if self.time_embed is not None:
            if t is None:
                raise ValueError("this TransformerNet is time-conditioned: pass t (B,)")
            c = self.time_embed(t.reshape(b).to(x.device))
        start = cache.pos if cache is not None else 0
        pos = torch.arange(start, start + n, device=x.device, dtype=torch.float32)
        angles = pos[:, None] * self.inv_freq[None, :]  # (T, D/2)
        cos, sin = angles.cos(), angles.sin()
        mask = None
        if self.block_size is not None:
            if cache is not None:
                raise ValueError("a block-diffusion net takes no KV cache")
            clean = x if clean is None else clean
            if clean.shape != x.shape:
                raise ValueError(f"clean must have the shape of x {tuple(x.shape)}, got {tuple(clean.shape)}")
            x = torch.cat([x, clean], dim=1)  # (B, 2T): noisy, then clean, at the same positions
            cos, sin = cos.repeat(2, 1), sin.repeat(2, 1)
            mask = block_attention_mask(n, self.block_size, x.device)
        elif clean is not None:
            raise ValueError("clean is for block diffusion nets (block_size)")
        h = self.embed(x)
        for i, block in enumerate(self.blocks):
            h = block(h, cos, sin, c, cache, i, mask)
        if cache is not None:
            cache.pos += n
        h = self.norm(h[:, :n])
        if positions is not None:
            if positions.shape != (b, n):
                raise ValueError(f"positions must be a bool mask of shape {(b, n)}, got {tuple(positions.shape)}")
            h = h[positions.to(torch.bool)]
        weight = self.head.weight if self.head is not None else self.embed.weight[: self.vocab_size + 1]
        logits = F.linear(h, weight)
        logits[..., self.mask_id] = float("-inf")  # never predict mask/BOS (SUBS: zero masking probabilities)
        return logits


def block_attention_mask(length: int, block_size: int, device: torch.device | str | None = None) -> Tensor:
    """Which of the 2L tokens [noisy, clean] each attends to (2L, 2L) bool, for block diffusion.

    Noisy token i (block b_i) sees noisy tokens of block b_i and clean tokens of blocks < b_i; clean
    token i sees clean tokens of blocks <= b_i. Every token sees itself, so no row is empty.
    """
    b = torch.arange(length, device=device) // block_size
    same = b[:, None] == b[None, :]
    before = b[:, None] > b[None, :]
    top = torch.cat([same, before], dim=1)  # noisy queries: [noisy keys, clean keys]
    bottom = torch.cat([torch.zeros_like(same), same | before], dim=1)  # clean queries
    return torch.cat([top, bottom], dim=0)


def ar_nll(net: torch.nn.Module, x: Tensor, bos_id: int, reduce: bool = True) -> Tensor:
    """Next-token negative log-likelihood of windows x (B, L) given a BOS token, in nats per token.

    ``net`` maps (B, L) ids to (B, L, V + 1) logits; returns the mean over all tokens, or the
    per-window means (B,) with ``reduce=False``.
    """
    bos = torch.full_like(x[:, :1], bos_id)
    logits = net(torch.cat([bos, x[:, :-1]], dim=1))
    nll = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction="none").view_as(x)
    return nll.mean() if reduce else nll.mean(1)


def draw_times(net: TransformerNet, x0: Tensor, method: TimeSampling = "stratified", *, t_min: float = 1e-3,
               t_max: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Diffusion times for windows x0 (B, L) in [t_min, t_max]: one per window (B,), or for a block-diffusion
    net one per block, repeated over its positions (B, L)."""
    if net.block_size is None:
        return sample_t(x0.shape[0], method, t_min=t_min, t_max=t_max, generator=generator, device=x0.device)
    return block_times(x0.shape[0], x0.shape[1], net.block_size, method, t_min=t_min, t_max=t_max,
                       generator=generator, device=x0.device)


def diffusion_nelbo(net: TransformerNet, x0: Tensor, schedule: MaskingSchedule, *,
                    time_sampling: TimeSampling = "stratified", t_min: float = 1e-3, t_max: float = 1.0,
                    generator: torch.Generator | None = None, reduce: bool = True,
                    run: torch.nn.Module | None = None) -> Tensor:
    """One Monte-Carlo draw of a masked-diffusion net's NELBO on windows x0 (B, L), nats per token.

    ``diffcore.discrete.masked_nelbo`` with the output layer run only at masked positions; for a block
    net each block gets its own time (``draw_times``) and sees the clean x0 of earlier blocks, which makes
    the value a bound on the same -log p(x0) (sum over blocks of each block's bound). ``run``: the module
    to call instead of ``net`` (a ``torch.compile``d wrapper of it). ``reduce=False``: per-window values (B,).
    ``t_max`` < 1 (a training choice: ``MaskedDiffusionModule(train_t=...)``) leaves out the noisiest times:
    then the value is the restricted integrand's mean, no longer a bound.
    """
    run = run if run is not None else net
    t = draw_times(net, x0, time_sampling, t_min=t_min, t_max=t_max, generator=generator)
    use_t = net.time_conditioning
    kw = {"clean": x0} if net.block_size is not None else {}
    fn = lambda z, tt: run(z, tt if use_t else None, **kw)  # noqa: E731
    at = lambda z, tt, positions: run(z, tt if use_t else None, positions=positions, **kw)  # noqa: E731
    return masked_nelbo(fn, x0, schedule, net.mask_id, t=t, generator=generator, reduce=reduce, logits_at=at)

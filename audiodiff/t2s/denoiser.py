"""Latent denoisers conditioned on a caption: a UNet with cross-attention and a DiT, one interface.

    net(z_t, c_noise, *, text, text_mask, frame_mask=None) -> prediction (same shape as z_t)

* ``z_t``: noisy latents (B, C, H, W) (H latent bands, W latent frames; W may be any length).
* ``c_noise``: the noise level per example (B,), as ``diffcore.parameterization.as_denoiser`` passes it.
* ``text``: caption token states (B, L, text_dim) from a frozen encoder, or token ids (B, L) when the net
  owns a trainable ``CaptionTransformer`` (``text_vocab_size`` set).
* ``text_mask``: (B, L) bool, True at real tokens; padding never reaches the output.
* ``frame_mask``: (B, W) bool, True at real latent frames; padded frames are hidden from self-attention.

With ``pooled_text`` a linear projection of the caption's mean token state (over real tokens) is added to
the noise-level embedding, so every residual block's FiLM sees the caption as well as the attention layers
(the "pooled + token" conditioning of Imagen, Saharia et al. 2022, Sec. 2.2).

Cross-attention (queries from the latent, keys and values from the caption) follows the latent diffusion
UNet (Rombach et al. 2022, Sec. 3.3); the DiT follows Peebles & Xie 2023 (adaLN-Zero blocks over patches)
with a cross-attention layer added to each block. Both attend to one extra learned key/value ("null
token") beside the caption, so attention is well defined even when a caption has no unmasked token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcore.nn import FiLM, NoiseLevelEmbedding
from diffcore.pretrained import PretrainedMixin, capture_config, class_path, import_class

from .text_encoder import CaptionTransformer


class Attention(nn.Module):
    """Multi-head attention of queries x (B, N, dim) over a context (B, M, ctx_dim), with a key mask.

    ``null_token``: one learned key/value is always attended besides the context (see the module doc).
    The output projection starts at zero, so a new attention layer is the identity in a residual branch.
    """

    def __init__(self, dim: int, heads: int, ctx_dim: int | None = None, null_token: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        ctx_dim = ctx_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(ctx_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.null = nn.Parameter(torch.randn(2, dim) / math.sqrt(dim)) if null_token else None

    def forward(self, x: Tensor, ctx: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        ctx = x if ctx is None else ctx
        b, n, d = x.shape
        k, v = self.kv(ctx).chunk(2, dim=-1)  # (B, M, dim)
        if self.null is not None:
            k = torch.cat([self.null[0].expand(b, 1, d).to(k.dtype), k], 1)
            v = torch.cat([self.null[1].expand(b, 1, d).to(v.dtype), v], 1)
            if key_mask is not None:
                key_mask = F.pad(key_mask.bool(), (1, 0), value=True)
        split = lambda t: t.reshape(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        mask = key_mask.bool()[:, None, None, :] if key_mask is not None else None  # (B, 1, 1, M)
        o = F.scaled_dot_product_attention(split(self.q(x)), split(k), split(v), attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__(nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim))


class CaptionDenoiser(nn.Module, PretrainedMixin):
    """Base of the caption-conditioned denoisers: the noise-level embedding and the caption input (states
    or token ids). ``CaptionDenoiser.from_pretrained(dir)`` loads whichever subclass was saved."""

    in_channels: int

    def _init_conditioning(self, emb_dim: int, text_dim: int | None, text_vocab_size: int | None,
                           text_encoder_dim: int, text_encoder_depth: int, pooled_text: bool = False,
                           token_vocab_size: int | None = None, token_dim: int = 32, text_width: int | None = None,
                           text_layers: int = 0, heads: int = 4) -> int:
        self.time_embed = NoiseLevelEmbedding(emb_dim)
        self.text_dim = None if text_vocab_size is not None else text_dim
        self.token_vocab_size = token_vocab_size if text_vocab_size is None else None
        self.caption_adapter: CaptionAdapter | None = None
        if text_vocab_size is not None:
            self.caption_encoder = CaptionTransformer(text_vocab_size, text_encoder_dim, text_encoder_depth)
            ctx = text_encoder_dim
        elif text_dim is None:
            raise ValueError("give text_dim (width of a pretrained encoder's states) or text_vocab_size "
                             "(token ids, with a caption encoder trained in the net)")
        else:
            self.caption_encoder, ctx = None, text_dim
            if token_vocab_size or text_width or text_layers:
                self.caption_adapter = CaptionAdapter(text_dim, token_vocab_size, token_dim, text_width, text_layers,
                                                      heads)
                ctx = self.caption_adapter.dim
        self.text_pool = nn.Linear(ctx, emb_dim) if pooled_text else None
        if self.text_pool is not None:  # starts as the net without it
            nn.init.zeros_(self.text_pool.weight)
            nn.init.zeros_(self.text_pool.bias)
        return ctx

    def _embedding(self, c_noise: Tensor, batch: int, text: Tensor, text_mask: Tensor) -> Tensor:
        """The noise-level embedding (B, emb_dim), plus the projected mean caption state with ``pooled_text``."""
        emb = self.time_embed(c_noise.float().expand(batch) if c_noise.ndim == 0 else c_noise.float())
        if self.text_pool is not None:
            w = text_mask.to(text.dtype)[..., None]
            pooled = (text * w).sum(1) / w.sum(1).clamp(min=1)
            emb = emb + self.text_pool(pooled).to(emb.dtype)
        return emb

    @property
    def uses_token_ids(self) -> bool:
        """True when the net embeds token ids itself (a ``ByteTextEncoder`` feeds it)."""
        return self.caption_encoder is not None

    def _text_states(self, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        if self.caption_encoder is not None:
            if text.is_floating_point():
                raise TypeError("this net encodes captions itself: pass token ids (B, L) as text")
            return self.caption_encoder(text, text_mask), text_mask.bool()
        width = self.text_dim + (1 if self.token_vocab_size else 0)
        if not text.is_floating_point() or text.ndim != 3 or text.shape[-1] != width:
            last = " (the token id last)" if width > self.text_dim else ""
            raise TypeError(f"expected caption states (B, L, {width}){last}, got {tuple(text.shape)} {text.dtype}")
        if self.caption_adapter is not None:
            text = self.caption_adapter(text, text_mask.bool())
        return text, text_mask.bool()


class CaptionAdapter(nn.Module):
    """Trainable layers between a frozen encoder's token states and the denoiser's attention.

    * ``token_vocab_size``: the states come with each token's id in one extra last column (a
      ``PretrainedTextEncoder(token_ids=True)``); a trainable ``token_dim``-wide embedding of the id is
      concatenated to the states. A frozen encoder's last-layer states of two captions that differ in one word
      stay close (cosine ~0.99 for MiniLM); the id embedding gives the word's identity directly.
    * ``width``: a linear projection to this width; ``layers``: pre-norm transformer layers over the tokens
      (padding masked), so the word's context is learned too.

    (B, L, text_dim [+ 1]) states, (B, L) mask -> (B, L, dim) with ``dim`` = width or text_dim [+ token_dim].
    """

    def __init__(self, text_dim: int, token_vocab_size: int | None = None, token_dim: int = 32,
                 width: int | None = None, layers: int = 0, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(token_vocab_size, token_dim) if token_vocab_size else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=1.0)  # the scale of the LayerNorm-ed MiniLM states
        dim = text_dim + (token_dim if self.embed is not None else 0)
        self.proj = nn.Linear(dim, width) if width else None
        self.dim = width or dim
        if layers and self.dim % heads:
            raise ValueError(f"caption width {self.dim} is not divisible by heads {heads}")
        layer = nn.TransformerEncoderLayer(self.dim, heads, 2 * self.dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None

    def forward(self, text: Tensor, mask: Tensor) -> Tensor:
        if self.embed is not None:
            ids = text[..., -1].round().long().clamp(0, self.embed.num_embeddings - 1)
            text = torch.cat([text[..., :-1], self.embed(ids).to(text.dtype)], -1)
        if self.proj is not None:
            text = self.proj(text)
        if self.layers is not None:
            text = self.layers(text, src_key_padding_mask=~mask)
        return text


# --------------------------------------------------------------------------------------------------
# UNet


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> FiLM(noise level) -> GroupNorm -> SiLU -> conv, plus a skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(groups, cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = FiLM(cout, emb_dim)
        self.norm2, self.conv2 = nn.GroupNorm(min(groups, cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.film(h, emb)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Over the H x W positions of a feature map: [self-attention], cross-attention to the caption, MLP;
    each a pre-LayerNorm residual branch whose output layer starts at zero."""

    def __init__(self, ch: int, heads: int, text_dim: int, self_attention: bool):
        super().__init__()
        self.self_attn = Attention(ch, heads) if self_attention else None
        self.norm1 = nn.LayerNorm(ch) if self_attention else None
        self.norm2, self.cross = nn.LayerNorm(ch), Attention(ch, heads, text_dim, null_token=True)
        self.norm3, self.ff = nn.LayerNorm(ch), FeedForward(ch, 2)
        nn.init.zeros_(self.ff[-1].weight)
        nn.init.zeros_(self.ff[-1].bias)

    def attend(self, tokens: Tensor, text: Tensor, text_mask: Tensor, key_mask: Tensor | None) -> Tensor:
        """The residual branches on (B, N, ch) tokens; ``key_mask`` (B, N) hides tokens from self-attention."""
        if self.self_attn is not None:
            tokens = tokens + self.self_attn(self.norm1(tokens), key_mask=key_mask)
        tokens = tokens + self.cross(self.norm2(tokens), text, text_mask)
        return tokens + self.ff(self.norm3(tokens))

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor, frame_mask: Tensor | None) -> Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H * W, C), time varies fastest
        keys = None
        if frame_mask is not None and self.self_attn is not None:
            keys = frame_mask[:, None, :].expand(b, h, w).reshape(b, h * w)
        return self.attend(tokens, text, text_mask, keys).transpose(1, 2).reshape(b, c, h, w)


class FrameBlock(nn.Module):
    """A transformer layer over the latent frames of a feature map: each frame column (all bands and
    channels at one time step) is one token, so a token sees the whole spectrum at that instant.

    (B, C, H, W) -> (B, C, H, W): the C * H column is projected to ``dim``, a sinusoid of the frame index
    added, then an ``AttentionBlock``'s branches over the frames (self-attention with padded frames masked,
    cross-attention to the caption, MLP); projected back and added to the map. The back projection starts
    at zero, so a new block is the identity. Why: the UNet's convolutions see a few frames and bands at a
    time, so repeated events ("three short beeps") must be kept alike by local context alone; here every
    frame can look at every other one (the DiT's frame tokens got the pitch word right, but not the frame
    structure a UNet gets for free: README results).
    """

    def __init__(self, ch: int, bands: int, dim: int, heads: int, text_dim: int):
        super().__init__()
        self.ch, self.bands = ch, bands
        self.proj_in = nn.Linear(ch * bands, dim)
        self.layer = AttentionBlock(dim, heads, text_dim, self_attention=True)
        self.proj_out = nn.Linear(dim, ch * bands)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor, frame_mask: Tensor | None) -> Tensor:
        b, c, h, w = x.shape
        if (c, h) != (self.ch, self.bands):
            raise ValueError(f"FrameBlock built for {self.ch} channels x {self.bands} bands, got {c} x {h}: "
                             "frame_attention needs the latent height the net was built with (latent_height)")
        cols = x.permute(0, 3, 1, 2).reshape(b, w, c * h)  # (B, W, C * H)
        t = self.proj_in(cols)
        t = t + _sinusoid(torch.arange(w, device=x.device), t.shape[-1]).to(t.dtype)[None]
        t = self.layer.attend(t, text, text_mask, frame_mask)
        return x + self.proj_out(t).reshape(b, w, c, h).permute(0, 2, 3, 1)


def _sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Transformer position encoding of (N,) positions -> (N, dim)."""
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, device=positions.device).float() / dim)
    arg = positions.float()[:, None] * freq[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], -1)


def _resize_mask(frame_mask: Tensor | None, width: int) -> Tensor | None:
    """A latent frame mask at a coarser UNet level (a frame is real if any frame under it is)."""
    if frame_mask is None or frame_mask.shape[-1] == width:
        return frame_mask
    f = -(-frame_mask.shape[-1] // width)
    m = F.pad(frame_mask, (0, width * f - frame_mask.shape[-1]), value=False)
    return m.reshape(m.shape[0], width, f).any(-1)


class UNetDenoiser(CaptionDenoiser):
    """2-D UNet over (latent bands, latent frames) with FiLM noise conditioning and caption cross-attention.

    Args:
        in_channels: latent channels (the VAE's ``latent_channels``).
        channels: width per level; each level after the first halves both axes.
        num_res_blocks: residual blocks per level (down path; the up path has one more, for the skip).
        attention_levels: levels (0 = finest) with attention blocks after each residual block.
        self_attention: also self-attention over the positions in those blocks (cross-attention always).
        heads: attention heads. emb_dim: width of the noise-level embedding.
        text_dim: width of pretrained caption states; or ``text_vocab_size`` (+ ``text_encoder_dim``,
            ``text_encoder_depth``) for a caption encoder trained with the net, fed token ids (text_dim is then
            ignored).
        dropout: in the residual blocks. pooled_text: add the projected mean caption state to the noise-level
            embedding (see the module doc).
        token_vocab_size, token_dim, text_width, text_layers: a trainable ``CaptionAdapter`` over the frozen
            states (token-id embedding, projection, transformer layers); all unset: the states as they are.
        band_coordinate: give the net each latent band's place (-1 lowest .. 1 highest) as one more input
            channel. Convolutions are translation-equivariant along frequency, so without it a word like
            "high" can only find the upper bands through the zero padding at the edges.
        frame_attention_levels: levels with a ``FrameBlock`` (a transformer layer over frame columns) after
            each residual block; needs ``latent_height`` (the latent bands H, fixed by the VAE).
        frame_dim: the width of those blocks' frame tokens.
    """

    def __init__(self, in_channels: int = 8, channels: Sequence[int] = (64, 128), num_res_blocks: int = 1,
                 attention_levels: Sequence[int] = (0, 1), self_attention: bool = True, heads: int = 4,
                 emb_dim: int = 256, text_dim: int | None = 384, text_vocab_size: int | None = None,
                 text_encoder_dim: int = 128, text_encoder_depth: int = 2, dropout: float = 0.0, groups: int = 8,
                 pooled_text: bool = False, token_vocab_size: int | None = None, token_dim: int = 32,
                 text_width: int | None = None, text_layers: int = 0, band_coordinate: bool = False,
                 frame_attention_levels: Sequence[int] = (), frame_dim: int = 128, latent_height: int | None = None):
        super().__init__()
        self.config = capture_config(locals())
        self.config.update(channels=list(channels), attention_levels=list(attention_levels),
                           frame_attention_levels=list(frame_attention_levels))
        if frame_attention_levels and latent_height is None:
            raise ValueError("frame_attention_levels needs latent_height (the latent bands: n_mels / the VAE's "
                             "downsampling factor, e.g. 20 for 80 mels and vae_tiny)")
        m = 2 ** (len(channels) - 1)
        padded_height = -(-(latent_height or 0) // m) * m
        self.band_coordinate = band_coordinate
        ctx = self._init_conditioning(emb_dim, text_dim, text_vocab_size, text_encoder_dim, text_encoder_depth,
                                      pooled_text, token_vocab_size, token_dim, text_width, text_layers, heads)
        self.in_channels, self.levels = in_channels, len(channels)

        def stage(cin: int, cout: int, level: int, self_attn: bool) -> nn.ModuleList:
            layers = [ResBlock(cin, cout, emb_dim, groups, dropout)]
            if level in attention_levels:
                layers.append(AttentionBlock(cout, heads, ctx, self_attn))
            if level in frame_attention_levels:
                layers.append(FrameBlock(cout, padded_height // 2 ** level, frame_dim, heads, ctx))
            return nn.ModuleList(layers)

        self.conv_in = nn.Conv2d(in_channels + int(band_coordinate), channels[0], 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        c, skips = channels[0], [channels[0]]
        for i, ch in enumerate(channels):
            for _ in range(num_res_blocks):
                self.down.append(stage(c, ch, i, self_attention))
                c = ch
                skips.append(c)
            if i < len(channels) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, groups, dropout), AttentionBlock(c, heads, ctx, True),
                                  ResBlock(c, c, emb_dim, groups, dropout)])
        for i, ch in reversed(list(enumerate(channels))):
            for _ in range(num_res_blocks + 1):
                self.up.append(stage(c + skips.pop(), ch, i, self_attention))
                c = ch
            if i > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2.0, mode="nearest"),
                                              nn.Conv2d(c, c, 3, padding=1)]))
        self.norm_out = nn.GroupNorm(min(groups, c), c)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _run(layers: nn.ModuleList, x: Tensor, emb: Tensor, text: Tensor, text_mask: Tensor,
             fm: Tensor | None) -> Tensor:
        for layer in layers:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, (AttentionBlock, FrameBlock)):
                x = layer(x, text, text_mask, _resize_mask(fm, x.shape[-1]))
            else:
                x = layer(x)
        return x

    def forward(self, z_t: Tensor, c_noise: Tensor, *, text: Tensor, text_mask: Tensor | None = None,
                frame_mask: Tensor | None = None) -> Tensor:
        b, _, h, w = z_t.shape
        text, text_mask = self._text_states(text, text_mask)
        emb = self._embedding(c_noise, b, text, text_mask)
        # pad both axes to a multiple of 2^(levels - 1); the padding is cut off at the end
        m = 2 ** (self.levels - 1)
        ph, pw = (-h) % m, (-w) % m
        fm = F.pad(frame_mask.bool(), (0, pw), value=False) if frame_mask is not None else None
        if self.band_coordinate:  # the band's place, -1 (lowest) .. 1 (highest), as one more input channel
            band = torch.linspace(-1.0, 1.0, h, device=z_t.device, dtype=z_t.dtype)
            z_t = torch.cat([z_t, band[None, None, :, None].expand(b, 1, h, w)], 1)
        x = self.conv_in(F.pad(z_t, (0, pw, 0, ph)))
        hs = [x]
        for layers in self.down:
            x = self._run(layers, x, emb, text, text_mask, fm)
            hs.append(x)
        x = self._run(self.mid, x, emb, text, text_mask, fm)
        for layers in self.up:
            if isinstance(layers[0], ResBlock):
                x = torch.cat([x, hs.pop()], 1)
            x = self._run(layers, x, emb, text, text_mask, fm)
        x = self.conv_out(F.silu(self.norm_out(x)))
        return x[:, :, :h, :w]


# --------------------------------------------------------------------------------------------------
# DiT


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, cross-attention to the caption, MLP; shift/scale/gate from the
    noise-level embedding, the gates starting at zero (Peebles & Xie 2023, Sec. 3.2)."""

    def __init__(self, dim: int, heads: int, text_dim: int, emb_dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, text_dim, null_token=True)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = FeedForward(dim, mlp_ratio)
        self.ada = nn.Linear(emb_dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, emb: Tensor, text: Tensor, text_mask: Tensor, key_mask: Tensor | None) -> Tensor:
        s1, g1, b1, s2, g2, b2 = self.ada(F.silu(emb))[:, None].chunk(6, dim=-1)
        x = x + g1 * self.attn(self.norm1(x) * (1 + s1) + b1, key_mask=key_mask)
        x = x + self.cross(self.norm2(x), text, text_mask)
        return x + g2 * self.mlp(self.norm3(x) * (1 + s2) + b2)


class DiTDenoiser(CaptionDenoiser):
    """Transformer over latent patches, same interface as ``UNetDenoiser``.

    Args:
        in_channels: latent channels. latent_height: latent bands H (n_mels / VAE factor; fixed).
        patch: (bands, frames) per patch. dim, depth, heads: transformer size. emb_dim: noise embedding.
        text_dim / text_vocab_size / text_encoder_dim / text_encoder_depth / pooled_text / token_vocab_size /
            token_dim / text_width / text_layers: as for ``UNetDenoiser``.

    Positions: a learned embedding per band row, a sinusoid of the frame index along time (so any number
    of frames works).
    """

    def __init__(self, in_channels: int = 8, latent_height: int = 20, patch: Sequence[int] = (2, 2), dim: int = 256,
                 depth: int = 6, heads: int = 4, emb_dim: int = 256, text_dim: int | None = 384,
                 text_vocab_size: int | None = None, text_encoder_dim: int = 128, text_encoder_depth: int = 2,
                 pooled_text: bool = False, token_vocab_size: int | None = None, token_dim: int = 32,
                 text_width: int | None = None, text_layers: int = 0):
        super().__init__()
        self.config = capture_config(locals())
        self.config["patch"] = list(patch)
        ctx = self._init_conditioning(emb_dim, text_dim, text_vocab_size, text_encoder_dim, text_encoder_depth,
                                      pooled_text, token_vocab_size, token_dim, text_width, text_layers, heads)
        self.in_channels, self.patch, self.dim = in_channels, (int(patch[0]), int(patch[1])), dim
        ph, pw = self.patch
        self.rows = -(-latent_height // ph)
        self.latent_height = latent_height
        self.embed = nn.Linear(in_channels * ph * pw, dim)
        self.row_embed = nn.Parameter(torch.randn(self.rows, dim) * 0.02)
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, ctx, emb_dim) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False)
        self.ada_out = nn.Linear(emb_dim, 2 * dim)
        self.out = nn.Linear(dim, in_channels * ph * pw)
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z_t: Tensor, c_noise: Tensor, *, text: Tensor, text_mask: Tensor | None = None,
                frame_mask: Tensor | None = None) -> Tensor:
        b, c, h, w = z_t.shape
        if h > self.rows * self.patch[0]:
            raise ValueError(f"latent has {h} bands; this DiT was built for {self.latent_height}")
        text, text_mask = self._text_states(text, text_mask)
        emb = self._embedding(c_noise, b, text, text_mask)
        ph, pw = self.patch
        x = F.pad(z_t, (0, (-w) % pw, 0, self.rows * ph - h))
        cols = x.shape[-1] // pw
        # (B, C, rows*ph, cols*pw) -> (B, rows*cols, C*ph*pw), time varying fastest
        tokens = x.reshape(b, c, self.rows, ph, cols, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, self.rows * cols, -1)
        pos = self.row_embed[:, None, :] + _sinusoid(torch.arange(cols, device=z_t.device), self.dim)[None]
        tokens = self.embed(tokens) + pos.reshape(1, self.rows * cols, self.dim).to(tokens.dtype)
        key_mask = None
        if frame_mask is not None:
            fm = _resize_mask(F.pad(frame_mask.bool(), (0, cols * pw - w), value=False), cols)
            key_mask = fm[:, None, :].expand(b, self.rows, cols).reshape(b, self.rows * cols)
        for block in self.blocks:
            tokens = block(tokens, emb, text, text_mask, key_mask)
        shift, scale = self.ada_out(F.silu(emb))[:, None].chunk(2, dim=-1)
        tokens = self.out(self.norm_out(tokens) * (1 + scale) + shift)
        x = tokens.reshape(b, self.rows, cols, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, self.rows * ph,
                                                                                            cols * pw)
        return x[:, :, :h, :w]


# --------------------------------------------------------------------------------------------------
# experts by noise level


class TimeSplitDenoiser(CaptionDenoiser):
    """Two caption denoisers, each for part of the sampling path: ``high`` at diffusion times above
    ``boundary`` (where a clip's layout - which bands sound, how many events, how long - is decided),
    ``low`` at or below it (its detail). The experts of eDiff-I (Balaji et al. 2022), with two experts.

    The nets are trained apart (``LatentDiffusionModule(train_t=...)``) and joined with ``combine``; they must
    take the same latents and caption input. ``c_noise`` must be the diffusion time t (``noise_input="t"``).

    Args:
        low, high: ``{"class": "module:QualName", "config": {...}}`` of each net (as ``combine`` writes them).
        boundary: the time in (0, 1) where sampling hands over from ``high`` to ``low``.
    """

    def __init__(self, low: dict, high: dict, boundary: float = 0.85):
        super().__init__()
        self.config = capture_config(locals())
        if not 0.0 < boundary < 1.0:
            raise ValueError(f"boundary must be a diffusion time in (0, 1), got {boundary}")
        nets = []
        for name, spec in (("low", low), ("high", high)):
            if not isinstance(spec, dict) or not {"class", "config"} <= spec.keys():
                raise ValueError(f"{name} must be {{'class': 'module:QualName', 'config': {{...}}}} of a "
                                 f"CaptionDenoiser (TimeSplitDenoiser.combine writes it)")
            klass = import_class(spec["class"])
            if not (isinstance(klass, type) and issubclass(klass, CaptionDenoiser)) or klass is TimeSplitDenoiser:
                raise TypeError(f"{name} must name a single CaptionDenoiser, got {spec['class']!r}")
            nets.append(klass(**spec["config"]))
        self.low, self.high = nets
        a, b = self.low, self.high
        for attr in ("in_channels", "text_dim", "token_vocab_size", "uses_token_ids"):
            if getattr(a, attr) != getattr(b, attr):
                raise ValueError(f"the two experts differ in {attr} ({getattr(a, attr)} vs {getattr(b, attr)}): "
                                 "they must take the same latents and caption input")
        self.in_channels, self.text_dim, self.token_vocab_size = a.in_channels, a.text_dim, a.token_vocab_size
        self.boundary = float(boundary)

    @classmethod
    def combine(cls, low: CaptionDenoiser, high: CaptionDenoiser, boundary: float = 0.85) -> TimeSplitDenoiser:
        """A ``TimeSplitDenoiser`` holding copies of two trained nets' weights."""
        spec = {name: {"class": class_path(type(net)), "config": net.config}
                for name, net in (("low", low), ("high", high))}
        joined = cls(spec["low"], spec["high"], boundary)
        joined.low.load_state_dict(low.state_dict())
        joined.high.load_state_dict(high.state_dict())
        return joined

    @property
    def uses_token_ids(self) -> bool:
        return self.low.uses_token_ids

    def forward(self, z_t: Tensor, c_noise: Tensor, **cond: Tensor) -> Tensor:
        t = c_noise.expand(z_t.shape[0]) if c_noise.ndim == 0 else c_noise
        noisy = t > self.boundary
        if bool(noisy.all()):
            return self.high(z_t, c_noise, **cond)
        if not bool(noisy.any()):
            return self.low(z_t, c_noise, **cond)
        # a batch that straddles the boundary: each example from its own expert
        out = self.low(z_t, c_noise, **cond)
        return torch.where(noisy[:, None, None, None], self.high(z_t, c_noise, **cond), out)

"""WaveGradNet: the WaveGrad network (Chen et al. 2021, "WaveGrad: Estimating Gradients for Waveform
Generation", Sec. 3 and Fig. 3-5), predicting the noise eps in a noisy waveform given its mel.

Two branches meet at every time resolution:

* the mel branch (UBlocks) upsamples the mel frames, by ``upsample_factors`` whose product is the
  hop length, up to one value per audio sample;
* the waveform branch (a convolution, then DBlocks) downsamples the noisy waveform x_t through the
  same resolutions in reverse, and at each one a FiLM module turns its features into a per-sample
  scale and shift for the UBlock of that resolution.

The continuous noise level sqrt(alpha_bar) (``as_denoiser(..., noise_input_kind="alpha")``) is
embedded once (sinusoidal features of 5000 * alpha, WaveGrad's scale, then an MLP) and enters every
FiLM module through a feature-wise modulation of the waveform features (``diffcore.nn.FiLM``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from diffcore.nn import FiLM, NoiseLevelEmbedding
from diffcore.pretrained import PretrainedMixin, capture_config

_SLOPE = 0.2  # leaky ReLU slope throughout, as in the paper

# The paper's block design (Sec. 3, Fig. 3-5): dilations 1,2,1,2 in the first two UBlocks, the noise
# level's encoding added in the FiLM modules, gamma * h + beta, interpolation down-sampling; with
# orthogonal init, and the level encoded at scale 1 (the reference's). Measured with bench/vocoder_peer.py
# (README ablation): scale 1, orthogonal init and the additive encoding each help; gamma * h + beta only early
# on; dilations and down-sampling were not measured alone.
PAPER_BLOCKS: dict = {"dilations": ((1, 2, 1, 2), (1, 2, 1, 2), (1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)),
                      "noise_conditioning": "additive", "modulation": "affine", "downsample": "nearest",
                      "init": "orthogonal", "noise_scale": 1.0}
_LN_FLOOR = math.log(1e-5)  # the default MelConfig's silence (ln of its clamp_min)

# Named sizes for hop 256 (22,050 Hz, the LJSpeech convention). "base" follows the paper's
# channels (upsampling 768 -> 512, 512, 256, 128, 128; downsampling 32, 128, 128, 256, 512);
# "tiny" is for CPU tests and demos.
SIZES: dict[str, dict] = {
    "base": {"upsample_factors": (4, 4, 4, 2, 2), "mel_channels": 768,
             "upsample_channels": (512, 512, 256, 128, 128), "downsample_channels": (32, 128, 128, 256, 512),
             "embed_dim": 128, **PAPER_BLOCKS, "mel_offset": _LN_FLOOR, "mel_scale": -_LN_FLOOR},
    "tiny": {"upsample_factors": (4, 4, 4, 2, 2), "mel_channels": 96,
             "upsample_channels": (96, 64, 48, 32, 24), "downsample_channels": (16, 24, 32, 48, 64),
             "embed_dim": 64, **PAPER_BLOCKS, "mel_offset": _LN_FLOOR, "mel_scale": -_LN_FLOOR},
}


def _conv(cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation)


def _modulate(h: Tensor, scale: Tensor, shift: Tensor, affine: bool = False) -> Tensor:
    # "affine": the paper's gamma * h + beta; "residual": h (1 + gamma) + beta (zero outputs are the identity)
    return h * scale + shift if affine else h * (1 + scale) + shift


class UBlock(nn.Module):
    """Upsample by ``factor`` (nearest), four dilated 3-tap convolutions in two residual halves, with the
    FiLM scale/shift of this resolution applied before the 2nd, 3rd and 4th convolutions."""

    def __init__(self, cin: int, cout: int, factor: int, dilations: Sequence[int], affine: bool = False):
        super().__init__()
        self.factor, self.affine = factor, affine
        self.skip = nn.Conv1d(cin, cout, 1)
        d = list(dilations)
        self.convs = nn.ModuleList([_conv(cin, cout, 3, d[0])] + [_conv(cout, cout, 3, di) for di in d[1:4]])

    def forward(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        up = lambda v: F.interpolate(v, scale_factor=self.factor, mode="nearest")  # noqa: E731
        skip = up(self.skip(x))  # a 1x1 conv commutes with nearest upsampling; do it at the low rate
        h = self.convs[0](up(F.leaky_relu(x, _SLOPE)))
        h = self.convs[1](F.leaky_relu(_modulate(h, scale, shift, self.affine), _SLOPE))
        h = h + skip
        r = self.convs[2](F.leaky_relu(_modulate(h, scale, shift, self.affine), _SLOPE))
        r = self.convs[3](F.leaky_relu(_modulate(r, scale, shift, self.affine), _SLOPE))
        return h + r


class DBlock(nn.Module):
    """Downsample by ``factor`` (a strided convolution, or "nearest": keep every factor-th sample, as the
    paper's interpolation does; average pooling on the residual path), then three dilated 3-tap convolutions."""

    def __init__(self, cin: int, cout: int, factor: int, downsample: str = "conv"):
        super().__init__()
        self.factor = factor
        self.skip = nn.Conv1d(cin, cout, 1)
        self.down = nn.Conv1d(cin, cin, factor, stride=factor) if downsample == "conv" else None
        self.convs = nn.ModuleList([_conv(cin, cout, 3, 1), _conv(cout, cout, 3, 2), _conv(cout, cout, 3, 4)])

    def forward(self, x: Tensor) -> Tensor:
        skip = F.avg_pool1d(self.skip(x), self.factor)
        h = self.down(x) if self.down is not None else x[..., ::self.factor]
        for conv in self.convs:
            h = conv(F.leaky_relu(h, _SLOPE))
        return h + skip


class WaveFiLM(nn.Module):
    """Waveform features (B, C, T) and the noise level -> per-sample (scale, shift) (B, C_out, T) for one
    UBlock. ``additive`` (the paper's): a sinusoidal encoding of the level, one feature per channel, is
    added to the features (``emb`` is then the level (B,)); otherwise ``emb`` is the shared noise-level
    embedding (B, E), applied by a zero-initialised FiLM."""

    def __init__(self, cin: int, cout: int, embed_dim: int, additive: bool = False, noise_scale: float = 5000.0):
        super().__init__()
        self.conv = _conv(cin, cin, 3)
        self.noise = (NoiseLevelEmbedding(cin, "sinusoidal", scale=noise_scale, mlp=False) if additive
                      else FiLM(cin, embed_dim))
        self.additive = additive
        self.out = _conv(cin, 2 * cout, 3)

    def forward(self, h: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
        h = F.leaky_relu(self.conv(h), _SLOPE)
        h = h + self.noise(emb).to(h.dtype)[..., None] if self.additive else self.noise(h, emb)
        scale, shift = self.out(h).chunk(2, dim=1)
        return scale, shift


class WaveGradNet(PretrainedMixin, nn.Module):
    """eps-prediction network ``net(x_t, alpha, mel=mel) -> eps_hat``.

    Args:
        n_mels: mel bands of the conditioning mel.
        hop_length: audio samples per mel frame; ``upsample_factors`` must multiply to it.
        upsample_factors: the UBlocks' upsampling factors, first (coarsest) to last.
        mel_channels: channels of the 3-tap convolution applied to the mel first.
        upsample_channels: output channels of each UBlock.
        downsample_channels: channels of the waveform features at each UBlock's output resolution,
            finest first (the first entry is the input convolution, the others the DBlocks').
        embed_dim: size of the noise-level embedding (``noise_conditioning="film"`` only).
        dilations: dilations of each UBlock's four 3-tap convolutions: four numbers for every UBlock,
            or one group of four per UBlock (the paper's: 1,2,1,2 for the first two, 1,2,4,8 after).
        noise_scale: the noise level is embedded as sinusoidal features of noise_scale * alpha (periods
            up to 10^4). The named sizes use 1 (the reference implementation's: smooth, nearly linear
            features of the level), which learns much faster per step than 5000 (the first release's),
            whose fast features change sign between neighbouring levels (bench/vocoder_peer.py).
        noise_conditioning: "additive" (the paper's): the level's sinusoidal encoding is added to the
            waveform features in every FiLM module; "film": an MLP embedding applied by a zero-initialised
            feature-wise modulation (the net ignores the level at initialisation).
        modulation: "affine" (the paper's gamma * h + beta) or "residual" (h * (1 + gamma) + beta).
        downsample: "conv" (learned strided convolutions) or "nearest" (the paper's interpolation).
        init: "orthogonal" (orthogonal convolution weights, zero biases; the reference implementation's)
            or "default" (PyTorch's).
        mel_offset, mel_scale: the net sees (mel - mel_offset) / mel_scale. The named sizes map the default
            log-mel's range [ln 1e-5, ~0] onto [0, ~1], the input range of the reference implementation
            (whose mel is scaled to [0, 1]); with orthogonal init, raw log-mels (mean -5) start it far off.

    The constructor's defaults are the first release's architecture, so that saved models without
    these keys load as they were trained; ``SIZES`` (and ``from_size``) give the current one.

    Shapes: x_t (B, T) or (B, 1, T) with T = frames * hop_length, alpha (B,) in (0, 1],
    mel (B, n_mels, frames); returns (B, T) (or (B, 1, T), like x_t).
    """

    def __init__(self, n_mels: int = 80, hop_length: int = 256,
                 upsample_factors: Sequence[int] = (4, 4, 4, 2, 2), mel_channels: int = 768,
                 upsample_channels: Sequence[int] = (512, 512, 256, 128, 128),
                 downsample_channels: Sequence[int] = (32, 128, 128, 256, 512), embed_dim: int = 128,
                 dilations: Sequence[int] | Sequence[Sequence[int]] = (1, 2, 4, 8), noise_scale: float = 5000.0,
                 noise_conditioning: Literal["film", "additive"] = "film",
                 modulation: Literal["residual", "affine"] = "residual",
                 downsample: Literal["conv", "nearest"] = "conv",
                 init: Literal["default", "orthogonal"] = "default", mel_offset: float = 0.0, mel_scale: float = 1.0):
        super().__init__()
        self.config = capture_config(locals())
        factors = [int(f) for f in upsample_factors]
        if math.prod(factors) != hop_length:
            raise ValueError(f"upsample_factors {tuple(factors)} multiply to {math.prod(factors)}, but the hop "
                             f"length is {hop_length}: their product must equal the hop length (e.g. "
                             f"(4, 4, 4, 2, 2) for 256, (5, 5, 3, 2, 2) for 300)")
        if len(upsample_channels) != len(factors) or len(downsample_channels) != len(factors):
            raise ValueError(f"need one upsample and one downsample channel count per upsampling factor "
                             f"({len(factors)}), got {len(upsample_channels)} and {len(downsample_channels)}")
        nested = isinstance(dilations[0], Sequence)
        per_block = [list(d) for d in dilations] if nested else [list(dilations)] * len(factors)
        if len(per_block) != len(factors) or any(len(d) != 4 for d in per_block):
            raise ValueError("each UBlock has four convolutions: give four dilations, or one group of four per "
                             f"UBlock ({len(factors)} groups), got {dilations}")
        for name, value, allowed in (("noise_conditioning", noise_conditioning, ("film", "additive")),
                                     ("modulation", modulation, ("residual", "affine")),
                                     ("downsample", downsample, ("conv", "nearest")),
                                     ("init", init, ("default", "orthogonal"))):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {allowed}")
        if mel_scale == 0:
            raise ValueError("mel_scale must not be zero")
        self.n_mels, self.hop_length, self.factors = n_mels, hop_length, factors
        self.mel_offset, self.mel_scale = float(mel_offset), float(mel_scale)
        up_ch, down_ch = list(upsample_channels), list(downsample_channels)
        additive = noise_conditioning == "additive"
        self.embed = None if additive else NoiseLevelEmbedding(embed_dim, "sinusoidal", scale=noise_scale)
        self.mel_conv = _conv(n_mels, mel_channels, 3)
        self.ublocks = nn.ModuleList(UBlock(cin, cout, f, d, affine=modulation == "affine") for cin, cout, f, d in
                                     zip([mel_channels] + up_ch[:-1], up_ch, factors, per_block))
        self.wave_conv = _conv(1, down_ch[0], 5)
        # DBlock k takes the waveform features from the resolution of UBlock n-k to that of UBlock n-k-1
        self.dblocks = nn.ModuleList(DBlock(down_ch[k], down_ch[k + 1], factors[-1 - k], downsample)
                                     for k in range(len(factors) - 1))
        # FiLM i feeds UBlock i from the waveform features at its resolution (finest = down_ch[0])
        self.films = nn.ModuleList(WaveFiLM(down_ch[-1 - i], up_ch[i], embed_dim, additive, noise_scale)
                                   for i in range(len(factors)))
        self.out_conv = _conv(up_ch[-1], 1, 3)
        if init == "orthogonal":
            self._orthogonal_init()

    def _orthogonal_init(self) -> None:
        # orthogonal weights and zero biases for the signal path; Glorot-uniform for the FiLM convolutions.
        # Keeps the output's spread near that of the noise at the start (about 0.4 vs 0.02 for PyTorch's default)
        films = {id(m) for f in self.films for m in (f.conv, f.out)}
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                (nn.init.xavier_uniform_ if id(m) in films else nn.init.orthogonal_)(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def from_size(cls, size: str, **overrides) -> WaveGradNet:
        """A named size ("base", about 15M parameters, or "tiny") with optional overrides."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
        return cls(**{**SIZES[size], **overrides})

    def forward(self, x_t: Tensor, alpha: Tensor, mel: Tensor) -> Tensor:
        squeeze = x_t.ndim == 2
        x = x_t[:, None] if squeeze else x_t  # (B, 1, T)
        frames = mel.shape[-1]
        if x.shape[-1] != frames * self.hop_length:
            raise ValueError(f"waveform has {x.shape[-1]} samples but the mel has {frames} frames; expected "
                             f"frames * hop_length = {frames * self.hop_length}")
        if mel.shape[1] != self.n_mels:
            raise ValueError(f"mel has {mel.shape[1]} bands, this network takes {self.n_mels}")
        level = alpha.reshape(-1).expand(x.shape[0]) if alpha.numel() == 1 else alpha.reshape(-1)
        emb = level if self.embed is None else self.embed(level)  # (B,) or (B, E)
        feats = [self.wave_conv(x)]  # finest first: (B, down_ch[k], T / prod(last k factors))
        for block in self.dblocks:
            feats.append(block(feats[-1]))
        h = self.mel_conv((mel.to(x.dtype) - self.mel_offset) / self.mel_scale)  # (B, mel_channels, frames)
        for i, (block, film) in enumerate(zip(self.ublocks, self.films)):
            scale, shift = film(feats[-1 - i], emb)
            h = block(h, scale, shift)
        eps = self.out_conv(F.leaky_relu(h, _SLOPE))  # (B, 1, T)
        return eps[:, 0] if squeeze else eps

"""Text-to-sound: latent diffusion over mel-spectrograms, from a caption to a waveform.

``MelVAE`` (mel autoencoder), caption encoders (``PretrainedTextEncoder``: frozen all-MiniLM-L6-v2 by
default; ``ByteTextEncoder`` + a caption transformer trained with the denoiser), latent denoisers
(``UNetDenoiser``, ``DiTDenoiser``: one interface), Lightning training (``VAEModule``,
``LatentDiffusionModule``, ``CaptionedMelDataModule``), inference (``AudioPipeline``: generate, inpaint,
continue, vary) and evaluation (``audiodiff.t2s.evaluate``).
"""

from .denoiser import CaptionDenoiser, DiTDenoiser, TimeSplitDenoiser, UNetDenoiser
from .inference import AudioOutput, AudioPipeline
from .module import (
    CaptionedMelDataModule,
    LatentDiffusionModule,
    VAEModule,
    drop_captions,
    export_pipeline,
    export_vae,
)
from .text_encoder import ByteTextEncoder, CaptionCache, CaptionTransformer, PretrainedTextEncoder, TextEncoder
from .vae import MelVAE, Posterior, kl_to_standard_normal

__all__ = ["AudioOutput", "AudioPipeline", "ByteTextEncoder", "CaptionCache", "CaptionDenoiser",
           "CaptionTransformer", "CaptionedMelDataModule", "DiTDenoiser", "LatentDiffusionModule", "MelVAE",
           "Posterior", "PretrainedTextEncoder", "TextEncoder", "TimeSplitDenoiser", "UNetDenoiser", "VAEModule",
           "drop_captions", "export_pipeline", "export_vae", "kl_to_standard_normal"]

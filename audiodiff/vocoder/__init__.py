"""The WaveGrad vocoder: mel-spectrogram -> waveform.

``WaveGradNet`` (the network), ``VocoderModule`` / ``VocoderDataModule`` (Lightning training),
``Vocoder`` (inference, ``from_pretrained`` / ``save_pretrained``), ``search_schedule`` (short
noise schedules by search, as in the WaveGrad paper).
"""

from .inference import Vocoder, default_train_schedule, logsnr_uniform_betas
from .model import SIZES, WaveGradNet
from .module import AudioSegments, VocoderDataModule, VocoderModule, sample_noise_level

__all__ = ["SIZES", "AudioSegments", "Vocoder", "VocoderDataModule", "VocoderModule", "WaveGradNet",
           "default_train_schedule", "logsnr_uniform_betas", "sample_noise_level"]

"""audiodiff: the audio models (vocoder, text-to-sound) built on diffcore."""

"""textdiff: the masked diffusion language model built on diffcore."""

"""diffcore: the shared diffusion core."""

"""advbench: a benchmark of anti-adaptation defenses for text-to-image diffusion models."""

__version__ = "0.1.0"

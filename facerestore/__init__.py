"""facerestore: blind face restoration with diffusion models."""

__version__ = "0.1.0"

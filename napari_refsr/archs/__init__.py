"""Network architectures, one readable file per network."""

from .ttsr import TTSR, TTSRConfig

__all__ = ["TTSR", "TTSRConfig"]

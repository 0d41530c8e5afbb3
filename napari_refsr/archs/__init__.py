"""Network architectures, one readable file per network."""

from .srntt import SRNTT, SRNTTConfig
from .ttsr import TTSR, TTSRConfig

__all__ = ["SRNTT", "SRNTTConfig", "TTSR", "TTSRConfig"]

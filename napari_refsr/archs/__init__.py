"""Network architectures: one file per network (plus its converter from foreign checkpoints),
shared blocks, the VGG19 builder, the common base and the registry (:mod:`.registry`)."""

from .base import ReferenceBank, RefSRNetwork
from .registry import ARCHITECTURES, Architecture, architecture, build_network
from .srntt import SRNTT, SRNTTConfig
from .ttsr import TTSR, TTSRConfig

__all__ = ["ARCHITECTURES", "Architecture", "ReferenceBank", "RefSRNetwork", "SRNTT", "SRNTTConfig", "TTSR",
           "TTSRConfig", "architecture", "build_network"]

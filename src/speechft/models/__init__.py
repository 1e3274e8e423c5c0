"""Encoders: loading, saving, heads, the FBANK baseline and checkpoint converters."""
from .encoder import HFEncoder, SpeechEncoder
from .io import BUILTIN_NAMES, load_encoder, read_card, save_encoder, tiny_config

__all__ = ["HFEncoder", "SpeechEncoder", "BUILTIN_NAMES", "load_encoder", "read_card", "save_encoder", "tiny_config"]

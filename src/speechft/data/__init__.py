"""Data layer: manifests, audio IO, validation, dataset/collate and length-bucketed batching."""
from .audio import TARGET_SR, AudioError, load_audio, write_audio
from .dataset import AudioDataset, collate
from .manifest import ManifestError, Utterance, read_manifest, write_manifest

__all__ = [
    "TARGET_SR",
    "AudioError",
    "load_audio",
    "write_audio",
    "AudioDataset",
    "collate",
    "ManifestError",
    "Utterance",
    "read_manifest",
    "write_manifest",
]

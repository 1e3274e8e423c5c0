"""Data layer: manifests, audio IO, validation, dataset/collate and length-bucketed batching."""
from .audio import TARGET_SR, AudioError, audio_info, load_audio, write_audio
from .dataset import AudioDataset, collate
from .manifest import ManifestError, Utterance, iter_manifest, read_manifest, write_manifest
from .sampler import LengthBucketSampler, padding_fraction
from .validate import BadRow, DataValidationError, ValidationReport, load_checked_rows, validate_manifests

__all__ = [
    "TARGET_SR",
    "AudioError",
    "audio_info",
    "load_audio",
    "write_audio",
    "AudioDataset",
    "collate",
    "ManifestError",
    "Utterance",
    "iter_manifest",
    "read_manifest",
    "write_manifest",
    "LengthBucketSampler",
    "padding_fraction",
    "BadRow",
    "DataValidationError",
    "ValidationReport",
    "load_checked_rows",
    "validate_manifests",
]

"""Audio IO: soundfile to read, soxr to resample to 16 kHz, mono float32 in [-1, 1]."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

TARGET_SR = 16000


class AudioError(ValueError):
    """An audio file cannot be used; the message names the file and the reason."""


def resample(wav: np.ndarray, sr: int, target_sr: int = TARGET_SR) -> np.ndarray:
    if sr == target_sr:
        return wav.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(wav.astype(np.float32, copy=False), sr, target_sr).astype(np.float32, copy=False)


def to_mono(wav: np.ndarray) -> np.ndarray:
    """``[S]`` or ``[S, C]`` -> ``[S]`` by averaging channels."""
    return wav.mean(axis=1) if wav.ndim == 2 else wav


def load_audio(path: str | Path, target_sr: int = TARGET_SR, mono: bool = True) -> np.ndarray:
    """Read ``path`` as float32 ``[S]`` at ``target_sr`` (stereo averaged to mono).

    Raises :class:`AudioError` naming the file for anything unreadable, empty or non-finite.
    """
    path = Path(path)
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except PermissionError:
        raise AudioError(f"{path}: permission denied") from None
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise AudioError(f"{path}: not readable audio ({e})") from None
    if mono:
        wav = to_mono(wav)
    if wav.size == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: contains NaN/inf samples")
    wav = resample(wav, sr, target_sr)
    return np.clip(wav, -1.0, 1.0)


def write_audio(path: str | Path, wav: np.ndarray, sr: int = TARGET_SR) -> None:
    """Write 16-bit PCM WAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(wav, dtype=np.float32), sr, subtype="PCM_16")

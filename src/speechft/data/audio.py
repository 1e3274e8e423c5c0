"""Audio IO: soundfile to read, soxr to resample to 16 kHz, mono float32 in [-1, 1]."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

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


# -- inspection helpers (used by validation) ------------------------------------------------------
def audio_info(path: str | Path) -> dict:
    """Header facts without decoding: ``{"sample_rate", "channels", "frames", "duration"}``.

    Raises :class:`AudioError` naming the file when it is missing, unreadable or not audio.
    """
    path = Path(path)
    try:
        info = sf.info(str(path))
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except PermissionError:
        raise AudioError(f"{path}: permission denied") from None
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise AudioError(f"{path}: not readable audio ({e})") from None
    sr = int(info.samplerate)
    return {"sample_rate": sr, "channels": int(info.channels), "frames": int(info.frames),
            "duration": info.frames / sr if sr > 0 else 0.0}


def wav_declared_frames(head: bytes) -> tuple[Optional[int], Optional[int]]:
    """From the first bytes of a RIFF/WAVE file: ``(declared frames, byte offset of the data)``.

    libsndfile quietly shortens ``frames`` to what a truncated file holds, so the only way to see
    that a WAV was cut off is to compare the ``data`` chunk size in its header with the file size.
    Returns ``(None, None)`` when ``head`` is not a WAV or its ``data`` chunk is not inside ``head``;
    ``(-1, offset)`` when the size field is a streaming placeholder (0 or 0xFFFFFFFF) or RF64.
    """
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64") or head[8:12] != b"WAVE":
        return None, None
    order = "big" if head[:4] == b"RIFX" else "little"
    pos, block_align = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], order)
        if cid == b"fmt " and pos + 8 + 14 <= len(head):
            block_align = int.from_bytes(head[pos + 20:pos + 22], order)
        if cid == b"data":
            if head[:4] == b"RF64" or size in (0, 0xFFFFFFFF) or not block_align:
                return -1, pos + 8
            return size // block_align, pos + 8
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    return None, None


_BLOCK_FRAMES = 1 << 16  # samples are checked 65,536 frames at a time, never the whole file at once
_HEAD_BYTES = 1 << 16  # enough of a WAV header to find its data chunk
_RIFF = (b"RIFF", b"RIFX", b"RF64")


def scan_audio(path: str) -> dict:
    """Facts about one file that do not depend on options (thread-safe, reads in blocks).

    ``{"error": reason}`` for a file that cannot be used at all, else
    ``{"size", "mtime_ns", "sample_rate", "channels", "frames", "finite"}`` where ``frames`` is
    what is actually readable. A truncated file is an error; an empty or non-finite one is not
    (those depend on options and are judged by the validator, which caches these facts).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"error": "missing file"}
    except PermissionError:
        return {"error": "permission denied"}
    facts: dict = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not stat.S_ISREG(st.st_mode):
        return {**facts, "error": "not a regular file"}
    if st.st_size == 0:
        return {**facts, "error": "empty file (0 bytes)"}
    try:
        fh = open(path, "rb")  # open it ourselves: libsndfile reports permission errors vaguely
    except PermissionError:
        return {**facts, "error": "permission denied"}
    except OSError as e:
        return {**facts, "error": f"unreadable ({e.strerror})"}
    with fh:
        head = fh.read(_HEAD_BYTES)
        fh.seek(0)
        declared, _ = wav_declared_frames(head)
        try:
            snd = sf.SoundFile(fh)
        except (sf.LibsndfileError, RuntimeError, TypeError, OSError):
            if head[:4] in _RIFF and declared is None and st.st_size <= _HEAD_BYTES:
                return {**facts, "error": "truncated header"}
            return {**facts, "error": "not audio"}
        frames, finite = 0, True
        with snd:
            header_frames = int(snd.frames)
            facts.update(sample_rate=int(snd.samplerate), channels=int(snd.channels))
            try:
                for block in snd.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
                    frames += block.shape[0]
                    if finite and not np.isfinite(block).all():
                        finite = False
            except (sf.LibsndfileError, RuntimeError) as e:
                return {**facts, "error": f"corrupt audio data ({e})"}
    # libsndfile shortens .frames to what a cut-off WAV holds, so compare with the WAV header too.
    expected = max(header_frames, declared if declared and declared > 0 else 0)
    if frames < expected:
        return {**facts, "error": f"truncated (header says {expected} frames, file holds {frames})"}
    facts.update(frames=frames, finite=finite)
    return facts

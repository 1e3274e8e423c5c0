"""A deliberately broken corpus, reusable by any test that must survive bad data.

``make_corrupt_corpus(dir)`` writes audio files and one manifest mixing good rows with every kind
of fault the validator knows, and returns ``(manifest_path, expected)`` where ``expected`` maps a
row key to a substring of the reason the validator must give, for the options in
:data:`VALIDATE_KWARGS`. Every row not in ``expected`` must come out good.

Row keys are the row's id, except for rows without a usable id of their own (a line that is not
JSON, a duplicated id), which are keyed ``"line N"``; :func:`bad_key` maps a ``BadRow`` to its key.

Permissions: a ``chmod 000`` file is unreadable only for non-root users. Where the test runs as
root (containers) it reads fine, so it is then expected to be *good* and ``expected`` has no
entry for it; :func:`permissions_enforced` tells which case applies.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

TASK = "lite-ks"
# The options ``expected`` is computed for (stereo is only bad because channels=1).
VALIDATE_KWARGS = dict(task=TASK, min_seconds=0.1, max_seconds=30.0, channels=1)
# Ids that are fine but noted (resampled / downmixed when channels is not required).
NOTE_IDS = ("rate_8k", "rate_44k", "rate_48k")
STEREO_ID = "stereo"
UNREADABLE_ID = "unreadable"


def _tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    x = (0.3 * np.sin(2 * np.pi * 220.0 * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def permissions_enforced() -> bool:
    """Whether ``chmod 000`` really stops this process from reading a file."""
    fd, tmp = tempfile.mkstemp()
    os.close(fd)
    try:
        os.chmod(tmp, 0)
        try:
            open(tmp, "rb").close()
            return False
        except PermissionError:
            return True
    finally:
        os.chmod(tmp, 0o600)
        os.unlink(tmp)


def bad_key(bad) -> str:
    """The ``expected`` key of a ``BadRow``."""
    if bad.id is None or bad.reason.startswith("duplicate id"):
        return f"line {bad.lineno}"
    return bad.id


def make_corrupt_corpus(root: str | os.PathLike, name: str = "corrupt.jsonl") -> tuple[Path, dict[str, str]]:
    """Write the broken corpus under ``root``; return ``(manifest, {key: reason substring})``."""
    root = Path(root)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    expected: dict[str, str] = {}

    def row(id_, file, expect=None, label="yes", **extra):
        obj = {"id": id_, "audio": f"audio/{file}", **extra}
        if label is not None:
            obj["label"] = label
        lines.append(json.dumps(obj))
        if expect:
            expected[id_] = expect

    def wav(file, x, sr, subtype="PCM_16"):
        sf.write(str(audio / file), x, sr, subtype=subtype)

    # Good rows (the first one's id is duplicated further down).
    for i in range(3):
        wav(f"good_{i}.wav", _tone(0.5 + 0.25 * i, 16000, seed=i), 16000)
        row(f"good_{i}", f"good_{i}.wav", label=["yes", "no", "up"][i])

    (audio / "empty.wav").write_bytes(b"")
    row("empty_file", "empty.wav", "empty file")

    wav("zero_frames.wav", np.zeros(0, np.float32), 16000)
    row("zero_samples", "zero_frames.wav", "empty audio")

    wav("full.wav", _tone(1.0, 16000), 16000)
    whole = (audio / "full.wav").read_bytes()
    (audio / "full.wav").unlink()
    (audio / "trunc_header.wav").write_bytes(whole[:30])  # cut inside the RIFF header
    row("trunc_header", "trunc_header.wav", "truncated header")
    (audio / "trunc_data.wav").write_bytes(whole[:44 + 2 * 4800])  # header says 16000 frames, 4800 left
    row("trunc_data", "trunc_data.wav", "truncated (header says 16000 frames, file holds 4800)")

    (audio / "random.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    row("random_bytes", "random.wav", "not audio")

    x = _tone(0.5, 16000)
    x[100:110] = np.nan
    wav("nan.wav", x, 16000, subtype="FLOAT")
    row("nan", "nan.wav", "NaN/inf samples")
    x = _tone(0.5, 16000)
    x[-1] = np.inf
    wav("inf.wav", x, 16000, subtype="FLOAT")
    row("inf", "inf.wav", "NaN/inf samples")

    wav("stereo.wav", _tone(0.5, 16000, channels=2), 16000)
    row(STEREO_ID, "stereo.wav", "2 channels (expected 1)")

    for id_, sr in zip(NOTE_IDS, (8000, 44100, 48000)):
        wav(f"{id_}.wav", _tone(0.5, sr), sr)
        row(id_, f"{id_}.wav")

    wav("short.wav", _tone(0.01, 16000), 16000)
    row("short_10ms", "short.wav", "too short (0.01 s < 0.10 s)")
    wav("long.wav", _tone(60.0, 16000), 16000)
    row("long_60s", "long.wav", "too long (60.0 s > 30.0 s)")

    row("missing_path", "does_not_exist.wav", "missing file")
    (audio / "folder.wav").mkdir(exist_ok=True)
    row("directory", "folder.wav", "not a regular file")

    wav("unreadable.wav", _tone(0.5, 16000), 16000)
    os.chmod(audio / "unreadable.wav", 0)
    row(UNREADABLE_ID, "unreadable.wav", "permission denied" if permissions_enforced() else None)

    wav("nolabel.wav", _tone(0.5, 16000), 16000)
    row("no_label", "nolabel.wav", f"missing label for task {TASK}", label=None)

    row("good_0", "good_1.wav")
    expected[f"line {len(lines)}"] = "duplicate id (first on line 1)"

    lines.append('{"id": "broken", "audio": ')
    expected[f"line {len(lines)}"] = "not valid JSON"
    lines.append(json.dumps({"id": "no_audio_field", "label": "yes"}))
    expected["no_audio_field"] = "missing audio"

    manifest = root / name
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest, expected

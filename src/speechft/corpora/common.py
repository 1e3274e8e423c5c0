"""Helpers shared by the real-corpus recipes (LibriSpeech, Speech Commands, VoxCeleb1, IEMOCAP,
Fluent Speech Commands, TED-LIUM 3).

Every recipe checks the corpus's standard on-disk layout first and fails with a
:class:`LayoutError` that names the missing path and the layout it expected; malformed index
files raise :class:`CorpusError` naming file, line and reason. Rows get their ``duration`` and
``sample_rate`` from the audio header (no decoding), and the three manifests of a subset are
written together by :func:`write_subset`.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ..data.manifest import Utterance, write_manifest
from ..utils.io import fsync_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


class CorpusError(ValueError):
    """A corpus file is malformed or inconsistent; the message names the file and the reason."""


class LayoutError(CorpusError, FileNotFoundError):
    """A folder or file of the corpus's standard layout is missing; the message names it."""


# -- layout checks ---------------------------------------------------------------------------------
def check_root(root, corpus: str, layout: str) -> Path:
    """``root`` as an absolute path; :class:`LayoutError` when it is not an existing folder."""
    if root is None:
        raise LayoutError(f"{corpus}: no root given (pass --root PATH; expected layout {layout})")
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise LayoutError(f"{corpus} root {path}: {what} (expected layout {layout})")
    return path.resolve()


def find_nested_root(root: Path, marker: str, nested: Sequence[str]) -> Path:
    """``root`` itself when it holds ``marker``; else the first ``root/<nested>`` that does.

    Lets users pass either the corpus folder or the folder it was extracted into
    (e.g. ``/data`` instead of ``/data/LibriSpeech``).
    """
    if (root / marker).exists():
        return root
    for name in nested:
        if (root / name / marker).exists():
            log.info("using %s (found %s there)", root / name, marker)
            return root / name
    return root


def require_dir(root: Path, rel: str, corpus: str, layout: str) -> Path:
    """``root/rel`` when it is a folder, else :class:`LayoutError` naming it and the layout expected."""
    path = root / rel
    if not path.is_dir():
        raise LayoutError(f"{corpus} root {root}: no {rel}/ folder (expected the standard layout {layout})")
    return path


def require_file(path: Path, corpus: str, what: str, hint: str) -> Path:
    """``path`` when it is a file, else :class:`LayoutError` ``"<corpus>: <what> <path> not found (<hint>)"``."""
    if not path.is_file():
        raise LayoutError(f"{corpus}: {what} {path} not found ({hint})")
    return path


def as_list(value, name: str) -> list[str]:
    """An option given as ``"a,b"`` or a sequence of strings -> ``["a", "b"]`` (non-empty)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif value is None:
        items = []
    else:
        items = [str(v).strip() for v in value if str(v).strip()]
    if not items:
        raise ValueError(f"option {name} must name at least one item, got {value!r}")
    return items


def examples(items: Iterable, n: int = 5) -> str:
    """``"a, b, c (and 7 more)"`` for error and warning messages."""
    items = list(items)
    head = ", ".join(str(i) for i in items[:n])
    return head + (f" (and {len(items) - n} more)" if len(items) > n else "")


def most_common(counter: Counter, n: int = 5) -> str:
    return ", ".join(f"{w} ({c})" for w, c in counter.most_common(n))


def progress(iterable, desc: str, total: Optional[int] = None, unit: str = "file"):
    """tqdm over ``iterable``; silent when stderr is not a terminal (logs, CI)."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=None, leave=False)


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """``(lineno, stripped line)`` of the non-blank lines of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise CorpusError(f"{path}: cannot be read ({e})") from None
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


# -- audio -----------------------------------------------------------------------------------------
def audio_info(path: Path) -> tuple[float, int]:
    """``(duration seconds, sample rate)`` from the file header; :class:`CorpusError` if unreadable."""
    try:
        info = sf.info(str(path))
    except FileNotFoundError:
        raise LayoutError(f"{path}: audio file not found") from None
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise CorpusError(f"{path}: not readable audio ({e})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise CorpusError(f"{path}: empty audio ({info.frames} frames)")
    return info.frames / info.samplerate, int(info.samplerate)


def with_durations(rows: Sequence[Utterance], desc: str) -> list[Utterance]:
    """Rows with ``duration`` and ``sample_rate`` filled from each file's header."""
    out = []
    for row in progress(rows, desc=f"{desc}: durations", total=len(rows)):
        duration, sr = audio_info(Path(row.audio))
        out.append(replace(row, duration=round(duration, 4), sample_rate=sr))
    return out


def write_wav_atomic(path: Path, wav: np.ndarray, sr: int) -> None:
    """16-bit PCM WAV written under a temporary name, then renamed (no half-written clips)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".wav", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, np.asarray(wav, dtype=np.float32), sr, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def has_frames(path: Path, frames: int) -> bool:
    """True when ``path`` is a readable audio file of exactly ``frames`` frames (re-runs skip it)."""
    try:
        return path.is_file() and sf.info(str(path)).frames == frames
    except (RuntimeError, sf.LibsndfileError, OSError):
        return False


# -- manifests -------------------------------------------------------------------------------------
def check_unique(rows: Sequence[Utterance], where: str) -> None:
    seen = Counter(r.id for r in rows)
    dup = [i for i, c in seen.items() if c > 1]
    if dup:
        raise CorpusError(f"{where}: duplicate utterance ids {examples(dup)}")


def write_subset(out_dir: Path, subset: str, splits: dict[str, list[Utterance]], source: str) -> dict[str, Path]:
    """Write ``out_dir/<subset>/{train,dev,test}.jsonl``; every split must be present and non-empty."""
    for split in SPLITS:
        rows = splits.get(split) or []
        if not rows:
            raise CorpusError(f"{source}: the {split} split of subset {subset!r} has no utterances")
        check_unique(rows, f"{source} ({subset}/{split})")
    paths = {}
    for split in SPLITS:
        paths[split] = write_manifest(Path(out_dir) / subset / f"{split}.jsonl", splits[split])
    log.info(
        "%s: wrote %s/{train,dev,test}.jsonl (%s utterances)", source, Path(out_dir) / subset,
        "/".join(str(len(splits[s])) for s in SPLITS),
    )
    return paths


def label_counts(rows: Sequence[Utterance], field: str = "label") -> dict[str, int]:
    return dict(sorted(Counter(getattr(r, field) for r in rows).items()))

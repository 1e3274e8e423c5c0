"""Manifests: JSONL, one utterance per line.

Fields (see README "Manifest format"):
  id           unique utterance id (required)
  audio        path to the audio file, relative to the manifest's folder or absolute (required)
  text         transcription (ASR)              phones    space-separated phone sequence (PR)
  label        class label (KS/ER/IC/...)       speaker   speaker id (SID)
  language     language code (LID)              duration  seconds (optional, filled by recipes)
  sample_rate  of the file on disk (optional)

Rows are frozen dataclasses; reading resolves ``audio`` to an absolute path and raises
:class:`ManifestError` naming the file, line and reason for anything malformed.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Optional

from ..utils.io import atomic_write_text
from ..utils.names import UnknownNameError

TARGET_FIELDS = ("text", "phones", "label", "speaker", "language")
SLOT_SEP = "|"  # joins the slot values of a slots label: "action|object|location"


class ManifestError(ValueError):
    """A manifest line cannot be parsed; the message names file, line and reason."""


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str
    text: Optional[str] = None
    phones: Optional[str] = None
    label: Optional[str] = None
    speaker: Optional[str] = None
    language: Optional[str] = None
    duration: Optional[float] = None
    sample_rate: Optional[int] = None

    def target(self, field: str) -> Optional[str]:
        if field not in TARGET_FIELDS:
            raise UnknownNameError(f"unknown target field {field!r}; expected one of {', '.join(TARGET_FIELDS)}")
        return getattr(self, field)

    def to_json(self, relative_to: Path | None = None) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if relative_to is not None:
            try:
                d["audio"] = str(Path(self.audio).resolve().relative_to(relative_to.resolve()))
            except ValueError:
                pass
        return d


_FIELD_TYPES = {f.name: f.type for f in fields(Utterance)}
_KNOWN = set(_FIELD_TYPES)


def parse_line(line: str, path: Path, lineno: int) -> Utterance:
    """Parse one JSONL line into an :class:`Utterance` (audio resolved against ``path``'s folder)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    for key in ("id", "audio"):
        if key not in obj or obj[key] in (None, ""):
            raise ManifestError(f"{path}:{lineno}: missing required field {key!r}")
    kw = {}
    for k, v in obj.items():
        if k not in _KNOWN or v is None:
            continue  # unknown keys are tolerated (kept out of the typed row)
        try:
            if k == "duration":
                v = float(v)
            elif k == "sample_rate":
                v = int(v)
            else:
                v = str(v)
        except (TypeError, ValueError):
            raise ManifestError(f"{path}:{lineno}: field {k!r} has a bad value {v!r}") from None
        kw[k] = v
    audio = kw["audio"]
    if not os.path.isabs(audio):
        audio = os.path.join(os.path.abspath(path.parent), audio)
    # abspath (not resolve): normalises '..' without a filesystem call per row (fast on big manifests)
    kw["audio"] = os.path.abspath(audio)
    return Utterance(**kw)


def iter_manifest(path: str | Path, skip_bad_lines: bool = False):
    """Yield ``(lineno, Utterance | ManifestError)``; with ``skip_bad_lines`` errors are yielded, not raised."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, parse_line(line, path, lineno)
            except ManifestError as e:
                if not skip_bad_lines:
                    raise
                yield lineno, e


def read_manifest(path: str | Path) -> list[Utterance]:
    """Read every row; raises :class:`ManifestError` on the first malformed line or duplicate id."""
    rows, seen = [], {}
    for lineno, row in iter_manifest(path):
        if row.id in seen:
            raise ManifestError(f"{path}:{lineno}: duplicate id {row.id!r} (first on line {seen[row.id]})")
        seen[row.id] = lineno
        rows.append(row)
    return rows


def write_manifest(path: str | Path, rows: Iterable[Utterance], relative: bool = True) -> Path:
    """Write rows atomically; with ``relative`` audio paths under the manifest's folder are stored relative."""
    path = Path(path)
    base = path.parent if relative else None
    text = "".join(json.dumps(r.to_json(base), ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, text)
    return path

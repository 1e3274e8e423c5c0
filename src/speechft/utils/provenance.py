"""Provenance keys: a short digest of everything that determined a result, so results are reused
only when all of it is equal (DESIGN §5).

A *provenance* is a JSON-able dict (nested dicts, lists, strings, numbers, None); its *key* is the
SHA-256 of its canonical JSON, 16 hex digits. :func:`changes` names the leaves that differ between
two provenances, for the one-line message of a refused reuse.

Files are fingerprinted by content (:func:`file_digest`: manifests, model weights) or, for audio
that may run to many gigabytes, by ``(size, mtime)`` (:func:`stat_digest`): a rewritten file gets a
new mtime, so it is never mistaken for the old one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

KEY_CHARS = 16
_FILE_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns) -> content digest, per process


def canonical(obj) -> str:
    """Canonical JSON of ``obj`` (sorted keys, tuples as lists, floats as ``repr``)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default)


def _default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"provenance: {type(o).__name__} is not JSON-able: {o!r}")


def key_of(provenance) -> str:
    """The provenance key: 16 hex digits of SHA-256 over the canonical JSON."""
    return hashlib.sha256(canonical(provenance).encode()).hexdigest()[:KEY_CHARS]


def file_digest(path: str | Path) -> str:
    """SHA-256 (16 hex digits) of a file's content; remembered per (path, size, mtime) in this process."""
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_DIGESTS[memo] = h.hexdigest()[:KEY_CHARS]
    return _FILE_DIGESTS[memo]


def stat_digest(paths: Iterable[str | Path]) -> str:
    """Digest of the (path, size, mtime) of many files (audio): cheap, and changes when any is rewritten."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:KEY_CHARS]


MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".npz", ".yaml")


def dir_digest(path: str | Path, suffixes: tuple = MODEL_FILE_SUFFIXES) -> str:
    """Content digest of a model directory: every top-level file with one of ``suffixes``
    (config, weights, preprocessor), by name and content. Model cards (README.md) do not count."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in suffixes)
    if not files:
        raise FileNotFoundError(f"{p}: no model files ({', '.join(suffixes)}) to fingerprint")
    return key_of({f.name: file_digest(f) for f in files})


def model_ref_digest(ref: str) -> str:
    """What a model reference points at: the content digest of a local directory, or the reference
    itself (built-in names and hub ids, which name fixed contents)."""
    p = Path(str(ref))
    if p.is_dir():
        return dir_digest(p)
    return f"ref:{ref}"


def changes(old, new, prefix: str = "", limit: int = 6) -> list[str]:
    """The leaves that differ between two provenances, as ``"a.b: old -> new"`` (at most ``limit``)."""
    out: list[str] = []
    _diff(old, new, prefix, out)
    return out[:limit] + ([f"… and {len(out) - limit} more"] if len(out) > limit else [])


def _short(v) -> str:
    s = canonical(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _diff(old, new, prefix: str, out: list) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{name}: (absent) -> {_short(new[k])}")
            elif k not in new:
                out.append(f"{name}: {_short(old[k])} -> (absent)")
            else:
                _diff(old[k], new[k], name, out)
    elif canonical(old) != canonical(new):
        out.append(f"{prefix or 'value'}: {_short(old)} -> {_short(new)}")

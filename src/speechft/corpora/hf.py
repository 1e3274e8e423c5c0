"""Hugging Face datasets as task data: a ``save_to_disk`` folder or an audio folder becomes manifests.

    manifests = dataset_manifests(path, columns={"text": "sentence"}, splits={"dev": "validation"})
        -> {"train": Path, "dev": Path, "test": Path}

``path`` is either a folder written by ``datasets.DatasetDict.save_to_disk`` (``dataset_dict.json``) or
an audio folder in the ``audiofolder`` layout (``<split>/<audio files>`` with a ``metadata.csv`` or
``metadata.jsonl`` naming each ``file_name``, the datasets library's layout, read here directly). Each example's audio is
decoded here with soundfile (never by ``datasets``, whose decoders need extra packages), made mono
16 kHz and written as WAV under ``out`` (default ``data_home()/hf/<key>``), with one manifest per split.

``columns`` maps a manifest field (``audio``, ``id``, ``text``, ``phones``, ``label``, ``speaker``,
``language``) to the dataset's column; a field without a mapping reads the column of the same name when
there is one. ``ClassLabel`` columns are written as their names. ``splits`` maps train/dev/test to the
dataset's split names (dev defaults to the first of validation, dev, valid). The output folder's name is a
key over the dataset's own fingerprints (or, for an audio folder, its files' paths, sizes and mtimes),
the mappings and the layout version, so a changed dataset is converted again, never served stale.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf

from ..data.audio import TARGET_SR, resample, to_mono
from ..data.manifest import TARGET_FIELDS, Utterance
from ..utils.io import atomic_write_json
from ..utils.provenance import key_of, stat_digest
from .common import SPLITS, CorpusError, has_frames, progress, write_subset, write_wav_atomic

log = logging.getLogger(__name__)

LAYOUT_VERSION = 1
FIELDS = ("audio", "id", *TARGET_FIELDS)
DEV_NAMES = ("validation", "dev", "valid")
DONE = "conversion.json"


def is_hf_dataset(path: str | Path) -> bool:
    """A ``save_to_disk`` folder (DatasetDict) or an audio folder with a metadata file."""
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or _is_audiofolder(p))


def _is_audiofolder(p: Path) -> bool:
    """The layout :func:`_load_audiofolder` reads: ``<split>/metadata.{jsonl,csv}``."""
    return any(p.glob("*/metadata.csv")) or any(p.glob("*/metadata.jsonl"))


class _Split:
    """One split's examples: ``column_names``, ``labels`` (ClassLabel columns -> their names), iteration."""

    def __init__(self, column_names, examples, labels=None):
        self.column_names, self.examples, self.labels = list(column_names), examples, dict(labels or {})

    def __len__(self):
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)


def _load_saved(path: Path) -> tuple[dict, dict]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency of the package
        raise CorpusError("reading a Hugging Face dataset needs the 'datasets' package (pip install datasets)") from None
    dd = datasets.load_from_disk(str(path))
    if not isinstance(dd, datasets.DatasetDict):
        raise CorpusError(f"{path}: a single Dataset, not a DatasetDict with train/dev/test splits")
    out = {}
    for name, ds in dd.items():
        for col, feat in ds.features.items():  # undecoded: {bytes, path}, read here with soundfile
            if isinstance(feat, datasets.Audio):
                ds = ds.cast_column(col, datasets.Audio(decode=False))
        labels = {c: f.int2str for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
        out[name] = _Split(ds.column_names, ds, labels)
    return out, {name: ds._fingerprint for name, ds in dd.items()}


def _load_audiofolder(path: Path) -> tuple[dict, dict]:
    """``<path>/<split>/metadata.{jsonl,csv}`` (``file_name`` + columns), read without ``datasets``."""
    import csv

    out, files = {}, []
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        meta = [m for m in (folder / "metadata.jsonl", folder / "metadata.csv") if m.is_file()]
        if not meta:
            continue
        if meta[0].suffix == ".jsonl":
            rows = [json.loads(line) for line in meta[0].read_text().splitlines() if line.strip()]
        else:
            with open(meta[0], newline="") as f:
                rows = list(csv.DictReader(f))
        examples = []
        for n, r in enumerate(rows, 1):
            if "file_name" not in r:
                raise CorpusError(f"{meta[0]}:{n}: no file_name")
            audio = folder / r["file_name"]
            if not audio.is_file():
                raise CorpusError(f"{meta[0]}:{n}: audio {audio} not found")
            files.append(audio)
            examples.append({**{k: v for k, v in r.items() if k != "file_name"}, "audio": str(audio)})
        names = ["audio", *(k for k in (rows[0] if rows else {}) if k != "file_name")]
        out[folder.name] = _Split(names, examples)
    if not out:
        raise CorpusError(f"{path}: no <split>/metadata.jsonl or metadata.csv (audio folder layout)")
    return out, {"files": stat_digest([*files, *(p for p in path.glob("*/metadata.*"))])}


def _load(path: Path) -> tuple[dict, dict]:
    """``({split name: _Split}, content digest)`` of the dataset at ``path``."""
    return _load_saved(path) if (path / "dataset_dict.json").is_file() else _load_audiofolder(path)


def _split_names(dd, splits: dict) -> dict:
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise CorpusError(f"unknown split(s) {unknown} in the split mapping; expected {', '.join(SPLITS)}")
    out = {}
    for split in SPLITS:
        name = splits.get(split) or (split if split != "dev" else next((d for d in DEV_NAMES if d in dd), "dev"))
        if name not in dd:
            raise CorpusError(f"the dataset has no split {name!r} for {split} (it has {', '.join(dd)}); "
                              f"map it with {split}=NAME")
        out[split] = name
    return out


def _columns(ds, columns: dict, where: str) -> dict:
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise CorpusError(f"unknown field(s) {unknown} in the column mapping; expected {', '.join(FIELDS)}")
    out = {}
    for field in FIELDS:
        col = columns.get(field) or (field if field in ds.column_names else None)
        if col is None:
            continue
        if col not in ds.column_names:
            raise CorpusError(f"{where}: no column {col!r} for {field} (columns: {', '.join(ds.column_names)})")
        out[field] = col
    if "audio" not in out:
        raise CorpusError(f"{where}: no audio column (columns: {', '.join(ds.column_names)}); map it with audio=NAME")
    return out


def _decode(value, where: str) -> tuple[np.ndarray, int]:
    if isinstance(value, dict) and value.get("bytes"):
        src = io.BytesIO(value["bytes"])
    elif isinstance(value, dict) and value.get("path"):
        src = value["path"]
    elif isinstance(value, str):
        src = value
    else:
        raise CorpusError(f"{where}: the audio value holds neither bytes nor a path")
    try:
        wav, sr = sf.read(src, dtype="float32", always_2d=False)
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise CorpusError(f"{where}: audio not readable ({e})") from None
    return resample(to_mono(wav), sr, TARGET_SR), TARGET_SR


def dataset_manifests(path: str | Path, out: Optional[str | Path] = None, columns: Optional[dict] = None,
                      splits: Optional[dict] = None) -> dict[str, Path]:
    """Convert the dataset at ``path`` (module doc) once; returns the train/dev/test manifests."""
    from ..paths import data_home

    path = Path(path).expanduser().resolve()
    columns, splits = dict(columns or {}), dict(splits or {})
    dd, digest = _load(path)
    names = _split_names(dd, splits)
    key = key_of({"layout": LAYOUT_VERSION, "source": str(path), "digest": digest, "columns": columns, "splits": names})
    out = Path(out) if out is not None else data_home() / "hf" / f"{path.name}-{key}"
    done = out / DONE
    if done.is_file() and json.loads(done.read_text()).get("key") == key:
        return {s: out / "task" / f"{s}.jsonl" for s in SPLITS}
    rows: dict[str, list[Utterance]] = {}
    for split, name in names.items():
        ds = dd[name]
        cols = _columns(ds, columns, f"{path} [{name}]")
        rows[split] = []
        for i, ex in enumerate(progress(ds, desc=f"{path.name} {split}", unit="utt")):
            uid = str(ex[cols["id"]]) if "id" in cols else f"{name}-{i:07d}"
            wav, sr = _decode(ex[cols["audio"]], f"{path} [{name}] example {i}")
            clip = out / "task" / "wav" / split / f"{i:07d}.wav"
            if not has_frames(clip, len(wav)):
                write_wav_atomic(clip, np.clip(wav, -1.0, 1.0), sr)
            fields = {}
            for f in TARGET_FIELDS:
                if f in cols and ex[cols[f]] is not None:
                    v = ex[cols[f]]
                    fields[f] = ds.labels[cols[f]](v) if cols[f] in ds.labels else str(v)
            rows[split].append(Utterance(id=uid, audio=str(clip), duration=round(len(wav) / sr, 4), sample_rate=sr,
                                         **fields))
    paths = write_subset(out, "task", rows, f"Hugging Face dataset {path}")
    atomic_write_json(done, {"key": key, "source": str(path), "splits": names, "columns": columns})
    return paths


def parse_mapping(text: Optional[str], option: str) -> tuple[dict, dict]:
    """``"text=sentence,dev=validation"`` -> (column mapping, split mapping); one error line per bad item."""
    columns, splits = {}, {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"{option}: {item!r} is not FIELD=COLUMN or SPLIT=NAME")
        k, v = (x.strip() for x in item.split("=", 1))
        if k in SPLITS:
            splits[k] = v
        elif k in FIELDS:
            columns[k] = v
        else:
            raise ValueError(f"{option}: unknown key {k!r}; expected one of {', '.join(FIELDS + SPLITS)}")
    return columns, splits

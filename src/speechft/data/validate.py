"""Manifest + audio validation: every bad row found up front, each with one clear reason.

Training, probing and pre-training call :func:`load_checked_rows` before any long job, so a broken
file fails in seconds with a list of every bad row instead of crashing hours into a run (or being
skipped silently). ``speechft validate`` prints the same report.

Checks, in order; a row gets the first one that fails as its single reason:

    manifest line   "not valid JSON", "not a JSON object", "missing id", "missing audio", "bad value for field 'x'"
    id              "duplicate id (first on line 3)"  (across all manifests validated together)
    file            "missing file", "permission denied", "not a regular file", "empty file (0 bytes)"
    container       "truncated header", "not audio", "truncated (header says N frames, file holds M)"
    samples         "empty audio (0 samples)", "NaN/inf samples"
    duration        "too short (0.01 s < 0.10 s)", "too long (60.0 s > 30.0 s)"
    format          "2 channels (expected 1)" (only with ``channels``),
                    "sample rate 8000 Hz (expected 16000)" (only with ``sample_rates``)
    target          "missing label for task lite-ks", "2 slots in label (expected 3)", "empty slot in label"

Other sample rates and multi-channel files are fine (resampled / averaged on load) and are only
counted in ``report.notes``. Samples are read in blocks, so long files never sit in memory whole.

Re-runs are cheap: the facts read from each audio file (rate, channels, readable frames, finite)
are cached in ``data_home()/validation-cache/`` keyed by (path, size, mtime), one small JSON per
manifest. A second run on unchanged files only ``stat``s them; the options (durations, channels,
rates, task) are re-applied to the cached facts, so changing them never needs a re-read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from tqdm.auto import tqdm

from ..paths import data_home
from ..utils.io import atomic_write_json
from .audio import TARGET_SR, scan_audio
from .manifest import SLOT_SEP, ManifestError, Utterance, parse_line

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class DataValidationError(ValueError):
    """Rows failed validation; ``.report`` is the full :class:`ValidationReport`."""

    def __init__(self, message: str, report: "ValidationReport"):
        super().__init__(message)
        self.report = report


_KIND_PATTERNS = ((re.compile(r"^\d+ channels"), "wrong channel count"),
                  (re.compile(r"^sample rate "), "unexpected sample rate"),
                  (re.compile(r"^missing \w+ for task "), "missing target"),
                  (re.compile(r"^\d+ slots in "), "wrong slot count"))


def _kind_of(reason: str) -> str:
    """A reason without its details, for counting: "too short (0.01 s < 0.10 s)" -> "too short"."""
    for pattern, kind in _KIND_PATTERNS:
        if pattern.match(reason):
            return kind
    return reason.split(" (")[0]


@dataclass(frozen=True)
class BadRow:
    """One unusable manifest row. ``kind`` is ``reason`` without details, for counting."""

    manifest: str
    lineno: int
    id: Optional[str]
    path: Optional[str]
    reason: str
    kind: str = ""

    def __post_init__(self):
        if not self.kind:
            object.__setattr__(self, "kind", _kind_of(self.reason))

    def format(self) -> str:
        return f"{self.manifest}:{self.lineno}  {self.id or '-'}  {self.path or '-'}  {self.reason}"


@dataclass
class ValidationReport:
    """Result of :func:`validate_manifests`.

    ``good_rows`` maps each manifest (as given) to its usable rows, in file order, with
    ``duration``/``sample_rate`` filled from the audio file where the manifest left them out.
    """

    manifests: list[str]
    bad: list[BadRow] = field(default_factory=list)
    good_rows: dict[str, list[Utterance]] = field(default_factory=dict)
    total_rows: dict[str, int] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.bad

    def counts(self, manifest: Optional[str] = None) -> Counter:
        """Bad rows per kind (all manifests, or one)."""
        return Counter(b.kind for b in self.bad if manifest is None or b.manifest == manifest)

    def format_lines(self) -> list[str]:
        """One line per bad row: ``manifest:line  id  path  reason``."""
        return [b.format() for b in self.bad]

    def summary(self) -> str:
        total = sum(self.total_rows.values())
        good = sum(len(r) for r in self.good_rows.values())
        n = len(self.manifests)
        text = f"{n} manifest{'s' if n != 1 else ''}, {total} rows: {good} good, {len(self.bad)} bad"
        if self.bad:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in self.counts().most_common()) + ")"
        if self.notes:
            text += "; notes: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.notes.items()))
        return text


def _fmt_pair(a: float, b: float, decimals: int) -> tuple[str, str]:
    """Format two durations with ``decimals`` places, or more when that would print them equal."""
    for nd in range(decimals, 5):
        sa, sb = f"{a:.{nd}f}", f"{b:.{nd}f}"
        if sa != sb:
            break
    return sa, sb


def _audio_verdict(facts: dict, min_seconds: float, max_seconds: Optional[float],
                   channels: Optional[int], sample_rates: Optional[Sequence[int]]) -> Optional[str]:
    if "error" in facts:
        return facts["error"]
    frames, sr, ch = facts["frames"], facts["sample_rate"], facts["channels"]
    if frames == 0:
        return "empty audio (0 samples)"
    if not facts["finite"]:
        return "NaN/inf samples"
    dur = frames / sr
    if dur < min_seconds:
        a, b = _fmt_pair(dur, min_seconds, 2)
        return f"too short ({a} s < {b} s)"
    if max_seconds is not None and dur > max_seconds:
        a, b = _fmt_pair(dur, max_seconds, 1)
        return f"too long ({a} s > {b} s)"
    if channels is not None and ch != channels:
        return f"{ch} channels (expected {channels})"
    if sample_rates and sr not in sample_rates:
        return f"sample rate {sr} Hz (expected {'/'.join(str(r) for r in sample_rates)})"
    return None


# -- targets ------------------------------------------------------------------------------------
def _target_verdict(row: Utterance, task, n_slots: Optional[int]) -> Optional[str]:
    fld = task.target_field
    value = row.target(fld)
    if value is None or not str(value).strip():
        return f"missing {fld} for task {task.name}"
    if task.kind == "slots":
        parts = str(value).split(SLOT_SEP)
        if n_slots and len(parts) != n_slots:
            return f"{len(parts)} slots in {fld} (expected {n_slots})"
        if any(not p.strip() for p in parts):
            return f"empty slot in {fld}"
    return None


def _expected_slots(task, rows: Iterable[Utterance]) -> Optional[int]:
    """A slots task's slot count: declared by the task, else the most common count in the data."""
    declared = getattr(task, "num_slots", None)
    if declared:
        return int(declared)
    counts = Counter(len(str(v).split(SLOT_SEP)) for r in rows if (v := r.target(task.target_field)))
    return counts.most_common(1)[0][0] if counts else None


# -- cache --------------------------------------------------------------------------------------
def _cache_path(manifest: Path) -> Path:
    key = hashlib.sha1(str(manifest.resolve()).encode("utf-8")).hexdigest()[:20]
    return data_home() / "validation-cache" / f"{key}.json"


def _load_cache(manifest: Path) -> dict:
    p = _cache_path(manifest)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(obj, dict) or obj.get("version") != CACHE_VERSION or not isinstance(obj.get("files"), dict):
        return {}
    return obj["files"]


def _save_cache(manifest: Path, files: dict) -> None:
    try:
        atomic_write_json(_cache_path(manifest), {"version": CACHE_VERSION, "manifest": str(manifest.resolve()),
                                                  "files": files}, indent=None)
    except OSError as e:  # a read-only data home only costs speed on the next run
        log.debug("could not write validation cache for %s: %s", manifest, e)


# -- the whole check ----------------------------------------------------------------------------
def _line_reason(err: ManifestError, lineno: int) -> str:
    msg = str(err).split(f":{lineno}: ", 1)[-1]
    if msg.startswith("not valid JSON"):
        return "not valid JSON"
    if msg.startswith("expected a JSON object"):
        return "not a JSON object"
    if msg.startswith("missing required field"):
        return "missing " + msg.rsplit(" ", 1)[-1].strip("'")
    if msg.startswith("field "):
        return "bad value for " + msg.split(" has ")[0]
    return msg


def _iter_lines(path: Path):
    """``(lineno, raw line, Utterance | ManifestError)`` for every non-blank line (same parser as
    :func:`iter_manifest`, but keeping the raw line so a malformed row can still be named by id)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, line, parse_line(line, path, lineno)
            except ManifestError as e:
                yield lineno, line, e


def _id_of(raw: str) -> Optional[str]:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return str(rid) if rid not in (None, "") else None


def _check_options(manifests: list[Path], min_seconds: float, max_seconds: Optional[float],
                   channels: Optional[int], sample_rates: Optional[Sequence[int]]) -> Optional[list[int]]:
    """Raise for missing manifests (:class:`ManifestError`) and nonsensical options (``ValueError``);
    the accepted sample rates, sorted (None: any)."""
    if not manifests:
        raise ValueError("validate: no manifests given")
    missing = [str(p) for p in manifests if not p.is_file()]
    if missing:
        raise ManifestError(f"manifest not found: {', '.join(missing)}")
    if min_seconds < 0 or (max_seconds is not None and max_seconds <= min_seconds):
        raise ValueError(f"validate: need 0 <= min_seconds < max_seconds, got {min_seconds} and {max_seconds}")
    if channels is not None and channels < 1:
        raise ValueError(f"validate: channels must be >= 1, got {channels}")
    rates = sorted({int(r) for r in sample_rates}) if sample_rates else None
    if rates and rates[0] <= 0:
        raise ValueError(f"validate: sample rates must be positive, got {rates}")
    names = [str(p) for p in manifests]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"validate: manifest given more than once: {', '.join(twice)}")
    return rates


def _parse_rows(manifests: list[Path], report: ValidationReport) -> list[tuple[int, str, int, Utterance]]:
    """Pass 1: parse every line, in file order; unparsable lines and duplicate ids (the first occurrence
    wins) go to ``report.bad``. The parsed rows as (manifest index, manifest name, line number, row)."""
    entries: list[tuple[int, str, int, Utterance]] = []
    seen: dict[str, tuple[str, int]] = {}
    for mi, (p, name) in enumerate(zip(manifests, report.manifests)):
        for lineno, raw, item in _iter_lines(p):
            report.total_rows[name] += 1
            if isinstance(item, ManifestError):
                rid = _id_of(raw)
                report.bad.append(BadRow(name, lineno, rid, None, _line_reason(item, lineno)))
                continue
            if item.id in seen:
                fm, fl = seen[item.id]
                where = f"line {fl}" if fm == name else f"{Path(fm).name}:{fl}"
                report.bad.append(BadRow(name, lineno, item.id, item.audio, f"duplicate id (first on {where})"))
                continue
            seen[item.id] = (name, lineno)
            entries.append((mi, name, lineno, item))
    return entries


def _audio_facts(manifests: list[Path], entries: list, use_cache: bool, workers: Optional[int]) -> dict[str, dict]:
    """Pass 2: the facts of every audio file the rows name (:func:`scan_audio`), from the manifests' caches
    when the file's (size, mtime) still match, else read with a thread pool."""
    caches = [_load_cache(p) if use_cache else {} for p in manifests]
    facts: dict[str, dict] = {}
    todo: dict[str, None] = {}  # ordered set of files to read
    for mi, _, _, row in entries:
        if row.audio in facts or row.audio in todo:
            continue
        cached = caches[mi].get(row.audio)
        try:
            st = os.stat(row.audio)
        except FileNotFoundError:
            facts[row.audio] = {"error": "missing file"}  # no need to hand it to a worker
            continue
        except OSError:
            st = None
        if cached and st is not None and cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns:
            facts[row.audio] = cached
        else:
            todo[row.audio] = None
    if todo:
        n_workers = workers or min(4, 2 * (os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            it = pool.map(scan_audio, list(todo))
            for path, f in zip(todo, tqdm(it, total=len(todo), desc="validating audio", unit="file",
                                          disable=len(todo) < 200)):
                facts[path] = f
    log.debug("validation: %d files read, %d from cache", len(todo), len(facts) - len(todo))
    return facts


def _judge_rows(entries: list, facts: dict[str, dict], task, report: ValidationReport, min_seconds: float,
                max_seconds: Optional[float], channels: Optional[int], rates: Optional[list[int]]) -> list[dict]:
    """Pass 3: the verdict on every parsed row, into ``report`` (bad rows with their reason; good rows with
    their duration and sample rate filled in; notes). Returns the facts to cache, per manifest."""
    n_slots = _expected_slots(task, (e[3] for e in entries)) if task is not None and task.kind == "slots" else None
    new_cache: list[dict] = [{} for _ in report.manifests]
    for mi, name, lineno, row in entries:
        f = facts[row.audio]
        if "mtime_ns" in f and f.get("error") not in ("permission denied",):
            new_cache[mi][row.audio] = f
        reason = _audio_verdict(f, min_seconds, max_seconds, channels, rates)
        if reason is None and task is not None:
            reason = _target_verdict(row, task, n_slots)
        if reason is not None:
            report.bad.append(BadRow(name, lineno, row.id, row.audio, reason))
            continue
        sr, ch, dur = f["sample_rate"], f["channels"], f["frames"] / f["sample_rate"]
        if sr != TARGET_SR:
            report.notes[f"resampled from {sr} Hz"] += 1
        if ch > 1:
            report.notes[f"{ch} channels averaged to mono"] += 1
        if row.duration is not None and abs(row.duration - dur) > 0.05:
            report.notes["manifest duration differs from the file"] += 1
        report.good_rows[name].append(dataclasses.replace(
            row, duration=row.duration if row.duration is not None else dur,
            sample_rate=row.sample_rate if row.sample_rate is not None else sr))
    return new_cache


def validate_manifests(
    paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    task=None,
    min_seconds: float = 0.1,
    max_seconds: Optional[float] = 30.0,
    channels: Optional[int] = None,
    sample_rates: Optional[Sequence[int]] = None,
    use_cache: bool = True,
    workers: Optional[int] = None,
) -> ValidationReport:
    """Check every row of every manifest (see the module docstring for the checks and reasons).

    ``task`` is a :class:`speechft.tasks.Task` or a task name; it adds the target check.
    ``max_seconds=None`` means no upper limit. Raises :class:`ManifestError` when a manifest
    file itself is missing and ``ValueError`` for nonsensical options.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    manifests = [Path(p) for p in paths]
    rates = _check_options(manifests, min_seconds, max_seconds, channels, sample_rates)
    if isinstance(task, str):
        from ..tasks import get_task

        task = get_task(task)
    names = [str(p) for p in manifests]
    report = ValidationReport(manifests=names, good_rows={m: [] for m in names}, total_rows=dict.fromkeys(names, 0))
    entries = _parse_rows(manifests, report)
    facts = _audio_facts(manifests, entries, use_cache, workers)
    new_cache = _judge_rows(entries, facts, task, report, min_seconds, max_seconds, channels, rates)
    if use_cache:
        for p, files in zip(manifests, new_cache):
            _save_cache(p, files)
    report.bad.sort(key=lambda b: (names.index(b.manifest), b.lineno))
    return report


def load_checked_rows(
    manifest: Union[str, os.PathLike],
    task=None,
    skip_bad: bool = False,
    min_seconds: float = 0.1,
    max_seconds: Optional[float] = None,
    channels: Optional[int] = None,
    sample_rates: Optional[Sequence[int]] = None,
) -> list[Utterance]:
    """Validated rows of one manifest, for training/probing/pre-training to call up front.

    Any bad row raises :class:`DataValidationError` listing every bad row, a summary and how to
    skip them; with ``skip_bad`` the bad rows are logged as skipped and the good ones returned.
    Raises as well when no row at all is usable.
    """
    report = validate_manifests([manifest], task=task, min_seconds=min_seconds, max_seconds=max_seconds,
                                channels=channels, sample_rates=sample_rates)
    name = report.manifests[0]
    rows = report.good_rows[name]
    if report.bad and not skip_bad:
        lines = "\n".join("  " + line for line in report.format_lines())
        raise DataValidationError(
            f"{len(report.bad)} of {report.total_rows[name]} rows in {name} failed validation:\n{lines}\n"
            f"{report.summary()}\n"
            "Fix or remove these rows, or pass --skip-bad to use only the good rows.",
            report)
    if report.bad:
        counts = ", ".join(f"{k}: {v}" for k, v in report.counts().most_common())
        log.warning("skipped %d of %d rows in %s: %s", len(report.bad), report.total_rows[name], name, counts)
    if not rows:
        raise DataValidationError(f"{name}: no usable rows ({report.summary()})", report)
    return rows

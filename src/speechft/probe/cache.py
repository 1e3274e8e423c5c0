"""On-disk cache of frozen-encoder features: every layer of every utterance, float16, sharded.

The frozen encoder runs once per utterance; every probe epoch then reads the cache. Layout of one
split (``data_home()/features/<model key>/<corpus-subset-split>/`` by default)::

    shard-<tag>.npy         float16 [N_frames, L+1, F]  frames of consecutive utterances, back to back
    shard-<tag>.pooled.npy  float32 [N_utts, L+1, F]    per-layer mean over each utterance's frames
    shard-<tag>.json        index: one entry per utterance {id, key, offset, frames, row}

Next to the split folders, a model's folder holds ``model.json`` (the encoder's name) and
``last-used`` (touched whenever its features are asked for), which ``speechft cache list`` and
``speechft cache prune`` read.

A *pooled-only* split (folder name ending ``-pooled``, :func:`split_folder`) holds no frame file: the
tasks that read it (utterance classification, :func:`speechft.probe.train.uses_pooled`) only ever
read pooled vectors, which are ~T times smaller than the frames (lite-sid, study size: MB instead of
GB per model). Its ``frames()`` raises instead of returning anything.

The JSON sidecar is written last (atomically), so a shard is visible only once complete and an
interrupted extraction resumes where it stopped. An utterance's cache key combines its audio path, the
file's size and mtime, and the encoder version (:func:`encoder_version`); the model's weight
fingerprint is the folder above.
Reads are memory-mapped: at most one batch of frames is in RAM at a time.

The pooled vectors are computed from the *stored float16 frames*, upcast to float32, so a pooled
classifier reading them gives the same result as pooling the cached frames itself.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.manifest import Utterance
from ..data.sampler import pack_batches
from ..utils.io import atomic_write_json, check_writable, remove_empty_dir

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when extraction or the storage layout changes
WARN_BYTES = 2 * 2**30  # warn before an extraction that writes more than this
SHARD_BYTES = 128 * 2**20  # start a new shard file after this many bytes of frames
SHARD_UTTS = 2048
_WARNED: set = set()
# Padded seconds of audio per extraction batch. Small batches keep the CNN's activations
# ([B, C, 3200 x seconds]) inside the CPU cache: speechft-tiny extracted lite-pr audio 1.5x faster
# with 8-16 s batches than with 64 s ones (2 cores; 4 s batches were slower again).
EXTRACT_BATCH_SECONDS = 10.0


def encoder_version(encoder) -> str:
    """What besides the weights changes the features: the cache layout and input normalisation.
    (The weight fingerprint, which names the folder above, already covers the encoder class.)"""
    return f"v{CACHE_VERSION}:norm={int(bool(getattr(encoder, 'normalize_input', False)))}"


def model_key(encoder) -> str:
    """Folder name of one model's features: its weight fingerprint."""
    return encoder.fingerprint()


def utterance_key(row: Utterance, version: str) -> str:
    """Cache key of one utterance's features: encoder version, audio path and the file's (size, mtime),
    so audio rewritten under the same path is extracted again instead of read from the cache."""
    st = os.stat(row.audio)
    return hashlib.sha1(f"{version}|{row.audio}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def estimate_bytes(seconds: float, encoder, utterances: int = 0, pooled_only: bool = False) -> int:
    """Bytes written for ``seconds`` of audio in ``utterances`` utterances: float16 frames (unless
    ``pooled_only``) plus one float32 pooled vector per utterance."""
    states = encoder.num_layers + 1
    pooled = utterances * states * encoder.hidden_size * 4
    return pooled + (0 if pooled_only else int(seconds * encoder.frame_rate * states * encoder.hidden_size * 2))


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FeatureCache:
    """Read side of one split's cache: ``frames(ids)`` and ``pooled(ids)`` by utterance id.

    ``frames(ids)`` -> list of float16 ndarray ``[T_i, L+1, F]`` (copies of memory-mapped slices)
    ``pooled(ids)`` -> float32 ndarray ``[B, L+1, F]``
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.entries: dict[str, dict] = {}  # id -> {"key", "shard", "offset", "frames", "row"}
        self._frames: dict[str, np.ndarray] = {}
        self._pooled: dict[str, np.ndarray] = {}
        self.reload()

    def reload(self) -> None:
        self.entries.clear()
        if not self.folder.is_dir():
            return
        # Sidecars in write order, so a re-extracted utterance (new key) overrides its stale entry.
        for side in sorted(self.folder.glob("shard-*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name)):
            try:
                meta = json.loads(side.read_text())
            except (OSError, json.JSONDecodeError) as e:
                log.warning("ignoring unreadable cache index %s (%s); its utterances will be re-extracted", side, e)
                continue
            shard = side.name[: -len(".json")]
            pooled_only = bool(meta.get("pooled_only", False))
            if not (self.folder / f"{shard}{'.pooled.npy' if pooled_only else '.npy'}").exists():
                if side not in _WARNED:  # once per process, not at every reload
                    _WARNED.add(side)
                    log.warning("cache index %s has no data file; its utterances will be re-extracted", side)
                continue
            for e in meta["utts"]:
                self.entries[e["id"]] = {**e, "shard": shard, "pooled_only": pooled_only}

    def has(self, row: Utterance, version: str) -> bool:
        e = self.entries.get(row.id)
        return e is not None and e["key"] == utterance_key(row, version)

    def num_frames(self, uid: str) -> int:
        return int(self.entries[uid]["frames"])

    def _map(self, store: dict, shard: str, suffix: str) -> np.ndarray:
        if shard not in store:
            store[shard] = np.load(self.folder / f"{shard}{suffix}", mmap_mode="r")
        return store[shard]

    def frames(self, ids: Sequence[str]) -> list[np.ndarray]:
        out = []
        for uid in ids:
            e = self._entry(uid)
            if e["pooled_only"]:
                raise ValueError(f"the feature cache {self.folder} holds pooled vectors only (no frames of {uid!r})")
            arr = self._map(self._frames, e["shard"], ".npy")
            out.append(np.array(arr[e["offset"]: e["offset"] + e["frames"]]))
        return out

    def pooled(self, ids: Sequence[str]) -> np.ndarray:
        rows = []
        for uid in ids:
            e = self._entry(uid)
            rows.append(self._map(self._pooled, e["shard"], ".pooled.npy")[e["row"]])
        return np.stack(rows).astype(np.float32, copy=False)

    def _entry(self, uid: str) -> dict:
        try:
            return self.entries[uid]
        except KeyError:
            raise KeyError(f"utterance {uid!r} is not in the feature cache {self.folder}") from None

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("shard-*") if p.is_file())


class _ShardWriter:
    """Accumulates extracted utterances and writes them as one shard (data first, index last).
    ``pooled_only``: keep each utterance's pooled vector and frame count, write no frame file."""

    def __init__(self, folder: Path, shard_bytes: int = SHARD_BYTES, shard_utts: int = SHARD_UTTS,
                 pooled_only: bool = False):
        self.folder, self.shard_bytes, self.shard_utts = folder, shard_bytes, shard_utts
        self.pooled_only = pooled_only
        self.items: list[tuple[str, str, Optional[np.ndarray], np.ndarray, int]] = []  # id, key, frames, pooled, T
        self.nbytes = 0
        self.written = 0

    def add(self, uid: str, key: str, frames: np.ndarray) -> None:
        """``frames``: float16 ``[T, L+1, F]``. Pooled from the stored float16 values, so pooled ==
        the mean of the cached frames (and a pooled-only cache holds the same vectors)."""
        pooled = frames.astype(np.float32).mean(axis=0)
        kept = None if self.pooled_only else frames
        self.items.append((uid, key, kept, pooled, int(frames.shape[0])))
        self.nbytes += pooled.nbytes + (0 if kept is None else kept.nbytes)
        if self.nbytes >= self.shard_bytes or len(self.items) >= self.shard_utts:
            self.flush()

    def flush(self) -> None:
        if not self.items:
            return
        tag = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        entries, off = [], 0
        for i, (uid, key, _, _, n) in enumerate(self.items):
            entries.append({"id": uid, "key": key, "offset": off, "frames": n, "row": i})
            off += n
        if not self.pooled_only:
            _atomic_save_npy(self.folder / f"shard-{tag}.npy", np.concatenate([f for _, _, f, _, _ in self.items], axis=0))
        _atomic_save_npy(self.folder / f"shard-{tag}.pooled.npy", np.stack([p for _, _, _, p, _ in self.items]))
        index = {"cache_version": CACHE_VERSION, "pooled_only": self.pooled_only, "utts": entries}
        atomic_write_json(self.folder / f"shard-{tag}.json", index, indent=None)
        self.written += len(self.items)
        self.items, self.nbytes = [], 0


def length_sorted_batches(durations: Sequence[float], batch_seconds: float) -> list[list[int]]:
    """Indices sorted by duration, cut into batches whose padded length stays within ``batch_seconds``
    (a single longer utterance still forms its own batch); durations are floored at 1 ms."""
    order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
    return pack_batches(order, [max(float(d), 1e-3) for d in durations], batch_seconds)


def ensure_features(
    encoder,
    rows: Sequence[Utterance],
    folder: str | Path,
    batch_seconds: float = EXTRACT_BATCH_SECONDS,
    device: str = "cpu",
    desc: str = "extract",
    progress: bool = True,
    pooled_only: bool = False,
) -> FeatureCache:
    """Extract the features of every row not yet cached in ``folder`` and return the cache.

    The encoder runs in eval mode under ``torch.inference_mode`` on length-sorted batches; each
    utterance keeps exactly its ``frame_lens[b]`` real frames. ``pooled_only``: store only the
    pooled vectors (for a folder that pooled tasks alone read; see :func:`split_folder`).
    """
    return ensure_features_many([encoder], rows, [folder], batch_seconds, device, desc, progress, pooled_only)[0]


def ensure_features_many(
    encoders: Sequence,
    rows: Sequence[Utterance],
    folders: Sequence[str | Path],
    batch_seconds: float = EXTRACT_BATCH_SECONDS,
    device: str = "cpu",
    desc: str = "extract",
    progress: bool = True,
    pooled_only: bool = False,
) -> list[FeatureCache]:
    """:func:`ensure_features` for several encoders on the same rows in one pass over the audio
    (``folders[i]`` is encoder i's cache). Encoders sharing a CNN (a pre-trained model, its
    Stable-FT and Speech-FT descendants) run it once per batch (:func:`~speechft.models.encoder.forward_many`);
    each cache is bit-identical to a separate :func:`ensure_features`. ``pooled_only`` applies to
    every folder."""
    from tqdm.auto import tqdm

    from ..data.dataset import AudioDataset, collate
    from ..models.encoder import forward_many

    if len(encoders) != len(folders):
        raise ValueError(f"{len(encoders)} encoders but {len(folders)} cache folders")
    folders = [Path(f) for f in folders]
    caches = [FeatureCache(f) for f in folders]
    versions = [encoder_version(e) for e in encoders]
    # per encoder: the ids of rows it still needs
    need = [{r.id for r in rows if not c.has(r, v)} for c, v in zip(caches, versions)]
    todo = [r for r in rows if any(r.id in n for n in need)]
    if not todo:
        return caches
    for f, n in zip(folders, need):
        if n:
            check_writable(f)
            f.mkdir(parents=True, exist_ok=True)
    ds = AudioDataset(todo)
    durs = ds.durations()
    for e, f, n in zip(encoders, folders, need):
        if n:
            secs = sum(d for d, r in zip(durs, todo) if r.id in n)
            est = estimate_bytes(secs, e, len(n), pooled_only)
            msg = "feature cache: extracting %d utterances (%.1f min of audio) into %s, about %.1f MiB on disk"
            (log.warning if est > WARN_BYTES else log.debug)(msg, len(n), secs / 60, f, est / 2**20)
    writers = [_ShardWriter(f, pooled_only=pooled_only) for f in folders]
    active = [i for i, n in enumerate(need) if n]
    keys = {i: encoders[i].cnn_key() for i in active}
    was_training = [e.training for e in encoders]
    for e in encoders:
        e.eval()
    t0 = time.perf_counter()
    try:
        bar = tqdm(total=len(todo), desc=desc, unit="utt", disable=not progress, leave=False)
        with torch.inference_mode():
            for idx in length_sorted_batches(durs, batch_seconds):
                batch = collate([ds[i] for i in idx])
                users = [i for i in active if any(todo[j].id in need[i] for j in idx)]
                outs = forward_many([encoders[i] for i in users], batch["wav"].to(device),
                                    batch["wav_lens"].to(device), keys=[keys[i] for i in users])
                for i, (states, frame_lens) in zip(users, outs):
                    # [L+1, B, T, F] -> [B, T, L+1, F]: one utterance's frames are then contiguous on disk.
                    stacked = torch.stack([s.float() for s in states], 0).permute(1, 2, 0, 3).to("cpu", torch.float16)
                    T = stacked.shape[1]
                    for b, j in enumerate(idx):
                        if todo[j].id in need[i]:
                            n = max(1, min(int(frame_lens[b]), T))
                            writers[i].add(todo[j].id, utterance_key(todo[j], versions[i]), stacked[b, :n].numpy().copy())
                bar.update(len(idx))
        for w in writers:
            w.flush()
        bar.close()
    finally:
        for e, t in zip(encoders, was_training):
            e.train(t)
    log.debug("feature cache: %d utterances extracted in %.1f s for %d model(s), %d distinct CNN(s)",
             len(todo), time.perf_counter() - t0, len(active), len({keys[i] or f"none-{i}" for i in active}))
    for i in active:
        caches[i].reload()
    return caches


def split_name(task, split: str, size: str, pooled_only: bool = False) -> str:
    """Folder name of one split's features under a model's folder: ``<corpus-subset-split>[-pooled]``
    (user tasks: ``user-<name>-<manifest hash>-<split>``)."""
    if task.manifests is not None:
        digest = hashlib.sha1(str(task.manifests[("train", "dev", "test").index(split)]).encode()).hexdigest()[:8]
        name = f"user-{task.name}-{digest}-{split}"
    else:
        corpus = task.corpus if size == "default" or task.corpus != "lite" else f"{task.corpus}_{size}"
        name = f"{corpus}-{task.subset or task.name}-{split}"
    return f"{name}-pooled" if pooled_only else name


def cache_root(cache_dir: Optional[str | Path] = None) -> Path:
    """The feature cache's root: ``cache_dir``, else ``data_home()/features``."""
    from ..paths import data_home

    return Path(cache_dir).expanduser() if cache_dir else data_home() / "features"


def model_folder(model: str, cache_dir: Optional[str | Path] = None) -> Path:
    """``<cache_dir or data_home()/features>/<model key>``: one model's split folders."""
    return cache_root(cache_dir) / model


def split_folder(task, split: str, size: str, model: str, cache_dir: Optional[str | Path] = None,
                 pooled_only: bool = False) -> Path:
    """``<cache_dir or data_home()/features>/<model key>/<corpus-subset-split>[-pooled]``.

    Tasks on the same audio (fsdd-ks and fsdd-sid) share one folder; user tasks get a folder per
    manifest (its path hashed into the name). A pooled-only cache has its own folder (``-pooled``),
    so a task that reads frames never finds a folder without them.
    """
    return model_folder(model, cache_dir) / split_name(task, split, size, pooled_only)


# -- one model's folder: what it holds, when it was last used; listing and pruning a cache root --------
MODEL_INFO = "model.json"  # {"name": the encoder's name when its features were first extracted}
LAST_USED = "last-used"  # empty file: its mtime is the last time features of this model were asked for


IN_USE = "in-use-"  # empty file "in-use-<host>-<pid>" while that process may read or write the folder
FOREIGN_IN_USE_HOURS = 12.0  # a mark of another host's process counts as live for this long after its last touch
_claimed: set[Path] = set()  # model folders this process has marked in use (released at exit)


def mark_used(model_dir: Path, name: Optional[str]) -> None:
    """Record that ``model_dir``'s features were just asked for (and, the first time, whose they are),
    and that this process uses the folder until it exits (:func:`users`: `speechft cache prune`
    keeps such folders). A read-only cache stays usable: the marks are then skipped."""
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        info = model_dir / MODEL_INFO
        if name and not info.exists():
            atomic_write_json(info, {"name": str(name)})
        (model_dir / LAST_USED).touch()
        (model_dir / _in_use_name()).touch()
    except OSError as e:
        log.debug("feature cache: cannot mark %s as used (%s)", model_dir, e)
        return
    if not _claimed:
        import atexit

        atexit.register(_release_claims)
    _claimed.add(model_dir)


def _in_use_name(host: Optional[str] = None, pid: Optional[int] = None) -> str:
    import socket

    return f"{IN_USE}{host or socket.gethostname()}-{pid or os.getpid()}"


def _release_claims() -> None:
    """At exit: remove this process's in-use marks (a process killed before leaves them behind; a mark
    of a process that no longer exists is ignored, then removed, by :func:`users`)."""
    for folder in _claimed:
        try:
            (folder / _in_use_name()).unlink(missing_ok=True)
        except OSError:
            pass
    _claimed.clear()


def users(model_dir: Path) -> list[str]:
    """The processes other than this one that use ``model_dir`` ("host:pid"): on this host those still
    running; on another host (a shared file system), those whose mark was touched in the last
    ``FOREIGN_IN_USE_HOURS`` hours. Marks of processes that have ended are removed."""
    import socket

    host, me, out = socket.gethostname(), os.getpid(), []
    for mark in Path(model_dir).glob(f"{IN_USE}*"):
        mark_host, _, pid_text = mark.name[len(IN_USE):].rpartition("-")
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if mark_host != host:
            live = time.time() - mark.stat().st_mtime < FOREIGN_IN_USE_HOURS * 3600
        elif pid == me:
            continue
        else:
            live = _process_exists(pid)
            if not live:
                mark.unlink(missing_ok=True)
        if live:
            out.append(f"{mark_host}:{pid}")
    return out


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@dataclass(frozen=True)
class CachedModel:
    """One model's folder in a cache root."""

    path: Path
    name: Optional[str]  # the encoder's name, when known
    splits: int  # split folders
    bytes: int
    last_used: float  # seconds since the epoch: the last extraction or read request (else the newest file)
    users: tuple = ()  # "host:pid" of the other processes using it now (see :func:`users`)

    @property
    def fingerprint(self) -> str:
        return self.path.name


def _model_entry(folder: Path) -> CachedModel:
    files = [p for p in folder.rglob("*") if p.is_file()]
    marker = folder / LAST_USED
    last = marker.stat().st_mtime if marker.exists() else max((p.stat().st_mtime for p in files), default=0.0)
    try:
        name = json.loads((folder / MODEL_INFO).read_text()).get("name")
    except (OSError, json.JSONDecodeError, AttributeError):
        name = None
    return CachedModel(folder, name, sum(1 for p in folder.iterdir() if p.is_dir()),
                       sum(p.stat().st_size for p in files), last, tuple(users(folder)))


def list_cache(root: str | Path) -> list[CachedModel]:
    """Every model folder under ``root``, most recently used first (none when ``root`` does not exist)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((_model_entry(p) for p in root.iterdir() if p.is_dir()), key=lambda m: -m.last_used)


def prune_cache(root: str | Path, older_than_days: Optional[float] = None,
                dry_run: bool = False) -> tuple[list[CachedModel], list[CachedModel]]:
    """Remove the model folders of ``root`` not used for ``older_than_days`` days (``None``: all of
    them), except those another process is using (a probe that is running: it would fail, or
    find half its features gone). Returns ``(removed, kept in use)``; with ``dry_run``, what would be
    removed, removing nothing."""
    import shutil

    if older_than_days is not None and older_than_days < 0:
        raise ValueError(f"--older-than must be a number of days >= 0, not {older_than_days:g}")
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    old = [m for m in list_cache(root) if cutoff is None or m.last_used < cutoff]
    gone, busy = [m for m in old if not m.users], [m for m in old if m.users]
    if not dry_run:
        for m in gone:
            shutil.rmtree(m.path)
    return gone, busy


def drop_splits(root: str | Path, names: Sequence[str]) -> int:
    """Remove the split folders ``names`` from every model folder under ``root`` (then model folders
    left with no split, and ``root`` itself when empty); returns the bytes freed."""
    import shutil

    root, freed = Path(root), 0
    if not root.is_dir():
        return 0
    for model_dir in [p for p in root.iterdir() if p.is_dir()]:
        for name in names:
            folder = model_dir / name
            if folder.is_dir():
                freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder)
        if not any(p.is_dir() for p in model_dir.iterdir()):
            shutil.rmtree(model_dir)
    remove_empty_dir(root)
    return freed

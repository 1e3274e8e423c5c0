"""Atomic file and directory writes.

Everything the toolkit produces (manifests, checkpoints, merged models, results) is written to a
temporary name in the destination folder, flushed and fsync'ed, then renamed into place, so an
interrupted process never leaves a half-written file that looks valid.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process's current umask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the final file the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict, durable: bool = True) -> None:
    """Append one JSON record as a line (results/metrics logs), fsync'ed unless ``durable=False``
    (per-step training metrics: the OS still writes the line if the process dies; only a power
    cut can lose the newest lines, and the checkpoint, written durably, is what resume reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, default=str) + "\n").encode("utf-8")
    # One write() on an O_APPEND descriptor: records appended by concurrent processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read JSONL records, ignoring a torn last line left by a crash mid-append."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON")
    return out


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Cut a step-keyed JSONL log (training metrics) back to ``step``: records of later steps (written
    after the checkpoint a run resumes from, which it will write again) and a torn last line are dropped;
    records without a ``step`` count as step 0. A missing file is left alone."""
    if not Path(path).exists():
        return
    rewrite_jsonl(path, [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step])


def rewrite_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Replace a JSONL file by ``records`` atomically. Processes that may append to it meanwhile must
    hold :func:`jsonl_lock` around both (an append to the replaced file would be lost)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


@contextlib.contextmanager
def jsonl_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock (``flock`` on ``.<name>.lock`` beside the file) shared by every process
    that reads-then-rewrites or appends to one JSONL file."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it is renamed to ``path``.

    On any exception the temporary directory is removed and ``path`` is left untouched, so an
    interrupted save never produces a directory that loads as a valid model. What is published gets
    the umask's usual permissions (files 0666, folders 0777, less the umask): some writers (transformers'
    ``save_pretrained``, ``mkstemp``) leave files private (0600), and a model folder is meant to be shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; the output should be a normal folder
        yield tmp
        mask = umask()
        for p in tmp.rglob("*"):
            if p.is_file() and not p.is_symlink():
                os.chmod(p, 0o666 & ~mask)
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            elif p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o777 & ~mask)
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable(path: str | os.PathLike, min_free_bytes: int = 50 * 2**20) -> None:
    """Fail fast (before any long job) when ``path`` cannot be written or its disk is nearly full."""
    path = Path(path)
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise NotADirectoryError(f"output directory {path} cannot be created: {probe_dir} is a file, not a directory")
    if not os.access(probe_dir, os.W_OK):
        raise PermissionError(f"output directory {path} is not writable ({probe_dir} is read-only for this user)")
    free = shutil.disk_usage(probe_dir).free
    if free < min_free_bytes:
        raise OSError(
            f"output directory {path}: only {free / 2**20:.1f} MiB free on its disk, "
            f"need at least {min_free_bytes / 2**20:.0f} MiB"
        )


def check_not_input(out: str | os.PathLike, inputs: Any, what: str = "--out", *, replaced: bool = True) -> None:
    """Refuse (``ValueError``, one line naming both paths) an output that would destroy or alter an input.

    ``out`` is refused when it is an input, lies inside an input folder (writing there modifies it),
    or -- when ``replaced`` (the command may remove or replace ``out`` as a whole, e.g. ``--overwrite``
    or an atomic folder swap) -- contains an input. ``inputs``: paths, or ``{label: path or list of
    paths}`` where the label (an option name) appears in the message. Symlinks and relative paths are
    resolved; what does not exist on disk or is a built-in model name (``speechft-tiny``, ``fbank``, ...)
    or a hub id without a local folder is not a path and is ignored. Call it before anything is written.
    """
    from ..paths import BUILTIN_NAMES

    items = inputs.items() if isinstance(inputs, dict) else [(None, inputs)]
    out_r = Path(out).expanduser().resolve()
    for label, values in items:
        for value in values if isinstance(values, (list, tuple, set)) else [values]:
            if value is None or (isinstance(value, str) and (value in BUILTIN_NAMES or not value.strip())):
                continue
            path = Path(value).expanduser()
            if not path.exists():
                continue
            in_r = path.resolve()
            if in_r == out_r:
                problem, harm = "is the input", "overwrite"
            elif in_r.is_relative_to(out_r) and replaced:
                problem, harm = "contains the input", "delete"
            elif out_r.is_relative_to(in_r):
                problem, harm = "lies inside the input", "modify"
            else:
                continue
            shown = f"{label} {value}" if label else str(value)
            if Path(out).expanduser().absolute() != out_r or path.absolute() != in_r:
                shown += f" (both resolve to {in_r})" if in_r == out_r else f" ({in_r}; {what} is {out_r})"
            raise ValueError(f"{what} {out} {problem} {shown}; writing it would {harm} that input: "
                             f"choose another {what}")


def remove_empty_dir(path: str | os.PathLike) -> None:
    """Remove the folder ``path`` when it exists and is empty (a folder with anything in it stays)."""
    path = Path(path)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def file_name(text: str) -> str:
    """``text`` as a file name: characters other than letters, digits and ``-_.`` become ``-``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")

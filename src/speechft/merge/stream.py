"""Streaming safetensors IO: read one tensor at a time, write a file whose header is known up front.

Reading: the header gives each tensor's byte range, so :meth:`SafetensorsDir.get` reads exactly those
bytes with plain ``readinto`` calls into a new tensor (or a buffer the caller reuses), and
:meth:`SafetensorsDir.map` maps exactly those pages, for that tensor alone, and unmaps them when the
tensor goes: the merge reads its inputs this way, without copying them. Either way only the tensors in
use are resident. (One map of the whole file, as ``safe_open`` does, keeps every page touched resident:
+404 MiB RSS after reading a 400 MiB file through one handle.)

Writing: the safetensors format is an 8-byte little-endian header length, a JSON header mapping each
name to ``{dtype, shape, data_offsets}``, then the raw little-endian bytes. Shapes and dtypes of the
output are known before any arithmetic, so :class:`StreamingSafetensorsWriter` writes the header first
and then appends each tensor's bytes as it is produced; nothing but the current tensor is in memory.
The file is fsync'ed on close (outputs are durable before they are renamed into place); a background
thread flushes each 16 MiB written as soon as it is written, so the disk works while the next tensors
are merged and the final fsync has little left to do.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
TORCH_TO_ST = {v: k for k, v in ST_DTYPES.items()}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # merged; 8-bit floats and integers are copied from θ₀
ITEMSIZE = {k: torch.empty((), dtype=v).element_size() for k, v in ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """Name, safetensors dtype name and shape of one tensor."""

    key: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def _read_header(path: Path) -> dict[str, TensorSpec]:
    """Tensor specs of one safetensors file (header only; no tensor data is read)."""
    return _read_layout(path)[0]


def _read_layout(path: Path) -> tuple[dict[str, TensorSpec], dict[str, int]]:
    """(tensor specs, absolute file offset of each tensor's data) of one safetensors file, checked."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file is shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 2**20:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a readable safetensors file (the header is not a JSON object)")
    specs, offsets, end = {}, {}, 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") not in ST_DTYPES:
            raise ValueError(f"{path}: tensor {key!r} has an unsupported entry {info!r}")
        specs[key] = TensorSpec(key, info["dtype"], tuple(int(s) for s in info["shape"]))
        try:
            begin, stop = (int(x) for x in info.get("data_offsets", (0, -1)))
        except (TypeError, ValueError):
            offsets_entry = info.get("data_offsets")
            raise ValueError(f"{path}: tensor {key!r} has unreadable data_offsets {offsets_entry!r}") from None
        if begin < 0 or stop - begin != specs[key].nbytes:
            raise ValueError(f"{path}: tensor {key!r} has {stop - begin} bytes for shape {list(specs[key].shape)}")
        offsets[key] = 8 + n + begin
        end = max(end, stop)
    size = path.stat().st_size
    if size < 8 + n + end:
        raise ValueError(f"{path}: truncated or corrupt checkpoint file ({size} bytes, header says {8 + n + end})")
    return specs, offsets


def _read_exactly(path: Path, offset: int, out: memoryview) -> None:
    """Fill ``out`` with the bytes of ``path`` from ``offset`` (plain reads, no memory map)."""
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        got, n = 0, len(out)
        while got < n:
            k = f.readinto(out[got:])
            if not k:
                raise ValueError(f"truncated or corrupt checkpoint file: {n - got} of {n} bytes missing at offset "
                                 f"{offset + got}")
            got += k


class SafetensorsDir:
    """The weights of a Hugging Face model directory (``model.safetensors`` or a sharded index)."""

    def __init__(self, model_dir: str | Path, name: Optional[str] = None):
        self.dir = Path(model_dir)
        self.name = name or str(model_dir)
        self.files: dict[str, Path] = {}
        self.specs: dict[str, TensorSpec] = {}
        self.offsets: dict[str, int] = {}  # absolute file offset of each tensor's bytes
        single, index = self.dir / SINGLE_FILE, self.dir / INDEX_FILE
        if single.exists():
            self.specs, self.offsets = _read_layout(single)
            self.files = {k: single for k in self.specs}
        elif index.exists():
            self._read_index(index)
        else:
            found = sorted(p.name for p in self.dir.glob("*")) if self.dir.is_dir() else []
            hint = " (pytorch_model.bin: load and re-save it with safe_serialization=True)" if "pytorch_model.bin" in found else ""
            raise FileNotFoundError(f"{self.dir}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")
        self.config = read_json(self.dir / "config.json")

    def _read_index(self, index: Path) -> None:
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no 'weight_map' in the index")
        shards: dict[str, tuple[dict[str, TensorSpec], dict[str, int]]] = {}
        for key, fname in weight_map.items():
            path = self.dir / fname
            if fname not in shards:
                if not path.exists():
                    raise FileNotFoundError(f"{index}: shard {fname} (holding {key!r}) does not exist")
                shards[fname] = _read_layout(path)
            specs, offsets = shards[fname]
            if key not in specs:
                raise ValueError(f"{index}: {key!r} is mapped to {fname}, which does not contain it")
            self.specs[key] = specs[key]
            self.offsets[key] = offsets[key]
            self.files[key] = path

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs.values())

    def get(self, key: str, buffer: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One tensor, read with plain reads into memory this process owns (see the module docstring).

        With ``buffer`` (a uint8 tensor of at least the tensor's size in bytes) the bytes are read into
        it and the result is a view of it, valid until the buffer is reused: a caller reading tensor
        after tensor saves allocating (and the kernel zeroing) fresh memory for each.
        """
        path, spec = self.files[key], self.specs[key]
        if sys.byteorder != "little":  # the file is little-endian: let safetensors convert
            return self._get_safe_open(key)
        if buffer is not None and buffer.dtype == torch.uint8 and buffer.numel() >= spec.nbytes:
            buf = buffer.view(-1)[: spec.nbytes]
        else:
            buf = torch.empty(spec.nbytes, dtype=torch.uint8)
        try:
            if spec.nbytes:
                _read_exactly(path, self.offsets[key], memoryview(buf.numpy()))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read tensor {key!r} ({e})") from None
        return buf.view(ST_DTYPES[spec.dtype]).reshape(spec.shape)

    def map(self, key: str) -> torch.Tensor:
        """One tensor as a read-only view of the file's pages, mapped for this tensor alone.

        No bytes are copied: the pages the kernel already caches are mapped into this process (fetched
        from disk now, if they are not cached, by ``MAP_POPULATE``), and unmapped once the tensor and
        every view of it are gone, so only the tensors in use count towards the resident memory. The
        tensor must not be written to. Where mapping is not possible (a big-endian machine, a platform
        without ``MAP_POPULATE``, data not aligned for its dtype) this is :meth:`get`. A file found
        shorter than its header says is reported as :meth:`get` reports it; one truncated while the
        tensor is alive would kill the process when the vanished pages are read.
        """
        path, spec = self.files[key], self.specs[key]
        offset = self.offsets[key]
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        if (not spec.numel or sys.byteorder != "little" or not hasattr(mmap, "MAP_POPULATE")
                or (offset - start) % ITEMSIZE[spec.dtype]):
            return self.get(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < offset + spec.nbytes:  # mapped pages past the end would kill the process when read
                    raise ValueError(f"truncated or corrupt checkpoint file: {offset + spec.nbytes - size} of "
                                     f"{spec.nbytes} bytes missing at the end")
                region = mmap.mmap(f.fileno(), offset - start + spec.nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                                   prot=mmap.PROT_READ, offset=start)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read tensor {key!r} ({e})") from None
        _allow_read_only_tensors()
        t = torch.frombuffer(region, dtype=ST_DTYPES[spec.dtype], count=spec.numel, offset=offset - start)
        return t.reshape(spec.shape)

    def _get_safe_open(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        try:
            with safe_open(str(self.files[key]), framework="pt") as f:
                return f.get_tensor(key)
        except Exception as e:  # SafetensorError is not an OSError/ValueError
            raise ValueError(f"{self.files[key]}: cannot read tensor {key!r} ({e})") from None


_READ_ONLY_OK = False


def _allow_read_only_tensors() -> None:
    """Silence torch's warning about tensors over read-only memory (once per process, as torch does).

    torch warns the first time a tensor is made from a read-only buffer, then never again; the mapped
    tensors of :meth:`SafetensorsDir.map` are read-only by design, so that one warning is consumed here.
    """
    global _READ_ONLY_OK
    if not _READ_ONLY_OK:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            torch.frombuffer(bytes(1), dtype=torch.uint8)
        _READ_ONLY_OK = True


class MemorySource:
    """Tensors already in memory, with the same interface as :class:`SafetensorsDir` (sweeps)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], config: dict, model_dir: Optional[Path] = None, name: str = ""):
        self.tensors = dict(tensors)
        self.config = config
        self.dir = model_dir
        self.name = name or str(model_dir)
        self.specs = {k: TensorSpec(k, TORCH_TO_ST[t.dtype], tuple(t.shape)) for k, t in self.tensors.items()}

    @classmethod
    def load(cls, source: SafetensorsDir, keys: Optional[Sequence[str]] = None) -> "MemorySource":
        keys = list(source.specs) if keys is None else list(keys)
        return cls({k: source.get(k) for k in keys}, source.config, source.dir, source.name)

    def get(self, key: str, buffer: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.tensors[key]

    map = get


def read_json(path: Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (a Hugging Face model directory needs it)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return obj


SYNC_EVERY_BYTES = 16 * 2**20  # the writer's background thread flushes to disk after each this many bytes


class _BackgroundSync:
    """``fdatasync`` a file in a thread whenever asked, so the disk works while the caller keeps merging.

    Only an optimisation: the final fsync in :meth:`StreamingSafetensorsWriter.close` is what makes the
    file durable; it then has little left to do. Requests made while a sync runs are merged into one. A
    failed sync is kept and re-raised by the writer's close (the kernel reports a write-back error to one
    sync call only, so it must not be dropped here).
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.error: Optional[OSError] = None
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="safetensors-sync", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            try:
                sync(self.fd)
            except OSError as e:
                self.error = e
                return

    def stop(self) -> Optional[OSError]:
        """End the thread; the error of a failed sync, if one failed."""
        self._stop = True
        self._wake.set()
        self._thread.join()
        return self.error


def build_header(specs: Sequence[TensorSpec], metadata: Optional[dict[str, str]] = None) -> tuple[bytes, int]:
    """The 8-byte length + JSON header for tensors laid out contiguously in ``specs`` order.

    Returns (header bytes, total data bytes). The JSON is padded with spaces to a multiple of 8 bytes,
    as the reference implementation does, so tensor data stays aligned.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for s in specs:
        if s.key in header or s.key == "__metadata__":
            raise ValueError(f"duplicate tensor name {s.key!r} in the output")
        header[s.key] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, offset


class StreamingSafetensorsWriter:
    """Write a safetensors file tensor by tensor, in the order of ``specs``.

    The header is written on open; :meth:`write` appends one tensor's bytes (no copy: the tensor's own
    memory) after checking its name, dtype and shape, and after each :data:`SYNC_EVERY_BYTES` asks a
    background thread to flush what was written so far to disk; :meth:`close` checks every tensor was
    written, then flushes and fsyncs.
    """

    def __init__(self, path: str | Path, specs: Sequence[TensorSpec], metadata: Optional[dict[str, str]] = None):
        if sys.byteorder != "little":
            raise OSError("safetensors files are little-endian; this writer needs a little-endian machine")
        self.path = Path(path)
        self.specs = list(specs)
        self.header, self.data_bytes = build_header(self.specs, metadata)
        self._next = 0
        self._f = None
        self._pos = self._requested = 0  # bytes written / bytes the background sync was asked to flush
        self._sync: Optional[_BackgroundSync] = None

    def __enter__(self) -> "StreamingSafetensorsWriter":
        self._f = open(self.path, "wb")
        self._f.write(self.header)
        self._pos = len(self.header)
        self._sync = _BackgroundSync(self._f.fileno())
        return self

    def write(self, key: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.specs):
            raise ValueError(f"{self.path}: unexpected extra tensor {key!r}")
        spec = self.specs[self._next]
        if key != spec.key:
            raise ValueError(f"{self.path}: expected tensor {spec.key!r} next, got {key!r}")
        if TORCH_TO_ST.get(tensor.dtype) != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise ValueError(
                f"{self.path}: tensor {key!r} is {tensor.dtype} {tuple(tensor.shape)}, header says {spec.dtype} {spec.shape}"
            )
        if spec.numel:
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            self._f.write(memoryview(data.numpy()))
            self._pos += spec.nbytes
            if self._pos - self._requested >= SYNC_EVERY_BYTES and self._sync is not None:
                self._f.flush()
                self._sync.request()
                self._requested = self._pos
        self._next += 1

    def _stop_sync(self) -> Optional[OSError]:
        if self._sync is None:
            return None
        sync, self._sync = self._sync, None
        return sync.stop()

    def close(self) -> None:
        if self._f is None:
            return
        sync_error = self._stop_sync()
        f, self._f = self._f, None
        try:
            if self._next != len(self.specs):
                missing = [s.key for s in self.specs[self._next:]]
                raise ValueError(f"{self.path}: {len(missing)} tensors were never written (first: {missing[0]!r})")
            f.flush()
            os.fsync(f.fileno())
            if sync_error is not None:
                raise OSError(sync_error.errno, f"{self.path}: writing to disk failed ({sync_error.strerror})")
            expected = len(self.header) + self.data_bytes
            if f.tell() != expected:
                raise OSError(f"{self.path}: wrote {f.tell()} bytes, expected {expected}")
        finally:
            f.close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._f is not None:  # the surrounding atomic_dir removes the partial file
            self._stop_sync()
            self._f.close()
            self._f = None

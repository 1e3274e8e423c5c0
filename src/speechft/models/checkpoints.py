"""Reading checkpoint files without trusting them.

Pickles are read with ``torch.load(weights_only=True)``: tensors and plain containers only. A file that
needs full unpickling (fairseq's argparse.Namespace / omegaconf configs, fairseq ``Dictionary`` objects,
anything else) is refused unless the caller allows it explicitly, because unpickling can run arbitrary
code hidden in the file. When allowed, classes of packages that are not installed here (fairseq,
omegaconf) become inert placeholders that keep their data, so such files load without those packages.
Safetensors files are checked against their header first. A damaged file is always reported as
"truncated or corrupt checkpoint file <path>: <reason>", never half-loaded.
"""
from __future__ import annotations

import argparse
import logging
import pickle
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from .io import check_safetensors

log = logging.getLogger(__name__)

UNSAFE_FLAG = "--allow-unsafe-pickle"


class _Missing:
    """Placeholder for a pickled object whose class cannot be imported (fairseq, omegaconf): it keeps the
    constructor arguments and state it was given and runs no code of its own."""

    _qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<missing {self._qualname}>"


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Missing,), {"_qualname": f"{module}.{name}"})


_TOLERANT_PICKLE = types.SimpleNamespace(
    __name__="speechft_tolerant_pickle", Unpickler=_TolerantUnpickler,
    load=lambda f, **kw: _TolerantUnpickler(f, **kw).load(),
)


def _corrupt(path: Path, err: BaseException) -> ValueError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ValueError(f"truncated or corrupt checkpoint file {path}: {type(err).__name__}: {reason[:300]}")


def _not_a_checkpoint(path: Path) -> ValueError:
    return ValueError(f"{path} is not a checkpoint: neither a PyTorch file (zip archive or pickle) nor safetensors")


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:2] == b"PK":
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def read_checkpoint(path: str | Path, allow_unsafe_pickle: bool = False) -> tuple[Any, Optional[dict]]:
    """(top-level object, safetensors metadata — None for pickles) of a checkpoint file.

    A damaged file raises ValueError ("truncated or corrupt checkpoint file ..."), never half-loads; a
    pickle that needs more than tensors and plain containers raises PermissionError unless
    ``allow_unsafe_pickle``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory: pass the checkpoint file (an HF directory needs no conversion)")
    kind = _sniff(path)
    if kind == "safetensors" or path.suffix == ".safetensors":
        check_safetensors(path)
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as e:  # the Rust error type is not importable by a stable name
            raise _corrupt(path, e) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except pickle.UnpicklingError as e:
        if kind == "unknown":  # neither a zip archive nor a pickle: nothing to unpickle, unsafe or not
            raise _not_a_checkpoint(path) from None
        if "Weights only load failed" not in str(e):
            raise _corrupt(path, e) from None
        found = _unsafe_globals(path, str(e))
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError) as e:
        if kind == "unknown":
            raise _not_a_checkpoint(path) from None
        raise _corrupt(path, e) from None
    if not allow_unsafe_pickle:
        raise PermissionError(
            f"{path} holds Python objects besides tensors ({', '.join(found) or 'unknown classes'}); reading them "
            f"means full unpickling, which can run arbitrary code hidden in the file. Pass {UNSAFE_FLAG} only if "
            "you trust where the file comes from."
        )
    log.warning("fully unpickling %s (%s): it can run code; only do this for files you trust", path, UNSAFE_FLAG)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TOLERANT_PICKLE), None
    except Exception as e:
        raise _corrupt(path, e) from None


def _unsafe_globals(path: Path, message: str) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) pickles: take the name from torch's message
        return sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))


def to_plain(obj: Any, depth: int = 0) -> Any:
    """Plain dicts/lists from Namespaces, omegaconf containers (real or placeholders) and enums."""
    if depth > 50:
        return None
    if isinstance(obj, (str, bytes, int, float, bool, type(None), torch.Tensor)):
        return obj
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, _Missing):
        st = obj.state
        if isinstance(st, dict):  # omegaconf: containers keep "_content", value nodes "_val"
            return to_plain(st.get("_content", st.get("_val", st)), depth + 1)
        return to_plain(obj.args[0], depth + 1) if len(obj.args) == 1 else to_plain(list(obj.args), depth + 1)
    if isinstance(obj, Mapping) or (hasattr(obj, "items") and hasattr(obj, "keys")):
        return {str(k): to_plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, depth + 1) for v in obj]
    return getattr(obj, "value", obj)  # enums


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(v, torch.Tensor) or v is None for v in obj.values()
    )


def cfg_from_checkpoint(obj: Mapping) -> tuple[Optional[dict], dict, Optional[str]]:
    """(model cfg, task cfg, family name hint) from a checkpoint dict, or (None, {}, None)."""
    model_cfg = task_cfg = None
    if obj.get("model_cfg") is not None:
        model_cfg, task_cfg = to_plain(obj["model_cfg"]), to_plain(obj.get("task_cfg")) or {}
    else:
        for key in ("cfg", "Config", "args"):
            c = to_plain(obj.get(key))
            if isinstance(c, dict) and isinstance(c.get("model"), dict):  # fairseq: {"model":..., "task":...}
                model_cfg, task_cfg = c["model"], c.get("task") or {}
                break
            if isinstance(c, dict) and ("encoder_layers" in c or key == "args"):
                model_cfg, task_cfg = c, c  # flat: old fairseq args, WavLM cfg
                break
    if not isinstance(model_cfg, dict):
        return None, {}, None
    name = model_cfg.get("_name") or model_cfg.get("arch")
    inner = to_plain(model_cfg.get("w2v_args"))  # fine-tuned CTC model: the encoder's own cfg
    if isinstance(inner, dict):
        model_cfg, task_cfg = inner.get("model", inner), inner.get("task", inner) or task_cfg
        name = model_cfg.get("_name") or model_cfg.get("arch") or name
    if name is None and ("relative_position_embedding" in model_cfg or "gru_rel_pos" in model_cfg):
        name = "wavlm"
    return model_cfg, task_cfg or {}, name

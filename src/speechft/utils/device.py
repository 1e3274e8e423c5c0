"""``--device auto|cpu|cuda[:N]``: one reading, validated before any work, for every verb that runs a model.

The CLI resolves the option once (:func:`resolve_device`) and publishes the result in the environment
(:func:`device_env`), so library code that picks a device itself -- feature extraction in ``reproduce``'s
worker processes, Accelerate in ``finetune`` -- follows it (:func:`default_device`).
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator, Optional

ENV = "SPEECHFT_DEVICE"  # the resolved --device, read by default_device() (inherited by worker processes)
CHOICES = "auto, cpu, cuda or cuda:N"
HELP = ("Where models run: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N. "
        "Checked before any work.")


def resolve_device(spec: Optional[str] = "auto") -> str:
    """``auto`` -> ``cuda`` or ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given once checked. A value that is
    not a device, or a CUDA device this machine does not have, is a ValueError naming the option."""
    import torch

    value = (spec or "auto").strip().lower()
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", value)
    if m is None:
        raise ValueError(f"--device {spec}: not a device; use {CHOICES}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: no CUDA device is available (torch reports none); "
                         "use --device cpu or auto")
    n = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= n:
        raise ValueError(f"--device {spec}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return value


def default_device(fallback: str = "auto") -> str:
    """The device the running command was given (``$SPEECHFT_DEVICE``), else ``fallback`` resolved."""
    return os.environ.get(ENV) or resolve_device(fallback)


@contextlib.contextmanager
def device_env(device: str) -> Iterator[str]:
    """Publish a resolved device for the duration of a command: ``$SPEECHFT_DEVICE``, Accelerate's CPU
    switch for ``cpu``, the current CUDA device for ``cuda:N``; the previous environment is restored."""
    saved = {k: os.environ.get(k) for k in (ENV, "ACCELERATE_USE_CPU")}
    os.environ[ENV] = device
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    elif device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(int(device.split(":", 1)[1]))
    try:
        yield device
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""Where built-in corpora, caches and the shipped model live."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"

# Built-in model references (see speechft.models.io.load_encoder); here, below every module that
# names them, so that none has to import the model code to recognise one.
TINY_NAME = "speechft-tiny"  # the pre-trained default, shipped in ASSETS_DIR / TINY_NAME
TINY_V1_NAME = "speechft-tiny-v1"  # the first speechft-tiny, kept so that results can be compared
TINY_V2_NAME = "speechft-tiny-v2"  # the second, likewise
TINY_RANDOM_NAME = "speechft-tiny-random"
FBANK_NAME = "fbank"
SHIPPED_NAMES = (TINY_NAME, TINY_V1_NAME, TINY_V2_NAME)  # model folders shipped in ASSETS_DIR / name
BUILTIN_NAMES = (TINY_NAME, TINY_V1_NAME, TINY_V2_NAME, TINY_RANDOM_NAME, FBANK_NAME)


def shipped_dir(name: str) -> Path | None:
    """``ASSETS_DIR / name`` for a shipped model's name, else None."""
    return ASSETS_DIR / name if name in SHIPPED_NAMES else None


def data_home() -> Path:
    """Data home for built-in corpora and caches: ``$SPEECHFT_HOME`` or ``~/.cache/speechft``."""
    env = os.environ.get("SPEECHFT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "speechft"


def scratch_root(out: str | Path) -> Path:
    """``OUT/features``: the scratch feature caches of the models a run (reproduce, study, sweep) makes
    itself, deleted once they are probed; every other model's features go to the shared cache
    (``data_home()/features`` or ``--cache-dir``)."""
    return Path(out) / "features"


def default_fsdd_root() -> Path | None:
    """FSDD location: ``$SPEECHFT_FSDD``, else ``../shared/data/fsdd`` next to the project (when present)."""
    env = os.environ.get("SPEECHFT_FSDD")
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd() / "../shared/data/fsdd", PACKAGE_DIR.parents[1] / "../shared/data/fsdd"]
    for c in candidates:
        if (c / "recordings").is_dir():
            return c.resolve()
    return None

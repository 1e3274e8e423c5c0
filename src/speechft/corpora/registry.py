"""Explicit registry of corpus recipes, and on-demand preparation of built-in task data.

Every recipe has the signature ``prepare(root, out_dir, **options) -> {subset: {split: manifest}}``
and writes ``out_dir/<subset>/{train,dev,test}.jsonl`` (audio it creates goes under ``out_dir``;
audio of an existing corpus is referenced in place by absolute path).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..paths import data_home, default_fsdd_root
from ..utils.names import by_name, lookup

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class CorpusRecipe:
    name: str
    prepare: Callable[..., dict]
    needs_root: bool
    description: str


# Lazy imports keep `speechft --help` fast; the mapping itself is explicit.
def _lite(root, out_dir, **kw):
    from . import lite

    return lite.prepare(out_dir, **kw)


def _pretrain_lite(root, out_dir, **kw):
    from . import pretrain_lite

    return pretrain_lite.prepare(out_dir, **kw)


def _fsdd(root, out_dir, **kw):
    from . import fsdd

    return fsdd.prepare(root, out_dir, **kw)


def _librispeech(root, out_dir, **kw):
    from . import librispeech

    return librispeech.prepare(root, out_dir, **kw)


def _speechcommands(root, out_dir, **kw):
    from . import speechcommands

    return speechcommands.prepare(root, out_dir, **kw)


def _voxceleb1(root, out_dir, **kw):
    from . import voxceleb1

    return voxceleb1.prepare(root, out_dir, **kw)


def _iemocap(root, out_dir, **kw):
    from . import iemocap

    return iemocap.prepare(root, out_dir, **kw)


def _fluent(root, out_dir, **kw):
    from . import fluent

    return fluent.prepare(root, out_dir, **kw)


def _tedlium3(root, out_dir, **kw):
    from . import tedlium3

    if "hours" in kw:  # `prepare tedlium3 --hours H`: the size of the asr-10h subset
        kw["subset_hours"] = kw.pop("hours")
    return tedlium3.prepare(root, out_dir, **kw)


def _build(recipes: list[CorpusRecipe]) -> dict[str, CorpusRecipe]:
    return by_name(recipes, "corpus recipe")


CORPORA: dict[str, CorpusRecipe] = _build([
    CorpusRecipe("lite", _lite, False, "built-in synthetic benchmark (espeak-ng): lite-pr/asr/ks/sid/lid/ic/style"),
    CorpusRecipe("pretrain-lite", _pretrain_lite, False, "unlabelled multi-language, multi-voice speech for pre-training"),
    CorpusRecipe("fsdd", _fsdd, True, "Free Spoken Digit Dataset: fsdd-ks (digit) and fsdd-sid (speaker), test = takes 0-4"),
    CorpusRecipe("librispeech", _librispeech, True, "LibriSpeech PR (needs --lexicon) and ASR"),
    CorpusRecipe("speechcommands", _speechcommands, True, "Speech Commands v0.01, SUPERB KS (10 words + silence + unknown)"),
    CorpusRecipe("voxceleb1", _voxceleb1, True, "VoxCeleb1 SID with the official iden_split.txt"),
    CorpusRecipe("iemocap", _iemocap, True, "IEMOCAP 4-class ER, sessions as folds"),
    CorpusRecipe("fluent", _fluent, True, "Fluent Speech Commands IC"),
    CorpusRecipe("tedlium3", _tedlium3, True, "TED-LIUM 3 ASR (SUPERB/Speech-FT normalisation)"),
])


def get_corpus(name: str) -> CorpusRecipe:
    return lookup(CORPORA, name, "corpus", "known corpora")


def default_out_dir(corpus: str, size: str = "default") -> Path:
    if corpus in ("lite", "fsdd") and size != "default":
        return data_home() / f"{corpus}-{size}"
    return data_home() / corpus


def _complete(folder: Path) -> bool:
    return all((folder / f"{s}.jsonl").exists() for s in SPLITS)


def task_manifests(task, size: str = "default", fsdd_root: Optional[str] = None) -> dict[str, Path]:
    """Manifests of a built-in task, preparing its corpus on demand where that needs no user input."""
    out_dir = default_out_dir(task.corpus, size)
    folder = out_dir / task.subset
    if task.corpus == "lite":
        # lite.prepare checks its config stamp in milliseconds and rebuilds only stale/missing tasks
        _lite(None, out_dir, size=size, tasks=[task.subset])
    elif not _complete(folder):
        if task.corpus == "fsdd":
            root = Path(fsdd_root).expanduser() if fsdd_root else default_fsdd_root()
            if root is None:
                raise FileNotFoundError(
                    f"task {task.name} needs the Free Spoken Digit Dataset: pass --fsdd PATH or set SPEECHFT_FSDD "
                    "(a clone of github.com/Jakobovski/free-spoken-digit-dataset)"
                )
            _fsdd(root, out_dir, size=size)
        else:
            raise FileNotFoundError(
                f"task {task.name}: no manifests in {folder}; run 'speechft prepare {task.corpus} --root PATH' first"
            )
    if not _complete(folder):
        raise FileNotFoundError(f"task {task.name}: preparing {task.corpus} did not produce {folder}/{{train,dev,test}}.jsonl")
    return {s: folder / f"{s}.jsonl" for s in SPLITS}

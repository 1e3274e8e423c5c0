"""Task registry: what a probe or fine-tuning run trains and measures.

Each :class:`Task` declares where its manifests come from, which manifest field is the target,
the kind of head (CTC over tokens, utterance classification, or several slots classified at once),
the metric and whether higher is better, and a version that is bumped whenever any of that
changes (results and caches record it). The registry is an explicit dict: no registration by
import side effect; duplicate names are errors; unknown names get "did you mean".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .data.manifest import SLOT_SEP, Utterance
from .utils.names import by_name, lookup

KINDS = ("ctc", "classify", "slots")
METRICS = {"per": False, "cer": False, "wer": False, "accuracy": True}
WORD_DELIM = "|"  # CTC token that stands for a space in character targets


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "ctc" | "classify" | "slots"
    target_field: str  # manifest field: text | phones | label | speaker | language
    metric: str  # per | cer | wer | accuracy
    corpus: str  # recipe that prepares the manifests ("lite", "fsdd", "librispeech", ... or "user")
    subset: str = ""  # folder of this task inside the corpus output (lite: the task name)
    head: str = "pool_linear"  # pool_linear | linear_ctc | bilstm_ctc | slots_linear
    head_kwargs: tuple = ()  # ((key, value), ...) e.g. (("hidden", 128), ("layers", 1))
    version: int = 1
    description: str = ""
    manifests: Optional[tuple] = None  # (train, dev, test) paths for user tasks
    superb_analogue: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind must be one of {KINDS}, not {self.kind!r}")
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name}: metric must be one of {sorted(METRICS)}, not {self.metric!r}")

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric]

    def head_options(self) -> dict:
        return dict(self.head_kwargs)

    # -- targets -------------------------------------------------------------------------------
    def tokens(self, row: Utterance) -> list[str]:
        """CTC tasks: the token sequence of a row (characters with '|' for spaces, or phones)."""
        value = row.target(self.target_field)
        if value is None:
            raise ValueError(f"row {row.id!r} has no {self.target_field!r} (task {self.name})")
        if self.target_field == "phones":
            return value.split()
        return [WORD_DELIM if c == " " else c for c in " ".join(value.split())]

    def label(self, row: Utterance) -> str:
        value = row.target(self.target_field)
        if value is None:
            raise ValueError(f"row {row.id!r} has no {self.target_field!r} (task {self.name})")
        return value

    def slots(self, row: Utterance) -> list[str]:
        return self.label(row).split(SLOT_SEP)

    # -- data ----------------------------------------------------------------------------------
    def resolve_manifests(self, size: str = "default", fsdd_root: Optional[str] = None) -> dict[str, Path]:
        """``{"train", "dev", "test"} -> manifest path``, preparing built-in corpora on demand."""
        if self.manifests is not None:
            paths = dict(zip(("train", "dev", "test"), (Path(p) for p in self.manifests)))
            for split, p in paths.items():
                if not p.exists():
                    raise FileNotFoundError(f"task {self.name}: {split} manifest {p} not found")
            return paths
        from .corpora import task_manifests

        return task_manifests(self, size=size, fsdd_root=fsdd_root)


def _lite(name, kind, field, metric, head, desc, analogue, **head_kwargs):
    return Task(name=name, kind=kind, target_field=field, metric=metric, corpus="lite", subset=name,
                head=head, head_kwargs=tuple(sorted(head_kwargs.items())), description=desc,
                superb_analogue=analogue)


def _real(name, corpus, subset, kind, field, metric, head, desc, analogue, **head_kwargs):
    return Task(name=name, kind=kind, target_field=field, metric=metric, corpus=corpus, subset=subset,
                head=head, head_kwargs=tuple(sorted(head_kwargs.items())), description=desc,
                superb_analogue=analogue)


_BUILTIN = [
    _lite("lite-pr", "ctc", "phones", "per", "linear_ctc", "IPA phones of synthetic English sentences, unseen voices at test", "PR"),
    _lite("lite-asr", "ctc", "text", "cer", "bilstm_ctc",
          "characters of synthetic English sentences, unseen voices at test; BiLSTM 1x128 (smaller than SUPERB's 2x1024 for small encoders)",
          "ASR", hidden=128, layers=1),
    _lite("lite-ks", "classify", "label", "accuracy", "pool_linear", "10 command words + _silence_ + _unknown_", "KS"),
    _lite("lite-sid", "classify", "speaker", "accuracy", "pool_linear", "which espeak voice variant speaks", "SID"),
    _lite("lite-lid", "classify", "language", "accuracy", "pool_linear", "spoken language (~10 languages)", "LID"),
    _lite("lite-ic", "slots", "label", "accuracy", "slots_linear", "action|object|location of a spoken command; all slots must be right", "IC"),
    _lite("lite-style", "classify", "label", "accuracy", "pool_linear", "pitch x rate speaking-style class", "ER"),
    Task("fsdd-ks", "classify", "label", "accuracy", "fsdd", "fsdd", "pool_linear", (), 1,
         "spoken digit on real FSDD recordings (test = takes 0-4)", None, "KS"),
    Task("fsdd-sid", "classify", "speaker", "accuracy", "fsdd", "fsdd", "pool_linear", (), 1,
         "speaker of real FSDD recordings (6 speakers, test = takes 0-4)", None, "SID"),
    _real("pr", "librispeech", "pr", "ctc", "phones", "per", "linear_ctc", "LibriSpeech phone recognition (train-clean-100/dev-clean/test-clean)", "PR"),
    _real("asr", "librispeech", "asr", "ctc", "text", "wer", "bilstm_ctc", "LibriSpeech ASR, BiLSTM 2x1024 CTC", "ASR", hidden=1024, layers=2),
    _real("ks", "speechcommands", "ks", "classify", "label", "accuracy", "pool_linear", "Speech Commands v0.01, 12 classes", "KS"),
    _real("sid", "voxceleb1", "sid", "classify", "speaker", "accuracy", "pool_linear", "VoxCeleb1 identification (iden_split.txt)", "SID"),
    _real("er", "iemocap", "fold1", "classify", "label", "accuracy", "pool_linear", "IEMOCAP 4-class emotion, session 1 as test (fold 1)", "ER"),
    _real("ic", "fluent", "ic", "slots", "label", "accuracy", "slots_linear", "Fluent Speech Commands action|object|location", "IC"),
    _real("asr-tedlium3", "tedlium3", "asr", "ctc", "text", "wer", "bilstm_ctc", "TED-LIUM 3 ASR (the paper's fine-tuning task)", "ASR", hidden=1024, layers=2),
    _real("asr-tedlium3-10h", "tedlium3", "asr-10h", "ctc", "text", "wer", "bilstm_ctc",
          "TED-LIUM 3 ASR on the official code's 10 h training subset (1-60 s, no <unk>); full dev/test", "ASR",
          hidden=1024, layers=2),
]


def _build_registry(tasks: list[Task]) -> dict[str, Task]:
    return by_name(tasks, "task name")


TASKS: dict[str, Task] = _build_registry(_BUILTIN)
LITE_TASKS = tuple(n for n, t in TASKS.items() if t.corpus == "lite")
FSDD_TASKS = tuple(n for n, t in TASKS.items() if t.corpus == "fsdd")


def get_task(name: str) -> Task:
    return lookup(TASKS, name, "task", "known tasks")


def user_task(name: str, manifests: tuple, kind: str, target_field: str, metric: Optional[str] = None) -> Task:
    """A task defined by the user's own train/dev/test manifests."""
    if len(manifests) != 3:
        raise ValueError("user tasks need exactly three manifests: train,dev,test")
    if metric is None:
        metric = {"ctc": "per" if target_field == "phones" else "cer"}.get(kind, "accuracy")
    head = {"ctc": "linear_ctc", "classify": "pool_linear", "slots": "slots_linear"}[kind]
    return Task(name=name, kind=kind, target_field=target_field, metric=metric, corpus="user", head=head,
                manifests=tuple(str(Path(m).resolve()) for m in manifests),
                description=f"user task from {manifests[0]}")

"""Target vocabularies built from a task's train manifest, and the target encoder/decoder.

* CTC tasks: index 0 is the CTC blank, then the sorted tokens of the train split.
* classify: sorted class labels.
* slots: one sorted label list per slot.
Unknown tokens at dev/test time map to ``<unk>`` (CTC) so they count as errors, never crash.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .data.manifest import Utterance
from .tasks import Task, WORD_DELIM

BLANK = "<blank>"
UNK = "<unk>"


@dataclass(frozen=True)
class Vocab:
    kind: str
    symbols: tuple  # ctc/classify: tuple[str]; slots: tuple[tuple[str]]

    @classmethod
    def build(cls, task: Task, rows: Sequence[Utterance]) -> "Vocab":
        if task.kind == "ctc":
            toks = sorted({t for r in rows for t in task.tokens(r)})
            return cls("ctc", (BLANK, UNK, *toks))
        if task.kind == "classify":
            return cls("classify", tuple(sorted({task.label(r) for r in rows})))
        slots = [task.slots(r) for r in rows]
        n = {len(s) for s in slots}
        if len(n) != 1:
            raise ValueError(f"task {task.name}: rows have different numbers of slots {sorted(n)}")
        return cls("slots", tuple(tuple(sorted({s[k] for s in slots})) for k in range(n.pop())))

    def __len__(self) -> int:
        return len(self.symbols)

    def slot_sizes(self) -> list[int]:
        return [len(s) for s in self.symbols]

    def encode(self, task: Task, row: Utterance):
        if self.kind == "ctc":
            idx = self._index
            return [idx.get(t, 1) for t in task.tokens(row)]
        if self.kind == "classify":
            lab = task.label(row)
            if lab not in self._index:
                raise ValueError(f"row {row.id!r}: label {lab!r} not seen in the train split of {task.name}")
            return self._index[lab]
        vals = task.slots(row)
        out = []
        for k, v in enumerate(vals):
            if v not in self.symbols[k]:
                raise ValueError(f"row {row.id!r}: slot {k} value {v!r} not seen in the train split of {task.name}")
            out.append(self.symbols[k].index(v))
        return out

    @property
    def _index(self) -> dict:
        return {s: i for i, s in enumerate(self.symbols)}

    def decode_ctc(self, ids: Sequence[int], task: Task) -> str:
        """Token ids -> reference-comparable string (phones space-joined; characters joined, '|' -> ' ')."""
        toks = [self.symbols[i] for i in ids]
        if task.target_field == "phones":
            return " ".join(toks)
        return "".join(" " if t == WORD_DELIM else t for t in toks).strip()

    def reference(self, task: Task, row: Utterance) -> str:
        toks = task.tokens(row)
        if task.target_field == "phones":
            return " ".join(toks)
        return "".join(" " if t == WORD_DELIM else t for t in toks).strip()

    def to_json(self) -> dict:
        return {"kind": self.kind, "symbols": [list(s) if isinstance(s, tuple) else s for s in self.symbols]}

    @classmethod
    def from_json(cls, d: dict) -> "Vocab":
        syms = tuple(tuple(s) if isinstance(s, list) else s for s in d["symbols"])
        return cls(d["kind"], syms)

    def save(self, path: str | Path) -> None:
        from .utils.io import atomic_write_json

        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        return cls.from_json(json.loads(Path(path).read_text()))

"""Task metrics: PER/CER/WER with jiwer, accuracy. Error rates are fractions (0.05 = 5 %)."""
from __future__ import annotations

from typing import Sequence


def error_rate(metric: str, refs: Sequence[str], hyps: Sequence[str]) -> float:
    import jiwer

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no utterances to score")
    if metric in ("per", "wer"):
        # PER is WER over space-separated phones. Empty hypotheses are allowed (all deletions).
        return float(jiwer.wer(list(refs), [h if h.strip() else "" for h in hyps]))
    if metric == "cer":
        return float(jiwer.cer(list(refs), list(hyps)))
    raise ValueError(f"not an error-rate metric: {metric}")


def accuracy(preds: Sequence, golds: Sequence) -> float:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} labels")
    if not golds:
        raise ValueError("no utterances to score")
    return sum(_same(p, g) for p, g in zip(preds, golds)) / len(golds)


def _same(p, g) -> bool:
    return list(p) == list(g) if isinstance(p, (list, tuple)) else p == g

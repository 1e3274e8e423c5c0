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


def error_items(metric: str, refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Per-utterance edit counts and reference lengths: ``{"errors": [...], "lengths": [...]}``.

    The corpus error rate is ``sum(errors) / sum(lengths)`` (what :func:`error_rate` computes), so a
    bootstrap over utterances resamples these pairs. PER/WER count words (space-separated tokens),
    CER characters."""
    from rapidfuzz.distance import Levenshtein

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if metric in ("per", "wer"):
        pairs = [(r.split(), h.split()) for r, h in zip(refs, hyps)]
    elif metric == "cer":
        pairs = [(r, h) for r, h in zip(refs, hyps)]
    else:
        raise ValueError(f"not an error-rate metric: {metric}")
    return {"errors": [int(Levenshtein.distance(r, h)) for r, h in pairs], "lengths": [len(r) for r, _ in pairs]}


def accuracy_items(preds: Sequence, golds: Sequence) -> dict:
    """Per-utterance correctness: ``{"correct": [0 or 1, ...]}`` (accuracy = their mean)."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} labels")
    return {"correct": [int(_same(p, g)) for p, g in zip(preds, golds)]}


def items_value(items: dict) -> float:
    """The corpus metric of per-utterance items (:func:`error_items` or :func:`accuracy_items`)."""
    if "correct" in items:
        return sum(items["correct"]) / len(items["correct"])
    return sum(items["errors"]) / sum(items["lengths"])

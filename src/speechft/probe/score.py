"""The SUPERB score: each task's metric mapped linearly between FBANK and a reference, averaged.

Per task t, with s the model's metric (seeds averaged first)::

    p_t = 1000 * (s - s_FBANK) / (s_ref - s_FBANK)

so FBANK scores 0 and the reference scores 1000 on every task. For error rates s_ref < s_FBANK and
the same formula rewards lower errors. The SUPERB score of a model is the mean of p_t over tasks.

Reference points depend on the probe profile (:mod:`speechft.probe.profiles`) the records were made with:

* ``superb`` profile (s3prl's recipes) on the real SUPERB tasks (``pr``, ``asr``, ``ks``, ``sid``,
  ``er``, ``ic``): the published numbers in :data:`OFFICIAL` below, with their sources.
* Everything else (the ``fast`` profile on any task, and lite, FSDD, TED-LIUM 3, user tasks): s_FBANK
  is FBANK probed by this same harness with the same profile (records of the model ``fbank``), and
  s_ref is a perfect score (accuracy 1, error rate 0). A fast-profile score is never set against
  the published points: those were measured with SUPERB's recipes.

All metrics here are fractions (PER 0.05 = 5 %, accuracy 0.97), as in the result records.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

from ..utils.names import UnknownNameError


@dataclass(frozen=True)
class ReferencePoint:
    metric: str
    fbank: Optional[float]  # None: taken from this harness's FBANK records
    reference: float
    source: str


_SUPERB = "SUPERB paper (Yang et al., Interspeech 2021, arXiv:2105.01051), Table 3, FBANK row"
_WAVLM = "WavLM Large on SUPERB (Chen et al., IEEE JSTSP 2022, arXiv:2110.13900; SUPERB leaderboard)"

# FBANK: the SUPERB paper's FBANK row (percent there, fractions here). Reference: WavLM Large, the best
# public-leaderboard model on these tasks when the SUPERB @ SLT 2022 challenge (arXiv:2210.08634)
# defined this score with "SOTA" references. Caveats, stated rather than hidden: the challenge took the
# best leaderboard entry per task at its time (for ASR possibly another model than WavLM Large, to
# within ~0.1 WER point); the Speech-FT paper does not list its reference numbers; the SID FBANK value
# is printed as 8.5E-4 (percent) in the paper, i.e. chance is not reached. Numbers are transcribed from
# the papers' tables, not re-measured. A different reference changes each task's p by an affine map,
# never the order of two models on that task.
OFFICIAL: dict[str, ReferencePoint] = {
    "pr": ReferencePoint("per", 0.8201, 0.0306, f"FBANK: {_SUPERB}; reference: {_WAVLM}"),
    "asr": ReferencePoint("wer", 0.2318, 0.0344, f"FBANK: {_SUPERB} (no LM); reference: {_WAVLM} (no LM)"),
    "ks": ReferencePoint("accuracy", 0.0863, 0.9786, f"FBANK: {_SUPERB}; reference: {_WAVLM}"),
    "ic": ReferencePoint("accuracy", 0.0910, 0.9931, f"FBANK: {_SUPERB}; reference: {_WAVLM}"),
    "sid": ReferencePoint("accuracy", 8.5e-6, 0.9549, f"FBANK: {_SUPERB}; reference: {_WAVLM}"),
    "er": ReferencePoint("accuracy", 0.3539, 0.7062, f"FBANK: {_SUPERB}; reference: {_WAVLM}"),
}
HARNESS_SOURCE = "FBANK probed by this harness; reference = perfect score"


def normalized_score(value: float, fbank: float, higher_is_better: bool, ref: Optional[float] = None) -> float:
    """p = 1000 (value - fbank) / (ref - fbank); ``ref`` defaults to a perfect score (1 or 0).

    Raises ValueError when FBANK already equals the reference (p is undefined).
    """
    if ref is None:
        ref = 1.0 if higher_is_better else 0.0
    if math.isclose(ref, fbank, rel_tol=0.0, abs_tol=1e-12):
        raise ValueError(f"FBANK ({fbank}) equals the reference ({ref}): the normalised score is undefined")
    return 1000.0 * (value - fbank) / (ref - fbank)


def reference_point(task: str, metric: str, higher_is_better: bool, fbank_value: Optional[float] = None,
                    profile: str = "fast") -> ReferencePoint:
    """The published point for a real SUPERB task probed with a profile that follows SUPERB's
    recipes (``superb``), else (FBANK probed by this harness with the same profile, perfect score)."""
    from .profiles import get_profile

    official = OFFICIAL.get(task)
    if official is not None and official.metric == metric and get_profile(profile).published_references:
        return official
    return ReferencePoint(metric, fbank_value, 1.0 if higher_is_better else 0.0, HARNESS_SOURCE)


def profile_of(records: Sequence[dict]) -> str:
    """The one probe profile of ``records`` (``fast`` when there are none); ValueError when they mix
    profiles: a table or score never sets results of different protocols side by side."""
    from .profiles import DEFAULT_PROFILE, record_profile

    found = list(dict.fromkeys(record_profile(r) for r in records))
    if len(found) > 1:
        raise ValueError(f"the results mix probe profiles ({', '.join(found)}); a table or score compares one "
                         "profile: probe each profile into its own --out")
    return found[0] if found else DEFAULT_PROFILE


def profile_note(profile: str, tasks: Sequence[str] = ()) -> str:
    """One sentence for reports: which probe profile made the numbers and what scores them."""
    from .profiles import get_profile

    prof = get_profile(profile)
    official = [t for t in tasks if t in OFFICIAL]
    if prof.published_references and official:
        refs = f"the published SUPERB reference points for {', '.join(official)} (`speechft.probe.score.OFFICIAL`)"
        if len(official) < len(tasks):
            refs += ", FBANK probed with the same profile and a perfect score for the others"
    else:
        refs = "FBANK probed with the same profile (= 0) and a perfect score (= 1000) on every task"
        if official:
            refs += f", including {', '.join(official)}: not comparable with published SUPERB scores"
    return f"Probe profile **{prof.name}** ({prof.description}); scores use {refs}."


Values = Union[Mapping[str, Union[float, Sequence[float]]], Sequence[dict]]


def _mean(v) -> float:
    return statistics.fmean(v) if isinstance(v, (list, tuple)) else float(v)


def is_fbank_record(r: dict) -> bool:
    return bool(r.get("is_fbank")) or str(r.get("model", "")).lower() == "fbank"


def group_of(r: dict):
    """What a record was computed from, except its seed: records of one model and task are averaged
    only when these are equal (records written before provenance keys: the fields they had)."""
    if r.get("group_key"):
        return r["group_key"]
    return ("legacy", r.get("fingerprint"), r.get("task_version"), r.get("size"), r.get("limit"),
            (r.get("config") or {}).get("epochs"))


def check_groups(records: Sequence[dict]) -> None:
    """Raise ValueError when one model's records on one task come from different inputs (a table
    would otherwise average, e.g., a quick run and a full one as if they were seeds)."""
    from ..utils.provenance import changes

    first: dict = {}
    for r in records:
        k = (r["model"], r["task"])
        if k not in first:
            first[k] = r
        elif group_of(first[k]) != group_of(r):
            a, b = first[k].get("provenance"), r.get("provenance")
            what = "; ".join(changes({**a, "seed": None}, {**b, "seed": None})) if a and b else \
                "size/limit/epochs/weights differ or a record has no provenance key"
            raise ValueError(f"results of {k[0]} on {k[1]} were made with different inputs ({what}); they are "
                             "not averaged: probe into a new --out, or pass --overwrite to replace the old ones")


def _from_records(records: Sequence[dict], model: Optional[str]) -> tuple[dict, dict]:
    """``({task: [values]}, {task: (metric, higher_is_better, data_key)})`` of one model's records."""
    models = list(dict.fromkeys(r["model"] for r in records if not is_fbank_record(r)))
    if model is None:
        if len(models) != 1:
            raise ValueError(f"records hold {len(models)} models ({', '.join(models)}); pass model=")
        model = models[0]
    check_groups([r for r in records if r["model"] == model])
    vals: dict = {}
    meta: dict = {}
    for r in records:
        if r["model"] == model:
            vals.setdefault(r["task"], []).append(float(r["value"]))
            meta[r["task"]] = (r["metric"], bool(r["higher_is_better"]), r.get("data_key"))
    if not vals:
        raise ValueError(f"no records of model {model!r}")
    return vals, meta


def _fbank_from_records(records: Sequence[dict], data_keys: Optional[Mapping[str, Optional[str]]] = None) -> dict:
    """``{task: [FBANK values]}``; with ``data_keys`` (task -> data key), only FBANK records on the
    same data (same manifests, rows and audio) count: a score never mixes test sets."""
    out: dict = {}
    for r in records:
        if is_fbank_record(r) and (data_keys is None or data_keys.get(r["task"], r.get("data_key")) == r.get("data_key")):
            out.setdefault(r["task"], []).append(float(r["value"]))
    return out


def superb_score(values: Values, fbank: Optional[Values] = None, model: Optional[str] = None,
                 metrics: Optional[Mapping[str, tuple]] = None, profile: Optional[str] = None) -> dict:
    """SUPERB score of one model.

    Args:
        values: ``{task: metric value or [values per seed]}``, or result records (then ``model``
            picks the model when several are present; FBANK records in them serve as ``fbank``).
        fbank: ``{task: value or [values]}`` of FBANK probed by this harness, or records; needed
            for tasks without an official reference point.
        metrics: ``{task: (metric, higher_is_better)}`` when ``values`` is a plain mapping and a task
            is not in the registry (user tasks).
        profile: the probe profile the values were made with (default: the records', else ``fast``);
            it decides the reference points (:func:`reference_point`).

    Returns:
        ``{"score": mean p over scored tasks (None if none), "tasks": {task: {"metric", "value",
        "fbank", "reference", "points", "source"}}, "missing": {task: reason}}``.
    """
    from ..tasks import TASKS

    if isinstance(values, Mapping):
        vals = {t: _mean(v) for t, v in values.items()}
        meta = dict(metrics or {})
        for t in vals:
            if t not in meta:
                if t not in TASKS:
                    raise UnknownNameError(f"task {t!r} is not registered: pass metrics={{{t!r}: (metric, higher_is_better)}}")
                meta[t] = (TASKS[t].metric, TASKS[t].higher_is_better)
        fb_src = fbank
    else:
        raw, meta = _from_records(values, model)
        vals = {t: _mean(v) for t, v in raw.items()}
        profile = profile or profile_of(values)
        fb_src = fbank if fbank is not None else _fbank_from_records(values, {t: m[2] for t, m in meta.items()})
    profile = profile or "fast"
    if fb_src is None:
        fb = {}
    elif isinstance(fb_src, Mapping):
        fb = {t: _mean(v) for t, v in fb_src.items()}
    else:
        fb = {t: _mean(v) for t, v in _fbank_from_records(fb_src, {t: m[2] for t, m in meta.items() if len(m) > 2}).items()}

    tasks, missing = {}, {}
    for t, s in vals.items():
        metric, higher = meta[t][:2]
        rp = reference_point(t, metric, higher, fb.get(t), profile)
        if rp.fbank is None:
            missing[t] = "no FBANK result for this task (probe the model 'fbank' on it)"
            continue
        try:
            p = normalized_score(s, rp.fbank, higher, rp.reference)
        except ValueError as e:
            missing[t] = str(e)
            continue
        tasks[t] = {"metric": metric, "value": s, "fbank": rp.fbank, "reference": rp.reference, "points": p,
                    "source": rp.source}
    score = statistics.fmean(v["points"] for v in tasks.values()) if tasks else None
    return {"score": score, "tasks": tasks, "missing": missing}


def score_table(records: Sequence[dict]) -> list[dict]:
    """One row per model in ``records`` (FBANK included, scoring 0 by construction):
    ``{"model", "score", "tasks": {task: {"mean", "std", "n", "metric", "higher_is_better", "points",
    "data_key"}}, "missing"}``. Each task is scored against FBANK records on the same data only;
    records of more than one probe profile are refused (:func:`profile_of`)."""
    profile = profile_of(records)
    rows = []
    for model in dict.fromkeys(r["model"] for r in records):
        raw, meta = _from_records(records, model)
        fb = _fbank_from_records(records, {t: m[2] for t, m in meta.items()})
        sc = superb_score(raw, fbank=fb, metrics={t: m[:2] for t, m in meta.items()}, profile=profile)
        per = {}
        for t, v in raw.items():
            per[t] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v),
                      "metric": meta[t][0], "higher_is_better": meta[t][1], "data_key": meta[t][2],
                      "points": sc["tasks"].get(t, {}).get("points")}
        rows.append({"model": model, "score": sc["score"], "tasks": per, "missing": sc["missing"]})
    return rows

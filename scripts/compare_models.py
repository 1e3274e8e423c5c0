"""Intervals table of a `speechft probe` folder: each model's cells and score with 95 % bootstrap
intervals, and the paired differences of one model against another (the model cards' tables).

    python scripts/compare_models.py runs/card --rows FBANK=fbank "random init=speechft-tiny-random" \
        v1=speechft-tiny-v1 v2=speechft-tiny --compare v2 v1

Rows are LABEL=MODEL, MODEL being the ``model`` field of the records (as `speechft probe` wrote it).
The score needs the FBANK row (its records are the scale's zero); without it the score column is "–".
Intervals come from speechft.probe.stats (test utterances and seeds resampled; differences paired on
the same utterances), the same path as the reports.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speechft.report.markdown import Results, render_table
from speechft.utils.io import read_jsonl


def _fmt(iv, scale: float, digits: int) -> str:
    if iv is None:  # e.g. the score without an FBANK row to normalise by
        return "–"
    v = iv.scaled(scale)
    return f"{v.mean:+.{digits}f} [{v.lo:+.{digits}f}, {v.hi:+.{digits}f}]" + ("" if v.excludes_zero else " (n.s.)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe_dir", type=Path, help="a `speechft probe --out` folder (its results.jsonl)")
    ap.add_argument("--rows", nargs="+", required=True, metavar="LABEL=MODEL")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="also print the paired A − B differences")
    args = ap.parse_args(argv)
    path = args.probe_dir / "results.jsonl"
    if not path.is_file():
        print(f"error: {path}: no such file (expected a `speechft probe --out` folder)", file=sys.stderr)
        return 2
    records = read_jsonl(path)
    rows = {}
    for item in args.rows:
        label, sep, model = item.partition("=")
        if not sep or not label or not model:
            print(f"error: --rows {item!r}: expected LABEL=MODEL", file=sys.stderr)
            return 2
        if not any(r["model"] == model for r in records):
            print(f"error: {path}: no records of model {model!r}", file=sys.stderr)
            return 2
        rows[label] = [model]
    tasks = list(dict.fromkeys(r["task"] for r in records))
    res = Results(records, rows, tasks)
    print(render_table(res, list(rows), tasks))
    if args.compare:
        a, b = args.compare
        for label in (a, b):
            if label not in rows:
                print(f"error: --compare {label!r}: not one of the --rows labels ({', '.join(rows)})", file=sys.stderr)
                return 2
        cells = [_fmt(res.difference(a, b, t), 100.0, 1) for t in tasks]
        cells.append(_fmt(res.score_difference(a, b, tasks), 1.0, 0))
        print(f"\n| {a} − {b} (paired) | " + " | ".join(tasks) + " | score |")
        print("|---|" + "---|" * (len(tasks) + 1))
        print(f"| difference [95 % CI] | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

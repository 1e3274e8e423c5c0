"""Bootstrap intervals (speechft.probe.stats): coverage on a known distribution, pairing, pooling."""
import numpy as np
import pytest

from speechft.probe import stats


def _acc_record(correct, data_key="d", group="g", seed=0):
    correct = [int(c) for c in correct]
    return {"value": float(np.mean(correct)), "test_items": {"correct": correct}, "data_key": data_key,
            "group_key": group, "seed": seed}


def test_interval_covers_the_true_accuracy_at_about_the_stated_rate():
    rng = np.random.default_rng(0)
    p, n, sims = 0.7, 200, 300
    hits = 0
    for i in range(sims):
        rec = _acc_record(rng.random(n) < p, data_key=f"sim{i}")
        iv = stats.cell([rec], n_boot=400)
        hits += iv.lo <= p <= iv.hi
    rate = hits / sims
    # 95 % nominal; the binomial sd of the rate over 300 simulations is 1.3 points
    assert 0.91 <= rate <= 0.99, rate


def test_error_rate_interval_covers_a_known_corpus_error_rate():
    rng = np.random.default_rng(1)
    hits, sims, q = 0, 200, 0.3
    for i in range(sims):
        lengths = rng.integers(5, 30, size=150)
        errors = rng.binomial(lengths, q)
        rec = {"value": errors.sum() / lengths.sum(), "test_items": {"errors": errors.tolist(), "lengths": lengths.tolist()},
               "data_key": f"e{i}", "group_key": "g"}
        iv = stats.cell([rec], n_boot=400)
        hits += iv.lo <= q <= iv.hi
    assert 0.90 <= hits / sims <= 0.99


def test_paired_difference_of_identical_models_is_exactly_zero():
    rng = np.random.default_rng(2)
    c = rng.random(100) < 0.6
    a = [_acc_record(c, group="a")]
    b = [_acc_record(c, group="b")]
    d = stats.difference(a, b)
    assert (d.mean, d.lo, d.hi) == (0.0, 0.0, 0.0) and not d.excludes_zero


def test_paired_difference_is_tighter_than_the_two_intervals():
    """Two models that agree on most utterances: their difference is resolved although their
    separate intervals overlap (that is what pairing buys)."""
    rng = np.random.default_rng(3)
    base = rng.random(300) < 0.6
    better = base.copy()
    better[np.flatnonzero(~base)[:15]] = True  # 15 more right, none lost: +5 points
    a, b = [_acc_record(better, group="a")], [_acc_record(base, group="b")]
    ia, ib = stats.cell(a), stats.cell(b)
    assert ia.lo < ib.hi  # the separate intervals overlap
    d = stats.difference(a, b)
    assert d.excludes_zero and d.mean == pytest.approx(0.05)


def test_pooled_rows_resample_models_and_seeds():
    rng = np.random.default_rng(4)
    recs = [_acc_record(rng.random(100) < p, group=f"ft{k}", seed=s) for k, p in enumerate((0.5, 0.8)) for s in (0, 1)]
    iv = stats.cell(recs)
    single = stats.cell(recs[:2])
    assert iv.mean == pytest.approx(np.mean([np.mean([r["value"] for r in recs[:2]]), np.mean([r["value"] for r in recs[2:]])]))
    assert (iv.hi - iv.lo) > (single.hi - single.lo)  # between-model spread widens the interval


def test_no_items_no_interval_and_mixed_test_sets_refused():
    assert stats.cell([{"value": 0.5, "data_key": "d", "group_key": "g"}]) is None
    with pytest.raises(ValueError, match="same test data"):
        stats.difference([_acc_record([1, 0], data_key="x")], [_acc_record([1, 0], data_key="y")])


def test_a_summary_never_states_an_ordering_whose_interval_contains_zero():
    import re

    from speechft.report.markdown import Results, summarize
    from test_provenance import _rec

    rng = np.random.default_rng(5)
    for trial in range(20):
        tasks = ["ft", "o1", "o2"]
        recs = [_rec("FBANK", t, 0.1, n=60) for t in tasks]
        for m in ("pre", "reg", "sft"):
            for t in tasks:
                r = _rec(m, t, float(rng.uniform(0.3, 0.7)), n=60)
                r["test_items"]["correct"] = list(rng.permutation(r["test_items"]["correct"]))
                recs.append(r)
        res = Results(recs, ["FBANK", "pre", "reg", "sft"], tasks)
        lines = summarize(res, tasks, "ft", {"pre": "pre", "regular": "reg", "stable": "sft", "speechft": "sft",
                                             "tuned": ["reg", "sft"]})
        for line in lines:
            m = re.search(r"CI \[([-+0-9.]+), ([-+0-9.]+)\]", line)
            if not m:
                continue
            lo, hi = float(m.group(1)), float(m.group(2))
            ordered = re.search(r"improves on|is worse than|is above|is below", line)
            assert bool(ordered) == (lo > 0 or hi < 0), line


def test_compare_models_script_prints_intervals_and_flags_a_null_difference(tmp_path, capsys):
    """scripts/compare_models.py (the model cards' tables): a clear gap is an ordering, identical
    models are 'n.s.', and a model missing from the records is one error line with exit code 2."""
    import importlib.util
    import json
    from pathlib import Path

    from test_provenance import _rec

    spec = importlib.util.spec_from_file_location("compare_models", Path(__file__).parents[1] / "scripts" / "compare_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    recs = [_rec("FBANK", "t", 0.1, n=200), _rec("a", "t", 0.9, n=200), _rec("b", "t", 0.5, n=200),
            _rec("b2", "t", 0.5, n=200)]
    recs[-1]["group_key"] = recs[-2]["group_key"].replace("b-", "b2-")
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert mod.main([str(tmp_path), "--rows", "FBANK=FBANK", "A=a", "B=b", "--compare", "A", "B"]) == 0
    out = capsys.readouterr().out
    diff_line = out.strip().splitlines()[-1]
    assert "+40.0 [" in diff_line and "n.s." not in diff_line
    assert mod.main([str(tmp_path), "--rows", "FBANK=FBANK", "B=b", "C=b2", "--compare", "B", "C"]) == 0
    assert "+0.0 [+0.0, +0.0] (n.s.)" in capsys.readouterr().out
    assert mod.main([str(tmp_path), "--rows", "A=a", "B=b", "--compare", "A", "B"]) == 0  # no FBANK row: no score
    assert capsys.readouterr().out.strip().endswith("| – |")
    assert mod.main([str(tmp_path), "--rows", "X=nothere"]) == 2
    assert "no records of model 'nothere'" in capsys.readouterr().err


def test_one_model_may_stand_in_several_rows():
    """A continual scenario's first Speech-FT merge starts both Speech-FT chains: both rows show its records."""
    from speechft.report.markdown import Results
    from test_provenance import _rec

    recs = [_rec("FBANK", "t", 0.1, n=40), _rec("m1", "t", 0.6, n=40), _rec("other", "t", 0.4, n=40)]
    res = Results(recs, {"FBANK": ["FBANK"], "chain a": ["m1"], "chain b": ["m1"], "x": ["other"]}, ["t"])
    a, b = res.cell("chain a", "t"), res.cell("chain b", "t")
    assert a is not None and (a.mean, a.lo, a.hi) == (b.mean, b.lo, b.hi)
    assert res.score_difference("chain a", "chain b", ["t"]).mean == 0.0
    assert res.cell("x", "t").mean != a.mean

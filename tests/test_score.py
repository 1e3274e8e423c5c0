"""SUPERB score: hand-computed examples, official reference points, records in, reports out."""
import math

import pytest

from speechft.probe import format_table, normalized_score, plot_layer_weights, score_table, superb_score, write_summary
from speechft.probe.score import OFFICIAL
from speechft.utils.io import append_jsonl, read_jsonl


def rec(model, task, value, seed=0, metric=None, higher=None, weights=(0.2, 0.3, 0.5), fbank=False):
    metric = metric or ("accuracy" if task.endswith(("ks", "sid", "ic")) else "per")
    higher = metric == "accuracy" if higher is None else higher
    return {"model": model, "task": task, "metric": metric, "value": value, "dev_value": value, "seed": seed,
            "higher_is_better": higher, "layer_weights": list(weights), "is_fbank": fbank}


def test_hand_computed_example():
    # lite-ks: 1000 (0.8 - 0.5) / (1 - 0.5) = 600; lite-pr (PER): 1000 (0.3 - 0.6) / (0 - 0.6) = 500
    out = superb_score({"lite-ks": 0.8, "lite-pr": 0.3}, fbank={"lite-ks": 0.5, "lite-pr": 0.6})
    assert out["tasks"]["lite-ks"]["points"] == pytest.approx(600.0)
    assert out["tasks"]["lite-pr"]["points"] == pytest.approx(500.0)
    assert out["score"] == pytest.approx(550.0)
    assert out["missing"] == {}


def test_fbank_is_zero_and_reference_is_1000():
    assert normalized_score(0.5, 0.5, True) == 0.0
    assert normalized_score(1.0, 0.5, True) == pytest.approx(1000.0)
    assert normalized_score(0.0, 0.6, False) == pytest.approx(1000.0)
    # worse than FBANK is negative, for both directions
    assert normalized_score(0.4, 0.5, True) < 0 and normalized_score(0.7, 0.6, False) < 0
    with pytest.raises(ValueError, match="undefined"):
        normalized_score(0.9, 1.0, True)


def test_official_points_for_real_superb_tasks():
    pr, ks = OFFICIAL["pr"], OFFICIAL["ks"]
    out = superb_score({"pr": pr.reference, "ks": ks.fbank}, profile="superb")  # no harness FBANK needed
    assert out["tasks"]["pr"]["points"] == pytest.approx(1000.0)
    assert out["tasks"]["ks"]["points"] == pytest.approx(0.0)
    # halfway on PER: 1000 * (m - f) / (r - f) with m the midpoint
    mid = (pr.fbank + pr.reference) / 2
    assert superb_score({"pr": mid}, profile="superb")["score"] == pytest.approx(500.0)
    # the fast profile's numbers are never set against the published points: they need harness FBANK
    assert "pr" in superb_score({"pr": mid})["missing"]
    for rp in OFFICIAL.values():
        assert rp.source and ("SUPERB" in rp.source)
        assert (rp.reference > rp.fbank) == (rp.metric == "accuracy")


def test_records_average_seeds_and_use_fbank_records():
    records = [rec("m", "lite-ks", 0.7, seed=0), rec("m", "lite-ks", 0.9, seed=1),
               rec("fbank", "lite-ks", 0.4, fbank=True), rec("fbank", "lite-ks", 0.6, seed=1, fbank=True),
               rec("m", "lite-pr", 0.2), rec("fbank", "lite-pr", 0.8, fbank=True)]
    out = superb_score(records, model="m")
    # ks: mean 0.8 vs FBANK mean 0.5 -> 600; pr: 1000 * (0.2 - 0.8) / (0 - 0.8) = 750
    assert out["tasks"]["lite-ks"]["points"] == pytest.approx(600.0)
    assert out["tasks"]["lite-pr"]["points"] == pytest.approx(750.0)
    assert out["score"] == pytest.approx(675.0)
    assert superb_score(records)["score"] == pytest.approx(675.0)  # the only non-FBANK model


def test_missing_fbank_and_undefined_tasks_are_reported_not_guessed():
    records = [rec("a", "lite-ks", 0.9), rec("b", "lite-ks", 0.8), rec("a", "lite-sid", 0.5),
               rec("fbank", "lite-sid", 1.0, fbank=True)]
    with pytest.raises(ValueError, match="pass model="):
        superb_score(records)
    out = superb_score(records, model="a")
    assert out["score"] is None
    assert "no FBANK" in out["missing"]["lite-ks"] and "undefined" in out["missing"]["lite-sid"]
    with pytest.raises(KeyError, match="not registered"):
        superb_score({"my-task": 0.5}, fbank={"my-task": 0.1})
    assert superb_score({"my-task": 0.5}, fbank={"my-task": 0.0}, metrics={"my-task": ("accuracy", True)})[
        "score"] == pytest.approx(500.0)


def test_table_summary_and_plot_from_records_only(tmp_path):
    for r in [rec("m", "lite-ks", 0.7), rec("m", "lite-ks", 0.9, seed=1), rec("fbank", "lite-ks", 0.5, weights=(1.0,), fbank=True),
              rec("m", "lite-pr", 0.25), rec("fbank", "lite-pr", 0.5, weights=(1.0,), fbank=True)]:
        append_jsonl(tmp_path / "results.jsonl", r)
    records = read_jsonl(tmp_path / "results.jsonl")
    rows = {r["model"]: r for r in score_table(records)}
    assert rows["fbank"]["score"] == pytest.approx(0.0)
    assert rows["m"]["score"] == pytest.approx((600.0 + 500.0) / 2)
    assert rows["m"]["tasks"]["lite-ks"]["std"] == pytest.approx(math.sqrt(0.02))
    text = format_table(records)
    assert "80.00 ± 14.14" in text and "550" in text and "25.00" in text
    md = write_summary(tmp_path).read_text()
    assert "| m | 550 |" in md and "harness" in md
    png = plot_layer_weights(tmp_path)
    assert png.exists() and png.stat().st_size > 1000

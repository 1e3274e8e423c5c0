"""Results are reused only when everything that produced them is equal (DESIGN §5): each case a user
met (a changed manifest, model directory, size, limit or epochs under the same --out) recomputes or
refuses with one line naming what changed; tables never average records made from other inputs."""
import dataclasses
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_tiny_encoder
from speechft.cli import app
from speechft.data import read_manifest, write_manifest
from speechft.metrics import accuracy, error_items, error_rate, items_value
from speechft.models.io import save_encoder
from speechft.probe import run_probe, score_table
from speechft.probe.report import table_rows
from speechft.probe.score import check_groups
from speechft.tasks import user_task
from speechft.utils.io import read_jsonl
from speechft.utils.provenance import changes, key_of
from test_probe import make_tone_task

KW = dict(epochs=2, progress=False)


@pytest.fixture()
def tones(tmp_path):
    """A fresh copy per test: the tests rewrite its files."""
    return make_tone_task(tmp_path / "tones")


def _retask(task, manifests):
    return user_task(task.name, tuple(str(m) for m in manifests), task.kind, task.target_field)


def test_key_is_canonical_and_changes_name_the_leaf():
    assert key_of({"a": 1, "b": [1, 2]}) == key_of({"b": [1, 2], "a": 1})
    assert key_of({"a": 1}) != key_of({"a": 2})
    assert changes({"train": {"epochs": 2}, "x": 1}, {"train": {"epochs": 3}, "x": 1}) == ["train.epochs: 2 -> 3"]


def test_changed_manifest_content_under_the_same_path_is_refused_then_replaced(tmp_path, tones):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = run_probe(make_tiny_encoder(), [tones], out, model_name="m", cache_dir=cache, **KW)
    test = tones.manifests[2]
    rows = read_manifest(test)
    flipped = [dataclasses.replace(r, label={"low": "high", "high": "low"}[r.label]) for r in rows]
    write_manifest(test, flipped)  # same utterances and audio, other labels, same path
    with pytest.raises(ValueError, match=r"m / tones-classify was probed with other inputs \(data\.splits\.test\.manifest: "):
        run_probe(make_tiny_encoder(), [tones], out, model_name="m", cache_dir=cache, **KW)
    assert read_jsonl(out / "results.jsonl") == first  # refused: the old record is untouched
    new = run_probe(make_tiny_encoder(), [tones], out, model_name="m", cache_dir=cache, replace=True, **KW)
    recs = read_jsonl(out / "results.jsonl")
    assert len(recs) == 1 and recs[0]["key"] == new[0]["key"] != first[0]["key"]
    assert recs[0]["value"] == pytest.approx(1 - first[0]["value"])  # the labels flipped, so did the accuracy


def test_a_manifest_with_other_manifests_under_a_reused_task_name_recomputes(tmp_path, tones):
    """`probe --task-name digits --task-manifests …` into an --out holding `digits` from other manifests."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    run_probe(make_tiny_encoder(), [tones], out, model_name="m", cache_dir=cache, **KW)
    other = make_tone_task(tmp_path / "other", n=(16, 6, 6), seed=1)
    with pytest.raises(ValueError, match="probed with other inputs .*manifest"):
        run_probe(make_tiny_encoder(), [_retask(tones, other.manifests)], out, model_name="m", cache_dir=cache, **KW)
    rec = run_probe(make_tiny_encoder(), [_retask(tones, other.manifests)], out, model_name="m", cache_dir=cache,
                    replace=True, **KW)[0]
    assert rec["num_utterances"] == {"train": 16, "dev": 6, "test": 6}


def test_rewritten_audio_is_extracted_again_not_read_from_the_feature_cache(tmp_path, tones):
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = run_probe(make_tiny_encoder(), [tones], out, model_name="m", cache_dir=cache, **KW)[0]
    # every test file now holds another utterance's audio (same paths, same manifest bytes)
    rows = read_manifest(tones.manifests[2])
    blobs = [open(r.audio, "rb").read() for r in rows]
    for r, b in zip(rows, blobs[1:] + blobs[:1]):
        with open(r.audio, "wb") as f:
            f.write(b)
        os.utime(r.audio, ns=(os.stat(r.audio).st_atime_ns, os.stat(r.audio).st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=r"data\.splits\.test\.audio"):
        run_probe(make_tiny_encoder(), [tones], out, model_name="m", cache_dir=cache, **KW)
    again = run_probe(make_tiny_encoder(), [tones], tmp_path / "out2", model_name="m", cache_dir=cache, **KW)[0]
    assert again["key"] != first["key"] and again["extract_seconds"] > 0
    # the cache re-extracted the rewritten utterances instead of serving the old features
    from speechft.probe import cache as fcache

    folder = fcache.split_folder(tones, "test", "default", make_tiny_encoder().fingerprint(), cache,
                                 pooled_only=True)  # a pooled task
    c = fcache.FeatureCache(folder)
    version = fcache.encoder_version(make_tiny_encoder())
    assert all(c.has(r, version) for r in rows)


def test_changed_model_directory_under_the_same_path_is_refused(tmp_path, tones):
    out, cache, model = tmp_path / "out", tmp_path / "cache", tmp_path / "model"
    save_encoder(make_tiny_encoder(seed=0), model)
    run_probe(str(model), [tones], out, cache_dir=cache, **KW)
    shutil.rmtree(model)
    save_encoder(make_tiny_encoder(seed=1), model)  # other weights, same path, same name in the records
    with pytest.raises(ValueError, match=r"was probed with other inputs \(model\.fingerprint"):
        run_probe(str(model), [tones], out, cache_dir=cache, **KW)


@pytest.mark.parametrize("change", [dict(limit=10), dict(epochs=3)])
def test_a_smaller_or_longer_run_into_the_same_out_is_refused_not_averaged(tmp_path, tones, change):
    out, cache = tmp_path / "out", tmp_path / "cache"
    run_probe(make_tiny_encoder(), [tones], out, model_name="m", cache_dir=cache, **KW)
    with pytest.raises(ValueError, match="pass --overwrite"):
        run_probe(make_tiny_encoder(), [tones], out, model_name="m", cache_dir=cache, **{**KW, **change})
    assert len(read_jsonl(out / "results.jsonl")) == 1


def test_tables_refuse_to_average_records_made_from_other_inputs(tmp_path, tones):
    a = run_probe(make_tiny_encoder(), [tones], tmp_path / "a", model_name="m", cache_dir=tmp_path / "c", **KW)
    b = run_probe(make_tiny_encoder(), [tones], tmp_path / "b", model_name="m", cache_dir=tmp_path / "c", limit=10,
                  **{k: v for k, v in KW.items()})
    check_groups(a)  # one group: fine
    with pytest.raises(ValueError, match="made with different inputs"):
        score_table(a + b)
    # records of equal inputs except the seed are averaged
    s = run_probe(make_tiny_encoder(), [tones], tmp_path / "a", model_name="m", cache_dir=tmp_path / "c", seeds=(0, 1),
                  **KW)
    assert score_table(s)[0]["tasks"][tones.name]["n"] == 2


def test_cli_probe_refuses_with_one_line_and_overwrite_replaces(tmp_path, tones, tiny_model_dir):
    train, dev, test = tones.manifests
    base = ["probe", "--model", str(tiny_model_dir), "--task-manifests", f"{train},{dev},{test}", "--task-name", "digits",
            "--out", str(tmp_path / "out"), "--epochs", "2", "--cache-dir", str(tmp_path / "cache")]
    assert CliRunner().invoke(app, base).exit_code == 0
    res = CliRunner().invoke(app, base + ["--limit", "10"])
    assert res.exit_code == 2 and "pass --overwrite" in res.output and "data.limit: null -> 10" in res.output
    assert len([ln for ln in res.output.splitlines() if "error" in ln]) == 1 and "Traceback" not in res.output
    res = CliRunner().invoke(app, base + ["--limit", "10", "--overwrite"])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert len(recs) == 1 and recs[0]["limit"] == 10


def test_per_utterance_items_give_the_corpus_metric():
    refs, hyps = ["a b c d", "x y", "p"], ["a c d e", "x", ""]
    it = error_items("per", refs, hyps)
    assert items_value(it) == pytest.approx(error_rate("per", refs, hyps))
    refs, hyps = ["hello world", "ab"], ["helo wrld!", "abc"]
    assert items_value(error_items("cer", refs, hyps)) == pytest.approx(error_rate("cer", refs, hyps))
    assert accuracy([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)


def test_probe_records_carry_items_that_reproduce_their_value(tmp_path):
    ctc = make_tone_task(tmp_path / "ctc", kind="ctc")
    cls = make_tone_task(tmp_path / "cls")
    for rec in run_probe(make_tiny_encoder(), [ctc, cls], tmp_path / "out", cache_dir=tmp_path / "c", **KW):
        assert items_value(rec["test_items"]) == pytest.approx(rec["value"])
        assert len(next(iter(rec["test_items"].values()))) == rec["num_utterances"]["test"]


def _rec(model, task, value, metric="accuracy", hib=True, n=40, seed=0, data_key="d"):
    correct = [1] * round(value * n) + [0] * (n - round(value * n))
    if metric != "accuracy":
        items = {"errors": correct, "lengths": [1] * n}
    else:
        items = {"correct": correct}
    return {"model": model, "task": task, "metric": metric, "value": value, "higher_is_better": hib, "seed": seed,
            "group_key": f"{model}-{task}", "data_key": f"{data_key}-{task}", "key": f"{model}-{task}-{seed}",
            "test_items": items, "num_utterances": {"test": n}, "is_fbank": model == "FBANK"}


def test_the_report_and_speechft_probe_score_the_same_records_alike():
    """One score path: the report and `speechft probe` pick the same reference points, by profile."""
    from speechft.report.markdown import Results

    for profile, expected_pr in (("superb", 1000 * (0.3 - 0.8201) / (0.0306 - 0.8201)),  # the published points
                                 ("fast", 1000 * (0.3 - 0.9) / (0.0 - 0.9))):  # harness FBANK, perfect score
        recs = [{**r, "profile": profile} for r in (_rec("FBANK", "pr", 0.9, "per", False), _rec("m", "pr", 0.3, "per", False),
                                                    _rec("FBANK", "t1", 0.2), _rec("m", "t1", 0.6))]
        res = Results(recs, ["FBANK", "m"], ["pr", "t1"])
        header, rows = table_rows(recs)
        probe_score = float(dict((r[0], r[1]) for r in rows)["m"])
        assert res.score("m", ["pr", "t1"]).mean == pytest.approx(score_table(recs)[1]["score"])
        assert round(res.score("m", ["pr", "t1"]).mean) == probe_score
        assert res.points("m", "pr") == pytest.approx(expected_pr)


def test_significance_aware_summary():
    from speechft.report.markdown import Results, summarize

    tasks = ["ft", "o1", "o2"]
    recs = [_rec("FBANK", t, 0.1, n=200) for t in tasks]
    recs += [_rec("pre", "ft", 0.50, n=200), _rec("pre", "o1", 0.80, n=200), _rec("pre", "o2", 0.80, n=200)]
    recs += [_rec("reg", "ft", 0.90, n=200), _rec("reg", "o1", 0.40, n=200), _rec("reg", "o2", 0.40, n=200)]
    recs += [_rec("sft", "ft", 0.51, n=200), _rec("sft", "o1", 0.80, n=200), _rec("sft", "o2", 0.79, n=200)]
    # paired items: sft differs from pre on one o2 utterance only
    res = Results(recs, ["FBANK", "pre", "reg", "sft"], tasks)
    text = "\n".join(summarize(res, tasks, "ft", {"pre": "pre", "regular": "reg", "stable": "sft", "speechft": "sft",
                                                  "tuned": ["reg", "sft"]}))
    assert "reg improves on the pre-trained model" in text
    assert "sft shows no significant difference from the pre-trained model" in text
    assert "On the other tasks, reg is below pre" in text
    assert "On the other tasks, sft is above reg" in text
    assert "significantly lowers the pre-trained model's result on: o1, o2" in text


def test_sweep_reprobes_an_alpha_whose_task_data_changed(tmp_path, tones):
    from speechft.merge.sweep import run_sweep

    m0, m1 = tmp_path / "m0", tmp_path / "m1"
    save_encoder(make_tiny_encoder(seed=0), m0)
    save_encoder(make_tiny_encoder(seed=1), m1)
    kw = dict(epochs=2, cache_dir=str(tmp_path / "cache"), plot=False)
    first = run_sweep(str(m0), [str(m1)], [0.0, 1.0], [tones], tmp_path / "sw", **kw).records
    rows = read_manifest(tones.manifests[2])
    write_manifest(tones.manifests[2], [dataclasses.replace(r, label={"low": "high", "high": "low"}[r.label])
                                        for r in rows])
    again = run_sweep(str(m0), [str(m1)], [0.0, 1.0], [tones], tmp_path / "sw", **kw).records
    assert len(again) == 2 and {r["data_key"] for r in again} != {r["data_key"] for r in first}
    for a, b in zip(sorted(first, key=lambda r: r["alpha"]), sorted(again, key=lambda r: r["alpha"])):
        assert b["value"] == pytest.approx(1 - a["value"])  # measured on the new labels, not reused
    # a fine-tuned model rewritten in place makes another sweep: refused, the folder is kept
    shutil.rmtree(m1)
    save_encoder(make_tiny_encoder(seed=2), m1)
    with pytest.raises(ValueError, match="holds a sweep made with other settings .*weights"):
        run_sweep(str(m0), [str(m1)], [0.0, 1.0], [tones], tmp_path / "sw", **kw)

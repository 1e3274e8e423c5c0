"""The built-in synthetic benchmark: splits, targets, voice disjointness, determinism, caching, CLI."""
from __future__ import annotations

import functools
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from speechft.corpora import espeak, lite, text
from speechft.data.manifest import read_manifest
from speechft.tasks import get_task

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

SPLITS = ("train", "dev", "test")
CONTENT_TASKS = ("lite-pr", "lite-asr", "lite-ks", "lite-lid", "lite-ic", "lite-style")


@functools.lru_cache(maxsize=None)
def _rows(root: Path, task: str, split: str):
    return read_manifest(root / task / f"{split}.jsonl")


def test_every_task_has_splits_targets_and_audio(lite_quick):
    size = lite.SIZES["quick"]
    for name in lite.TASKS:
        task = get_task(name)
        ids = set()
        for split in SPLITS:
            rows = _rows(lite_quick, name, split)
            assert len(rows) == getattr(size, split), (name, split)
            for r in rows:
                assert r.target(task.target_field), f"{name}/{split}/{r.id} has no {task.target_field}"
                assert r.sample_rate == 16000 and r.duration > 0.1
                assert Path(r.audio).is_file()
                ids.add(r.id)
        assert len(ids) == sum(getattr(size, s) for s in SPLITS), f"{name}: ids are not unique across splits"
        info = sf.info(_rows(lite_quick, name, "test")[0].audio)
        row = _rows(lite_quick, name, "test")[0]
        assert info.samplerate == 16000 and info.channels == 1
        assert abs(info.frames / 16000 - row.duration) < 1e-3


def test_every_class_is_in_train(lite_quick):
    expected = {
        "lite-ks": set(text.KS_LABELS),
        "lite-lid": set(text.languages()),
        "lite-ic": set(text.ic_intents()),
        "lite-style": set(lite.STYLE_CLASSES),
    }
    for name, classes in expected.items():
        field = get_task(name).target_field
        train = {r.target(field) for r in _rows(lite_quick, name, "train")}
        assert train == classes, f"{name}: classes missing from train: {sorted(classes - train)}"
        for split in ("dev", "test"):
            assert {r.target(field) for r in _rows(lite_quick, name, split)} <= classes
    sid = [{r.speaker for r in _rows(lite_quick, "lite-sid", s)} for s in SPLITS]
    assert len(sid[0]) == lite.N_SID_VOICES and sid[0] == sid[1] == sid[2], "SID: every voice in every split"


def test_content_tasks_test_voices_unseen_in_train(lite_quick):
    for name in CONTENT_TASKS:
        voices = {s: {r.speaker for r in _rows(lite_quick, name, s) if r.speaker} for s in SPLITS}
        assert voices["train"] and voices["test"]
        assert not voices["test"] & voices["train"], f"{name}: test voices heard in training"
        assert not voices["dev"] & voices["train"], f"{name}: dev voices heard in training"
        assert not voices["dev"] & voices["test"], f"{name}: dev and test share voices"


def test_sentences_distinct_across_splits(lite_quick):
    texts = [{r.text for r in _rows(lite_quick, "lite-asr", s)} for s in SPLITS]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_targets_are_clean(lite_quick):
    for split in SPLITS:
        for r in _rows(lite_quick, "lite-asr", split):
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", r.text), r.text
        for r in _rows(lite_quick, "lite-pr", split):
            phones = r.phones.split()
            assert phones and not any(c in p for p in phones for c in "ˈˌ_()"), r.phones
        for r in _rows(lite_quick, "lite-ic", split):
            assert len(r.label.split("|")) == 3
    counts = Counter(r.label for r in _rows(lite_quick, "lite-ks", "train"))
    assert max(counts.values()) - min(counts.values()) <= 1, "KS classes are dealt round-robin"


def test_split_phones_conventions():
    assert espeak.split_phones("t_ˈɜː_n ɒ_n_ð_ə (en)_ð_ˈeə_(fr) ð_ɪ_ ˈoʊ") == \
        ["t", "ɜː", "n", "ɒ", "n", "ð", "ə", "ð", "eə", "ð", "ɪ", "oʊ"]
    assert espeak.phonemize("no", "en-us") == ["n", "oʊ"]


def test_same_seed_same_data_other_seed_differs(lite_quick, tmp_path):
    tasks = ["lite-pr", "lite-ks"]
    out = lite.prepare(tmp_path / "again", size="quick", seed=0, tasks=tasks)
    for t in tasks:
        for s in SPLITS:
            assert out[t][s].read_text() == (lite_quick / t / f"{s}.jsonl").read_text(), (t, s)
        for r in _rows(lite_quick, t, "test")[:5]:
            other = tmp_path / "again" / t / "wav" / Path(r.audio).name
            assert other.read_bytes() == Path(r.audio).read_bytes(), f"{t}: audio of {r.id} differs"
    # A different seed is a different config: the cached folder is rebuilt, with other content.
    seed1 = lite.prepare(tmp_path / "again", size="quick", seed=1, tasks=["lite-ks"])
    assert seed1["lite-ks"]["train"].read_text() != (lite_quick / "lite-ks" / "train.jsonl").read_text()
    assert '"seed": 1' in (tmp_path / "again" / "lite-ks" / "stamp.json").read_text()


def test_cache_hit_is_fast_and_untouched(lite_quick):
    stamp = lite_quick / "lite-pr" / "stamp.json"
    before = stamp.stat().st_mtime_ns
    t0 = time.perf_counter()
    lite.prepare(lite_quick, size="quick")
    assert time.perf_counter() - t0 < 3.0
    assert stamp.stat().st_mtime_ns == before


def test_interrupted_synthesis_leaves_nothing(tmp_path, monkeypatch):
    real = espeak.render
    calls = []

    def flaky(job):
        calls.append(job)
        if len(calls) == 20:
            raise espeak.EspeakError("simulated crash")
        return real(job)

    monkeypatch.setattr(espeak, "render", flaky)
    with pytest.raises(espeak.EspeakError, match="simulated"):
        lite.prepare(tmp_path, size="quick", tasks=["lite-ks"], jobs=1)
    assert not (tmp_path / "lite-ks").exists()
    assert list(tmp_path.iterdir()) == [], "temporary folders must be cleaned up"


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(KeyError, match="did you mean lite-ks"):
        lite.prepare(tmp_path, size="quick", tasks=["lite-kss"])
    with pytest.raises(ValueError, match="did you mean quick"):
        lite.prepare(tmp_path, size="quik")
    with pytest.raises(ValueError, match="empty text"):
        espeak.synthesize_array("  ", "en-us")
    with pytest.raises(espeak.EspeakError, match="nosuchvoice"):
        espeak.synthesize_array("hello", "nosuchvoice")


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path):
    espeak.espeak_binary.cache_clear()
    monkeypatch.setattr(espeak.shutil, "which", lambda name: None)
    try:
        with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng"):
            lite.prepare(tmp_path, size="quick")
    finally:
        espeak.espeak_binary.cache_clear()


def test_cli_prepare_lite(lite_quick, tmp_path):
    from typer.testing import CliRunner

    from speechft.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "lite", "--quick", "--out", str(tmp_path), "--tasks", "lite-style"])
    assert res.exit_code == 0, res.output
    assert re.search(r"lite-style\s+train\s+40 rows", res.output)
    assert len(read_manifest(tmp_path / "lite-style" / "test.jsonl")) == 15
    res = runner.invoke(app, ["prepare", "lite", "--quick", "--out", str(lite_quick)])  # cached: all seven
    assert res.exit_code == 0, res.output
    assert len(re.findall(r" rows ", res.output)) == 21
    res = runner.invoke(app, ["prepare", "lite", "--quick", "--hours", "2", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--hours does not apply" in res.output

"""pretrain-lite: unlabelled multi-language speech, sized by hours, deterministic, cached."""
from __future__ import annotations

import shutil
import time

import pytest

from speechft.corpora import lite, pretrain_lite, text
from speechft.data.manifest import read_manifest

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

HOURS = 0.01  # 36 s of training audio


def test_tiny_pretrain_set(tmp_path):
    out = pretrain_lite.prepare(tmp_path / "a", hours=HOURS, seed=3, languages=["en", "de", "fi"])["pretrain"]
    rows = {s: read_manifest(p) for s, p in out.items()}
    assert sum(r.duration for r in rows["train"]) >= HOURS * 3600
    assert len(rows["dev"]) >= 4 and len(rows["test"]) >= 4
    held_out = lite.voice_split(pretrain_lite.EXCLUDE_LITE_SEED)
    for split, rs in rows.items():
        for r in rs:
            assert r.language in {"en", "de", "fi"}
            assert 0.5 < r.duration <= pretrain_lite.MAX_SECONDS + 1e-6 and r.sample_rate == 16000
            assert r.speaker not in held_out["test"] and r.speaker not in held_out["dev"]
    assert {r.language for r in rows["train"]} > {"en"}, "more than one language"

    # same seed -> identical manifests and audio; a cache hit does not resynthesise
    again = pretrain_lite.prepare(tmp_path / "b", hours=HOURS, seed=3, languages=["en", "de", "fi"])["pretrain"]
    for s in out:
        assert again[s].read_text() == out[s].read_text()
    first = rows["train"][0]
    assert (tmp_path / "b" / "pretrain" / "wav" / f"{first.id}.wav").read_bytes() == open(first.audio, "rb").read()
    t0 = time.perf_counter()
    pretrain_lite.prepare(tmp_path / "a", hours=HOURS, seed=3, languages=["en", "de", "fi"])
    assert time.perf_counter() - t0 < 3.0


def test_bad_options(tmp_path):
    with pytest.raises(KeyError, match="did you mean"):
        pretrain_lite.prepare(tmp_path, hours=HOURS, languages=["fii"])
    with pytest.raises(ValueError, match="hours"):
        pretrain_lite.prepare(tmp_path, hours=0)
    assert set(text.languages()) >= {"en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "fi"}

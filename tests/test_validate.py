"""Validation of manifests and audio: every fault found, one exact reason each, cheap re-runs, CLI."""
import json
import logging
import os

import pytest
from typer.testing import CliRunner

from conftest import sine
from corrupt import (NOTE_IDS, STEREO_ID, UNREADABLE_ID, VALIDATE_KWARGS, bad_key, make_corrupt_corpus,
                     permissions_enforced)
from speechft.data import DataValidationError, Utterance, load_checked_rows, validate_manifests, write_audio
from speechft.data import audio as audio_mod
from speechft.data import validate as validate_mod
from speechft.data.manifest import ManifestError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corrupt_corpus(tmp_path_factory.mktemp("corrupt"))


def _manifest(tmp_path, rows, name="m.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _good(tmp_path, n=3, seconds=0.5, label=True):
    rows = []
    for i in range(n):
        write_audio(tmp_path / f"g{i}.wav", sine(seconds, seed=i))
        rows.append({"id": f"g{i}", "audio": f"g{i}.wav", **({"label": "yes"} if label else {})})
    return rows


def test_every_fault_gets_its_reason(corpus):
    manifest, expected = corpus
    report = validate_manifests(manifest, **VALIDATE_KWARGS, use_cache=False)
    got = {bad_key(b): b.reason for b in report.bad}
    assert set(got) == set(expected), f"unexpected: {set(got) ^ set(expected)}"
    for key, reason in expected.items():
        assert reason in got[key], (key, got[key])
    good_ids = {r.id for r in report.good_rows[str(manifest)]}
    assert good_ids == {"good_0", "good_1", "good_2", *NOTE_IDS} | (
        set() if permissions_enforced() else {UNREADABLE_ID})
    assert report.total_rows[str(manifest)] == len(good_ids) + len(expected)
    assert not report.ok
    for sr in (8000, 44100, 48000):
        assert report.notes[f"resampled from {sr} Hz"] == 1
    # Every bad row is one formatted line naming manifest:line, id and reason.
    lines = report.format_lines()
    assert len(lines) == len(report.bad)
    assert any(line.startswith(f"{manifest}:11  {STEREO_ID}  ") and line.endswith("2 channels (expected 1)")
               for line in lines)


def test_unreadable_file_is_permission_denied(corpus):
    if not permissions_enforced():
        pytest.skip("running as root: chmod 000 does not stop reading, so the corpus expects this row good "
                    "(the simulated case is covered by test_permission_error_is_reported)")
    manifest, _ = corpus
    report = validate_manifests(manifest, **VALIDATE_KWARGS)
    assert [b.reason for b in report.bad if b.id == UNREADABLE_ID] == ["permission denied"]


def test_permission_error_is_reported(tmp_path, monkeypatch):
    # Simulate the OS refusing to open one file (works as root too).
    rows = _good(tmp_path, 2)
    m = _manifest(tmp_path, rows)
    real_open = open

    def refusing_open(path, *a, **k):
        if str(path).endswith("g1.wav"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(audio_mod, "open", refusing_open, raising=False)
    report = validate_manifests(m, use_cache=False)
    assert [(b.id, b.reason) for b in report.bad] == [("g1", "permission denied")]


def test_option_dependent_checks(corpus):
    manifest, _ = corpus
    # Without channels=1 stereo is fine (averaged to mono) and only noted.
    report = validate_manifests(manifest, task="lite-ks", use_cache=False)
    assert STEREO_ID not in {b.id for b in report.bad}
    assert report.notes["2 channels averaged to mono"] == 1
    # Without a task the missing label is not a fault; without a max the 60 s clip is fine.
    report = validate_manifests(manifest, max_seconds=None)
    assert {"no_label", "long_60s"} <= {r.id for r in report.good_rows[str(manifest)]}
    # Allowed sample rates turn resampled files into faults.
    report = validate_manifests(manifest, sample_rates=[16000])
    reasons = {b.id: b.reason for b in report.bad}
    assert reasons["rate_8k"] == "sample rate 8000 Hz (expected 16000)"
    assert reasons["rate_44k"] == "sample rate 44100 Hz (expected 16000)"
    assert report.counts()["unexpected sample rate"] == 3


def test_slots_labels_need_every_slot(tmp_path):
    rows = _good(tmp_path, 4, label=False)
    for r, lab in zip(rows, ["on|lights|kitchen", "off|lamp|bedroom", "on|lights", "on||kitchen"]):
        r["label"] = lab
    report = validate_manifests(_manifest(tmp_path, rows), task="lite-ic")
    assert [(b.id, b.reason) for b in report.bad] == [("g2", "2 slots in label (expected 3)"),
                                                       ("g3", "empty slot in label")]


def test_duplicates_across_manifests_and_good_rows_filled(tmp_path):
    rows = _good(tmp_path, 2)
    a = _manifest(tmp_path, rows, "a.jsonl")
    b = _manifest(tmp_path, [rows[1]], "b.jsonl")
    report = validate_manifests([a, b])
    assert [(b_.manifest, b_.lineno, b_.reason) for b_ in report.bad] == [
        (str(b), 1, "duplicate id (first on a.jsonl:2)")]
    good = report.good_rows[str(a)]
    assert [r.id for r in good] == ["g0", "g1"]
    assert good[0].duration == pytest.approx(0.5) and good[0].sample_rate == 16000
    assert "2 manifests, 3 rows: 2 good, 1 bad (duplicate id: 1)" == report.summary()


def test_bad_options_and_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found: .*nope.jsonl"):
        validate_manifests(tmp_path / "nope.jsonl")
    m = _manifest(tmp_path, _good(tmp_path, 1))
    with pytest.raises(ValueError, match="min_seconds < max_seconds"):
        validate_manifests(m, min_seconds=5, max_seconds=1)
    with pytest.raises(KeyError, match="did you mean lite-ks"):
        validate_manifests(m, task="lite-kss")


def test_load_checked_rows_lists_every_bad_row(corpus, caplog):
    manifest, expected = corpus
    with pytest.raises(DataValidationError) as err:
        load_checked_rows(manifest, task="lite-ks", max_seconds=30.0)
    msg = str(err.value)
    bad = err.value.report.bad
    assert len(bad) == len(expected) - 1  # stereo is fine here: channels is not required
    for b in bad:
        assert f"{manifest}:{b.lineno}  " in msg and b.reason in msg
    assert "--skip-bad" in msg and "bad" in msg.splitlines()[-2]

    with caplog.at_level(logging.WARNING, logger="speechft.data.validate"):
        rows = load_checked_rows(manifest, task="lite-ks", max_seconds=30.0, skip_bad=True)
    assert all(isinstance(r, Utterance) for r in rows)
    assert STEREO_ID in {r.id for r in rows} and "nan" not in {r.id for r in rows}
    total = len(rows) + len(bad)
    assert f"skipped {len(bad)} of {total} rows in {manifest}: " in caplog.text
    assert "NaN/inf samples: 2" in caplog.text


def test_load_checked_rows_with_no_usable_row(tmp_path):
    m = _manifest(tmp_path, [{"id": "x", "audio": "missing.wav"}])
    with pytest.raises(DataValidationError, match="no usable rows"):
        load_checked_rows(m, skip_bad=True)


def test_rerun_uses_cache_but_rechecks_files(tmp_path, monkeypatch):
    rows = _good(tmp_path, 3)
    m = _manifest(tmp_path, rows)
    calls = []
    real_scan = validate_mod.scan_audio
    monkeypatch.setattr(validate_mod, "scan_audio", lambda p: calls.append(p) or real_scan(p))

    assert len(load_checked_rows(m)) == 3 and len(calls) == 3
    calls.clear()
    assert len(load_checked_rows(m, min_seconds=0.2)) == 3 and calls == []  # options re-applied, no re-read
    # A too-strict option works from cached facts too.
    assert validate_manifests(m, min_seconds=1.0).counts()["too short"] == 3 and calls == []
    # A deleted file is noticed without re-reading the others.
    os.unlink(tmp_path / "g2.wav")
    report = validate_manifests(m)
    assert [(b.id, b.reason) for b in report.bad] == [("g2", "missing file")] and calls == []
    # A changed file is re-read.
    write_audio(tmp_path / "g1.wav", sine(0.05))
    report = validate_manifests(m)
    assert [c.endswith("g1.wav") for c in calls] == [True]
    assert {b.id: b.reason for b in report.bad}["g1"] == "too short (0.05 s < 0.10 s)"


# -- CLI ----------------------------------------------------------------------------------------
def _cli(args):
    from speechft.cli import app

    return CliRunner().invoke(app, ["validate", *map(str, args)])


def test_cli_reports_each_bad_row(corpus):
    manifest, expected = corpus
    res = _cli([manifest, "--task", "lite-ks", "--channels", "1", "--max-seconds", "30"])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    bad_lines, summary = lines[:-1], lines[-1]
    bad_lines = [ln for ln in bad_lines if ln.startswith(str(manifest))]
    assert len(bad_lines) == len(expected)
    assert f"{manifest}:16  long_60s  " in res.output and "too long (60.0 s > 30.0 s)" in res.output
    assert any(ln.startswith(f"{manifest}:22  -  -  not valid JSON") for ln in bad_lines)
    assert f"{len(expected)} bad" in summary


def test_cli_good_manifest_and_usage_errors(tmp_path):
    m = _manifest(tmp_path, _good(tmp_path, 2))
    res = _cli([m, "--sample-rate", "16000", "--sample-rate", "8000", "--channels", "1"])
    assert res.exit_code == 0, res.output
    assert "1 manifest, 2 rows: 2 good, 0 bad" in res.output
    assert _cli([tmp_path / "missing.jsonl"]).exit_code == 2
    assert _cli([m, "--task", "no-such-task"]).exit_code == 2

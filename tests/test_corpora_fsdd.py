"""FSDD recipe on the real recordings beside the project: take-based splits, labels, clear errors."""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from speechft.corpora import fsdd
from speechft.data.manifest import read_manifest


@pytest.fixture(scope="module")
def fsdd_manifests(fsdd_root, tmp_path_factory):
    return fsdd.prepare(fsdd_root, tmp_path_factory.mktemp("fsdd"))["fsdd"]


def test_counts_labels_and_take_splits(fsdd_manifests):
    rows = {s: read_manifest(p) for s, p in fsdd_manifests.items()}
    assert {s: len(r) for s, r in rows.items()} == {"train": 2400, "dev": 300, "test": 300}
    takes = {"train": range(10, 50), "dev": range(5, 10), "test": range(0, 5)}
    for split, rs in rows.items():
        digits = Counter(r.label for r in rs)
        speakers = Counter(r.speaker for r in rs)
        assert sorted(digits) == [str(d) for d in range(10)] and len(set(digits.values())) == 1, split
        assert len(speakers) == 6 and len(set(speakers.values())) == 1, split
        for r in rs:
            digit, speaker, take = Path(r.audio).stem.split("_")
            assert (r.label, r.speaker) == (digit, speaker)
            assert int(take) in takes[split]
            assert r.sample_rate == 8000 and 0.1 < r.duration < 3.0
            assert os.path.isabs(r.audio) and Path(r.audio).is_file()
    # audio is referenced in place: the manifest stores absolute paths
    assert '"/' in fsdd_manifests["test"].read_text().splitlines()[0]


def test_bad_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"recordings"):
        fsdd.prepare(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="needs --root"):
        fsdd.prepare(None, tmp_path / "out")


def test_bad_file_name_is_named(fsdd_root, tmp_path):
    rec = tmp_path / "root" / "recordings"
    rec.mkdir(parents=True)
    os.symlink(fsdd_root / "recordings" / "3_theo_7.wav", rec / "3_theo_7.wav")
    os.symlink(fsdd_root / "recordings" / "3_theo_8.wav", rec / "three-theo.wav")
    with pytest.raises(ValueError, match=r"three-theo\.wav.*does not match"):
        fsdd.prepare(tmp_path / "root", tmp_path / "out")


def test_partial_copy_warns(fsdd_root, tmp_path, caplog):
    rec = tmp_path / "root" / "recordings"
    rec.mkdir(parents=True)
    for name in ("0_lucas_1.wav", "0_lucas_6.wav", "0_lucas_20.wav", "5_theo_49.wav"):
        os.symlink(fsdd_root / "recordings" / name, rec / name)
    with caplog.at_level(logging.WARNING, logger="speechft.corpora.fsdd"):
        out = fsdd.prepare(tmp_path / "root", tmp_path / "out")["fsdd"]
    assert "expected 3000" in caplog.text
    assert [r.id for r in read_manifest(out["train"])] == ["fsdd-0_lucas_20", "fsdd-5_theo_49"]
    assert read_manifest(out["dev"])[0].speaker == "lucas"


def test_cli_prepare_fsdd(fsdd_root, tmp_path):
    from typer.testing import CliRunner

    from speechft.cli import app

    res = CliRunner().invoke(app, ["prepare", "fsdd", "--root", str(fsdd_root), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "2400 rows" in res.output and (tmp_path / "fsdd" / "test.jsonl").exists()
    res = CliRunner().invoke(app, ["prepare", "fsdd", "--root", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "recordings" in res.output


def test_quick_size_keeps_every_speaker_and_digit(fsdd_root, tmp_path):
    m = fsdd.prepare(fsdd_root, tmp_path, size="quick")["fsdd"]
    rows = {s: read_manifest(p) for s, p in m.items()}
    assert {s: len(r) for s, r in rows.items()} == {"train": 240, "dev": 60, "test": 60}
    takes = {"train": range(10, 14), "dev": range(5, 6), "test": range(0, 1)}
    for split, rs in rows.items():
        assert len({r.label for r in rs}) == 10 and len({r.speaker for r in rs}) == 6, split
        assert all(int(Path(r.audio).stem.split("_")[2]) in takes[split] for r in rs)
    with pytest.raises(ValueError, match="FSDD size must be one of default, study, quick"):
        fsdd.prepare(fsdd_root, tmp_path / "x", size="tiny")


def test_quick_task_manifests_have_their_own_folder(fsdd_root, tmp_path, monkeypatch):
    from speechft.tasks import get_task

    monkeypatch.setenv("SPEECHFT_HOME", str(tmp_path))
    m = get_task("fsdd-ks").resolve_manifests(size="quick", fsdd_root=str(fsdd_root))
    assert m["train"] == tmp_path / "fsdd-quick" / "fsdd" / "train.jsonl"
    assert len(read_manifest(m["train"])) == 240

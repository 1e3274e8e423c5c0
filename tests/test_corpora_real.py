"""Real-corpus recipes on tiny fake trees in each corpus's standard layout (tests/fake_corpora.py)."""
from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

import fake_corpora as fake
from speechft.corpora import fluent, iemocap, librispeech, speechcommands, tedlium3, voxceleb1
from speechft.corpora.common import SPLITS, CorpusError, LayoutError
from speechft.corpora.registry import get_corpus
from speechft.data.manifest import read_manifest


def _read(paths: dict) -> dict:
    assert set(paths) == set(SPLITS)
    return {s: read_manifest(p) for s, p in paths.items()}


def _check_durations(rows):
    for r in rows:
        info = sf.info(r.audio)
        assert r.duration == pytest.approx(info.frames / info.samplerate, abs=1e-3)
        assert r.sample_rate == info.samplerate


# -- LibriSpeech ------------------------------------------------------------------------------------
def test_librispeech_asr_and_pr(tmp_path, caplog):
    tree = fake.make_librispeech(tmp_path / "src")
    with caplog.at_level(logging.WARNING, logger="speechft.corpora.librispeech"):
        out = get_corpus("librispeech").prepare(tree["root"], tmp_path / "out", lexicon=tree["lexicon"])
    assert set(out) == {"asr", "pr"}
    asr, pr = _read(out["asr"]), _read(out["pr"])
    subset_of = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
    for split, subset in subset_of.items():
        expected = tree["subsets"][subset]
        assert {r.id: r.text for r in asr[split]} == expected
        assert {r.id for r in pr[split]} == set(expected) - set(tree["oov"][subset])
        _check_durations(asr[split])
        assert all(Path(r.audio).is_absolute() and r.audio.endswith(".flac") for r in asr[split])
    assert (tmp_path / "out" / "asr" / "train.jsonl").exists()
    # phones: first pronunciation, stress digits stripped, word order kept
    row = next(r for r in pr["train"] if r.text == "HELLO WORLD")
    assert row.phones == "HH AH L OW W ER L D"
    row = next(r for r in pr["train"] if r.text == "IT'S A MODEL")
    assert row.phones == "IH T S AH M AA D AH L"
    assert not any(ch.isdigit() for r in pr["train"] for ch in r.phones)
    assert row.speaker == row.id.split("-")[0]
    # the utterance with an OOV word is skipped and reported by name
    assert "skipped 1 of" in caplog.text and fake.LIBRI_OOV in caplog.text


def test_librispeech_without_lexicon_and_extra_train(tmp_path, caplog):
    tree = fake.make_librispeech(tmp_path / "src")
    with caplog.at_level(logging.INFO, logger="speechft.corpora.librispeech"):
        out = librispeech.prepare(tmp_path / "src", tmp_path / "out",  # parent of LibriSpeech/ also works
                                  train_subsets="train-clean-100,train-clean-360")
    assert set(out) == {"asr"} and not (tmp_path / "out" / "pr").exists()
    assert "needs a lexicon" in caplog.text
    train = read_manifest(out["asr"]["train"])
    expected = {**tree["subsets"]["train-clean-100"], **tree["subsets"]["train-clean-360"]}
    assert {r.id: r.text for r in train} == expected


def test_librispeech_layout_errors(tmp_path):
    tree = fake.make_librispeech(tmp_path / "src")
    with pytest.raises(LayoutError, match=r"LibriSpeech root .*: no train-clean-500/ folder \(expected the standard layout"):
        librispeech.prepare(tree["root"], tmp_path / "out", train_subsets=["train-clean-500"])
    with pytest.raises(LayoutError, match="lexicon .*nope.txt not found"):
        librispeech.prepare(tree["root"], tmp_path / "out", lexicon=tmp_path / "nope.txt")
    with pytest.raises(LayoutError, match="does not exist"):
        librispeech.prepare(tmp_path / "missing", tmp_path / "out")
    bad = tmp_path / "bad.txt"
    bad.write_text("HELLO HH AH0\nWORLD\n")
    with pytest.raises(CorpusError, match=r"bad.txt:2: expected 'WORD PH1 PH2"):
        librispeech.read_lexicon(bad)
    flac = next((tree["root"] / "dev-clean").rglob("*.flac"))
    flac.unlink()
    with pytest.raises(LayoutError, match=f"audio {flac.name} not found"):
        librispeech.prepare(tree["root"], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written on a layout error


def test_strip_stress():
    assert [librispeech.strip_stress(p) for p in ("AH0", "EY1", "ER2", "K")] == ["AH", "EY", "ER", "K"]


# -- Speech Commands ----------------------------------------------------------------------------------
def _silence_counts(with_test: bool) -> Counter:
    n = int(fake.SC_NOISE_SECONDS)  # one-second clips, hop 1 s
    per_file = Counter(dev=max(1, n // 10), test=max(1, n // 10) if with_test else 0)
    per_file["train"] = n - per_file["dev"] - per_file["test"]
    return Counter({s: c * len(fake.SC_NOISES) for s, c in per_file.items()})


def test_speechcommands_fallback_test_list(tmp_path):
    tree = fake.make_speechcommands(tmp_path / "src")
    out = speechcommands.prepare(tree["root"], tmp_path / "out")
    m = _read(out["ks"])
    silence = _silence_counts(with_test=True)
    for split in SPLITS:
        labels = Counter(r.label for r in m[split])
        expected = tree["splits"][split] + Counter({"_silence_": silence[split]})
        assert labels == expected, split
        assert set(labels) <= set(speechcommands.CLASSES)
        _check_durations(m[split])
    clips = [r for r in m["train"] if r.label == "_silence_"]
    assert len(clips) == silence["train"] > 0
    assert all(Path(r.audio).is_relative_to(tmp_path / "out" / "ks" / "silence") for r in clips)
    assert all(sf.info(r.audio).frames == 16000 for r in clips)
    # the official lists decide the split of each word file
    dev_ids = {r.id for r in m["dev"] if r.label != "_silence_"}
    listed = (tree["root"] / "validation_list.txt").read_text().split()
    assert dev_ids == {x.removesuffix(".wav") for x in listed}
    # re-running reuses the clips and gives the same manifests
    before = {s: out["ks"][s].read_text() for s in SPLITS}
    out2 = speechcommands.prepare(tree["root"], tmp_path / "out")
    assert {s: out2["ks"][s].read_text() for s in SPLITS} == before


def test_speechcommands_separate_test_set(tmp_path):
    tree = fake.make_speechcommands(tmp_path / "src", with_test_set=True)
    out = speechcommands.prepare(tree["root"], tmp_path / "out", test_root=tree["test_root"])
    m = _read(out["ks"])
    assert Counter(r.label for r in m["test"]) == tree["test_set"]
    assert all(str(tree["test_root"]) in r.audio for r in m["test"])
    silence = _silence_counts(with_test=False)
    assert Counter(r.label for r in m["train"]) == tree["splits"]["train"] + Counter({"_silence_": silence["train"]})
    # files of testing_list.txt are not used when the separate test set is given
    listed = {x.removesuffix(".wav") for x in (tree["root"] / "testing_list.txt").read_text().split()}
    assert not listed & {r.id for s in SPLITS for r in m[s]}


def test_speechcommands_layout_errors(tmp_path):
    tree = fake.make_speechcommands(tmp_path / "src")
    (tree["root"] / "testing_list.txt").unlink()
    with pytest.raises(LayoutError, match="testing_list.txt not found"):
        speechcommands.prepare(tree["root"], tmp_path / "out")
    with pytest.raises(LayoutError, match="test set .*nowhere: does not exist"):
        speechcommands.prepare(tree["root"], tmp_path / "out", test_root=tmp_path / "nowhere")


# -- VoxCeleb1 ----------------------------------------------------------------------------------------
def test_voxceleb1_iden_split(tmp_path):
    tree = fake.make_voxceleb1(tmp_path / "src")
    out = get_corpus("voxceleb1").prepare(tree["root"], tmp_path / "out")
    m = _read(out["sid"])
    for split in SPLITS:
        assert {r.id: r.speaker for r in m[split]} == tree["splits"][split]
        _check_durations(m[split])


def test_voxceleb1_errors(tmp_path):
    tree = fake.make_voxceleb1(tmp_path / "src", write_split=False)
    with pytest.raises(LayoutError, match=r"iden_split.txt not found .*robots.ox.ac.uk"):
        voxceleb1.prepare(tree["root"], tmp_path / "out")
    split = tmp_path / "my_split.txt"
    split.write_text("\n".join(tree["lines"]) + "\n")
    out = voxceleb1.prepare(tree["root"], tmp_path / "out", iden_split=split)
    assert len(read_manifest(out["sid"]["test"])) == len(tree["splits"]["test"])
    split.write_text("\n".join(tree["lines"] + ["1 id10009/abc/00001.wav"]) + "\n")
    with pytest.raises(LayoutError, match="1 of 13 files listed .*id10009/abc/00001.wav"):
        voxceleb1.prepare(tree["root"], tmp_path / "out", iden_split=split)
    out = voxceleb1.prepare(tree["root"], tmp_path / "out", iden_split=split, skip_missing=True)
    assert len(read_manifest(out["sid"]["train"])) == len(tree["splits"]["train"])
    split.write_text("4 id10001/1zcIwhmdeo4/00001.wav\n")
    with pytest.raises(CorpusError, match="my_split.txt:1: expected"):
        voxceleb1.prepare(tree["root"], tmp_path / "out", iden_split=split)


# -- IEMOCAP --------------------------------------------------------------------------------------------
def test_iemocap_folds(tmp_path):
    tree = fake.make_iemocap(tmp_path / "src")
    out = get_corpus("iemocap").prepare(tree["root"], tmp_path / "out")
    assert set(out) == {f"fold{k}" for k in range(1, 6)}
    kept = {k: {u: lab for u, lab in utts.items() if lab is not None} for k, utts in tree["sessions"].items()}
    for k in range(1, 6):
        m = _read(out[f"fold{k}"])
        assert {r.id: r.label for r in m["test"]} == kept[k]
        train_dev = {r.id: r.label for s in ("train", "dev") for r in m[s]}
        assert train_dev == {u: lab for j in range(1, 6) if j != k for u, lab in kept[j].items()}
        assert {r.label for s in SPLITS for r in m[s]} <= {"neu", "hap", "ang", "sad"}
        # dev = every 5th training dialog, so dialogs never straddle train and dev
        dialogs = sorted(d for j in range(1, 6) if j != k for d in tree["dialogs"][j])
        dev_dialogs = {r.id.rsplit("_", 1)[0] for r in m["dev"]}
        assert dev_dialogs == set(dialogs[4::5])
        assert not dev_dialogs & {r.id.rsplit("_", 1)[0] for r in m["train"]}
        _check_durations(m["test"])
    row = read_manifest(out["fold1"]["test"])[0]
    assert row.speaker == "Ses01" + row.id.rsplit("_", 1)[1][0]
    # exc is merged into hap: each dialog has one hap and one exc utterance
    assert Counter(r.label for r in read_manifest(out["fold2"]["test"]))["hap"] == 2 * len(tree["dialogs"][2])


def test_iemocap_single_fold_and_errors(tmp_path):
    tree = fake.make_iemocap(tmp_path / "src")
    out = iemocap.prepare(tree["root"], tmp_path / "out", fold=3)
    assert set(out) == {"fold3"} and not (tmp_path / "out" / "fold1").exists()
    with pytest.raises(ValueError, match="fold must be one of 1-5"):
        iemocap.prepare(tree["root"], tmp_path / "out", fold=6)
    ev = tree["root"] / "Session4" / "dialog" / "EmoEvaluation" / "Ses04F_impro01.txt"
    ev.write_text(ev.read_text().replace("[0.0000 - 2.1000]", "[0.0000 to 2.1000]"))
    with pytest.raises(CorpusError, match="Ses04F_impro01.txt:3: expected"):
        iemocap.prepare(tree["root"], tmp_path / "out")
    shutil.rmtree(tree["root"] / "Session5" / "sentences")
    with pytest.raises(LayoutError, match="no Session5/sentences/wav/ folder"):
        iemocap.prepare(tree["root"], tmp_path / "out", fold=1)


# -- Fluent Speech Commands -------------------------------------------------------------------------------
def test_fluent_official_splits(tmp_path):
    tree = fake.make_fluent(tmp_path / "src")
    out = get_corpus("fluent").prepare(tree["root"], tmp_path / "out")
    m = _read(out["ic"])
    for split in SPLITS:
        assert {r.id: (r.label, r.text, r.speaker) for r in m[split]} == tree["splits"][split]
        _check_durations(m[split])
    assert all(len(r.label.split("|")) == 3 for s in SPLITS for r in m[s])


def test_fluent_errors(tmp_path):
    tree = fake.make_fluent(tmp_path / "src")
    csv_path = tree["root"] / "data" / "valid_data.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("location", "place"))
    with pytest.raises(CorpusError, match="valid_data.csv: missing columns location"):
        fluent.prepare(tree["root"], tmp_path / "out")
    csv_path.unlink()
    with pytest.raises(LayoutError, match="valid_data.csv not found"):
        fluent.prepare(tree["root"], tmp_path / "out")


# -- TED-LIUM 3 ----------------------------------------------------------------------------------------------
def test_tedlium_normalization():
    norm = tedlium3.normalize_text
    kept = [(raw, expected) for _, _, raw, expected in fake.TED_SEGMENTS if raw != tedlium3.IGNORE]
    assert 0 < len(kept) < len(fake.TED_SEGMENTS)  # the ignored one is skipped before normalisation
    for raw, expected in kept:
        assert norm(raw) == (expected or "")
    assert norm("they 're  here   <unk> ( 2 ) (2)") == "THEY'RE HERE"  # digits and brackets go
    assert norm("rock ' n ' roll") == "ROCK N ROLL"
    assert norm("'cause i said so") == "'CAUSE I SAID SO"


def test_tedlium3_segments(tmp_path):
    tree = fake.make_tedlium3(tmp_path / "src")
    out = get_corpus("tedlium3").prepare(tmp_path / "src", tmp_path / "out")
    m = _read(out["asr"])
    for split in SPLITS:
        expected = {(talk, round(s, 2), round(e, 2), text)
                    for talk, segs in tree["splits"][split].items() for s, e, text in segs}
        got = set()
        for r in m[split]:
            talk, start, end = r.id.rsplit("-", 2)
            got.add((talk, int(start) / 100, int(end) / 100, r.text))
            assert r.speaker == talk
            assert Path(r.audio).is_relative_to(tmp_path / "out" / "asr" / "wav" / split / talk)
            info = sf.info(r.audio)
            assert info.samplerate == 16000 and info.frames == round((int(end) - int(start)) / 100 * 16000)
        assert got == expected
        _check_durations(m[split])
    # the manifest stores the clips relative to its folder (they live under out_dir)
    assert '"audio": "wav/train/' in out["asr"]["train"].read_text()


def test_tedlium3_resamples_and_errors(tmp_path):
    tree = fake.make_tedlium3(tmp_path / "src", sphere_sr=8000)
    out = tedlium3.prepare(tree["root"] / "legacy", tmp_path / "out")  # the legacy folder itself
    row = read_manifest(out["asr"]["dev"])[0]
    assert sf.info(row.audio).samplerate == 16000 and row.sample_rate == 16000
    (tree["root"] / "legacy" / "test" / "sph" / "BillGates_2010.sph").unlink()
    with pytest.raises(LayoutError, match="BillGates_2010.stm has no audio .*BillGates_2010.sph"):
        tedlium3.prepare(tree["root"], tmp_path / "out")
    shutil.rmtree(tree["root"] / "legacy" / "dev" / "stm")
    with pytest.raises(LayoutError, match=r"no dev/stm/ folder"):
        tedlium3.prepare(tree["root"], tmp_path / "out")


def test_tedlium3_10h_subset_keeps_1_to_60_s_without_unk(tmp_path):
    """The official fine-tuning subset: only utterances in the duration range whose raw transcript has
    no <unk>, up to the hours asked for; dev and test are the full splits."""
    tree = fake.make_tedlium3(tmp_path / "src")
    out = tedlium3.prepare(tree["root"], tmp_path / "out", subset_min_seconds=0.5)
    small, full = _read(out["asr-10h"]), _read(out["asr"])
    # per talk: segment 0.10-0.90 has <unk>, 1.70-2.50 does not; both are 0.8 s
    assert {r.text for r in small["train"]} == {"TWENTY ONE PEOPLE DON'T KNOW"} and len(small["train"]) == 2
    assert [r.id for r in small["dev"]] == [r.id for r in full["dev"]]
    tiny = tedlium3.prepare(tree["root"], tmp_path / "out2", subset_hours=0.8 / 3600, subset_min_seconds=0.5)
    assert len(_read(tiny["asr-10h"])["train"]) == 1  # stops once the hours are reached
    # nothing eligible (every segment is under 1 s): the full subset is still written
    assert set(tedlium3.prepare(tree["root"], tmp_path / "out3")) == {"asr"}

"""Tiny fake copies of real corpora, in exactly their standard on-disk layouts.

Each ``make_*`` writes a few short synthetic waves (0.3-0.5 s tones/noise) with the real file
names and index files, and returns what it wrote (ids, labels, splits), so tests compare the
recipes' manifests against the tree itself rather than against numbers typed by hand.
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def tone(seconds: float = 0.3, seed: int = 0, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    freq = 150 + 50 * (seed % 8)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def _wav(path: Path, seconds: float = 0.3, seed: int = 0, fmt: str | None = None, sr: int = SR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, seed, sr), sr, subtype="PCM_16", format=fmt)


# -- LibriSpeech ------------------------------------------------------------------------------------
LIBRI_LEXICON = """;;; a comment line like those of some lexicon files
HELLO HH AH0 L OW1
HELLO HH EH0 L OW1
WORLD W ER1 L D
SPEECH S P IY1 CH
IT'S IH1 T S
A AH0
MODEL M AA1 D AH0 L
"""
LIBRI_SENTENCES = ["HELLO WORLD", "A SPEECH MODEL", "IT'S A MODEL", "HELLO SPEECH WORLD"]
LIBRI_OOV = "ZYZZYVA"


def make_librispeech(root: Path) -> dict:
    """``root/LibriSpeech/{train-clean-100,train-clean-360,dev-clean,test-clean}/<spk>/<chapter>/``.

    Returns ``{"root", "subsets": {subset: {utt id: text}}, "oov": {subset: [ids with an OOV word]}}``.
    One train-clean-100 utterance contains a word missing from :data:`LIBRI_LEXICON`.
    """
    base = root / "LibriSpeech"
    layout = {"train-clean-100": [("19", "198"), ("26", "495")], "train-clean-360": [("100", "121669")],
              "dev-clean": [("84", "121123")], "test-clean": [("61", "70968")]}
    subsets, oov, seed = {}, {}, 0
    for subset, chapters in layout.items():
        subsets[subset], oov[subset] = {}, []
        for spk, chap in chapters:
            folder = base / subset / spk / chap
            lines = []
            for n in range(3):
                utt = f"{spk}-{chap}-{n:04d}"
                text = LIBRI_SENTENCES[(seed + n) % len(LIBRI_SENTENCES)]
                if subset == "train-clean-100" and spk == "26" and n == 1:
                    text = f"HELLO {LIBRI_OOV} WORLD"
                    oov[subset].append(utt)
                _wav(folder / f"{utt}.flac", 0.3 + 0.1 * n, seed=seed + n, fmt="FLAC")
                lines.append(f"{utt} {text}")
                subsets[subset][utt] = text
            (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
            seed += 1
    lexicon = root / "librispeech-lexicon.txt"
    lexicon.write_text(LIBRI_LEXICON)
    return {"root": base, "subsets": subsets, "oov": oov, "lexicon": lexicon}


# -- Speech Commands v0.01 ----------------------------------------------------------------------------
SC_WORDS = ("yes", "no", "go", "bed", "cat")  # bed/cat are not among the 10 commands -> _unknown_
SC_NOISE_SECONDS = 3.2  # -> 3 one-second clips per noise file
SC_NOISES = ("white_noise", "running_tap")


def make_speechcommands(root: Path, with_test_set: bool = False) -> dict:
    """``root/speech_commands_v0.01/<word>/<hash>_nohash_<n>.wav`` + index files + noise.

    Returns ``{"root", "splits": {split: Counter(label)}, "test_root", "test_set": Counter}``.
    """
    base = root / "speech_commands_v0.01"
    files = {}
    for w, word in enumerate(SC_WORDS):
        for i in range(4):
            name = f"{w:02x}{i:02x}c0de_nohash_{i % 2}.wav"
            _wav(base / word / name, 0.5, seed=w * 10 + i)
            files[f"{word}/{name}"] = word
    keys = sorted(files)
    val = [k for i, k in enumerate(keys) if i % 4 == 1]
    test = [k for i, k in enumerate(keys) if i % 4 == 2]
    (base / "validation_list.txt").write_text("\n".join(val) + "\n")
    (base / "testing_list.txt").write_text("\n".join(test) + "\n")
    for j, name in enumerate(SC_NOISES):
        _wav(base / "_background_noise_" / f"{name}.wav", SC_NOISE_SECONDS, seed=100 + j)
    (base / "_background_noise_" / "README.md").write_text("noise files\n")
    label = {k: (v if v in ("yes", "no", "go") else "_unknown_") for k, v in files.items()}
    splits = {"train": Counter(label[k] for k in keys if k not in val and k not in test),
              "dev": Counter(label[k] for k in val), "test": Counter(label[k] for k in test)}
    out = {"root": base, "splits": splits, "test_root": None, "test_set": None}
    if with_test_set:
        troot = root / "speech_commands_test_set_v0.01"
        test_set = Counter()
        for c, cls in enumerate(("yes", "no", "_silence_", "_unknown_")):
            for i in range(2):
                _wav(troot / cls / f"{c:02x}{i:02x}beef_nohash_0.wav", 0.5, seed=200 + c * 10 + i)
                test_set[cls] += 1
        out.update(test_root=troot, test_set=test_set)
    return out


# -- VoxCeleb1 ------------------------------------------------------------------------------------------
def make_voxceleb1(root: Path, write_split: bool = True) -> dict:
    """``root/VoxCeleb1/wav/<id>/<video>/<utt>.wav`` + ``iden_split.txt``; returns ``{"root", "splits": {split: {id: spk}}}``."""
    base = root / "VoxCeleb1"
    lines, splits = [], {"train": {}, "dev": {}, "test": {}}
    codes = {1: "train", 2: "dev", 3: "test"}
    for s, spk in enumerate(("id10001", "id10002", "id10003")):
        for v, video in enumerate(("1zcIwhmdeo4", f"Y8hIVOBuel-{s}")):
            for u in range(2):
                rel = f"{spk}/{video}/{u + 1:05d}.wav"
                _wav(base / "wav" / rel, 0.3, seed=s * 10 + v * 2 + u)
                code = 1 if v == 0 else 2 + u  # video 0 -> train, video 1 -> one dev, one test
                lines.append(f"{code} {rel}")
                splits[codes[code]][rel.removesuffix(".wav").replace("/", "-")] = spk
    if write_split:
        (base / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return {"root": base, "splits": splits, "lines": lines}


# -- IEMOCAP ---------------------------------------------------------------------------------------------
IEMOCAP_CATEGORIES = ("neu", "exc", "fru", "ang", "sad", "hap", "xxx")


def make_iemocap(root: Path) -> dict:
    """``root/IEMOCAP_full_release/Session{1..5}/{sentences/wav,dialog/EmoEvaluation}``.

    Two dialogs per session, each with one utterance per category of :data:`IEMOCAP_CATEGORIES`
    (fru/xxx must be dropped, exc merged into hap). Returns ``{"root", "sessions": {k: {utt: label}},
    "dialogs": {k: [dialog]}}`` where label is the 4-class label or None (dropped).
    """
    base = root / "IEMOCAP_full_release"
    merged = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
    sessions, dialogs = {}, {}
    for k in range(1, 6):
        sessions[k], dialogs[k] = {}, []
        for d, dialog in enumerate((f"Ses0{k}F_impro01", f"Ses0{k}M_script01_1")):
            dialogs[k].append(dialog)
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for i, cat in enumerate(IEMOCAP_CATEGORIES):
                utt = f"{dialog}_{'FM'[i % 2]}{i:03d}"
                _wav(base / f"Session{k}" / "sentences" / "wav" / dialog / f"{utt}.wav", 0.3, seed=k + d + i)
                lines += [f"[{i * 2.5:.4f} - {i * 2.5 + 2.1:.4f}]\t{utt}\t{cat}\t[2.5000, 3.0000, 2.5000]",
                          "C-E1:\tNeutral;\t()", "A-E2:\tval 3; act 2; dom  2;\t()", ""]
                sessions[k][utt] = merged.get(cat)
            ev = base / f"Session{k}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            ev.parent.mkdir(parents=True, exist_ok=True)
            ev.write_text("\n".join(lines) + "\n")
        (base / f"Session{k}" / "dialog" / "EmoEvaluation" / "Categorical").mkdir(exist_ok=True)
    return {"root": base, "sessions": sessions, "dialogs": dialogs}


# -- Fluent Speech Commands ---------------------------------------------------------------------------------
FLUENT_INTENTS = [("activate", "lights", "kitchen", "Turn on the lights in the kitchen"),
                  ("deactivate", "music", "none", "Stop the music"),
                  ("increase", "volume", "none", "Louder please"),
                  ("change language", "Chinese", "none", "Switch to Chinese")]


def make_fluent(root: Path) -> dict:
    """``root/fluent_speech_commands_dataset/{data/*_data.csv, wavs/speakers/<spk>/*.wav}``.

    Returns ``{"root", "splits": {split: {id: (label, text, speaker)}}}``.
    """
    base = root / "fluent_speech_commands_dataset"
    sizes = {"train": ("train_data.csv", 6), "dev": ("valid_data.csv", 3), "test": ("test_data.csv", 3)}
    splits, n = {}, 0
    for split, (name, count) in sizes.items():
        splits[split] = {}
        rows = []
        for i in range(count):
            spk = ("2BqVo8kVB2Skwgyb", "4aGjX3AG5xcxeL7a")[n % 2]
            uuid = f"{n:08x}-4474-11e9-a9a5-5dbec3b8816a"
            rel = f"wavs/speakers/{spk}/{uuid}.wav"
            _wav(base / rel, 0.3, seed=n)
            action, obj, loc, text = FLUENT_INTENTS[n % len(FLUENT_INTENTS)]
            rows.append([i, rel, spk, text, action, obj, loc])
            splits[split][f"{spk}/{uuid}"] = ("|".join((action, obj, loc)), text, spk)
            n += 1
        (base / "data").mkdir(parents=True, exist_ok=True)
        with open(base / "data" / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            w.writerows(rows)
    return {"root": base, "splits": splits}


# -- TED-LIUM 3 -------------------------------------------------------------------------------------------
TED_SEGMENTS = [  # (start, end, raw stm transcript, expected normalised text or None = skipped)
    (0.10, 0.90, "so it 's a <unk> story we 're telling", "SO IT'S A STORY WE'RE TELLING"),
    (1.00, 1.60, "ignore_time_segment_in_scoring", None),
    (1.70, 2.50, "twenty-one {NOISE} people don 't know", "TWENTY ONE PEOPLE DON'T KNOW"),
    (2.60, 2.90, "<unk>", None),
]
TED_SECONDS = 3.0


def make_tedlium3(root: Path, sphere_sr: int = SR) -> dict:
    """``root/TEDLIUM_release-3/legacy/{train,dev,test}/{sph,stm}`` with NIST SPHERE audio.

    Returns ``{"root", "splits": {split: {talk: [(start, end, text)]}}}`` of the kept segments.
    """
    base = root / "TEDLIUM_release-3"
    talks = {"train": ["AaronHuey_2010X", "AlGore_2009"], "dev": ["JamesCameron_2010"], "test": ["BillGates_2010"]}
    splits = {}
    for split, names in talks.items():
        splits[split] = {}
        for t, talk in enumerate(names):
            _wav(base / "legacy" / split / "sph" / f"{talk}.sph", TED_SECONDS, seed=t, fmt="NIST", sr=sphere_sr)
            lines = [";; comment line"]
            for start, end, raw, _ in TED_SEGMENTS:
                lines.append(f"{talk} 1 {talk} {start:.2f} {end:.2f} <o,f0,male> {raw}")
            stm = base / "legacy" / split / "stm" / f"{talk}.stm"
            stm.parent.mkdir(parents=True, exist_ok=True)
            stm.write_text("\n".join(lines) + "\n")
            splits[split][talk] = [(s, e, norm) for s, e, _, norm in TED_SEGMENTS if norm is not None]
    return {"root": base, "splits": splits}

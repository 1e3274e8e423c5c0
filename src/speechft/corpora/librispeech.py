"""LibriSpeech for SUPERB PR (phones) and ASR (characters).

Layout (as distributed by openslr.org/12, extracted): ``LibriSpeech/<subset>/<speaker>/<chapter>/``
holding ``<speaker>-<chapter>-<utt>.flac`` and ``<speaker>-<chapter>.trans.txt`` (lines
``<speaker>-<chapter>-<utt> UPPER CASE WORDS``). Splits as in SUPERB: train = train-clean-100
(option ``train_subsets`` adds e.g. train-clean-360), dev = dev-clean, test = test-clean.

Subsets written:
  asr  ``text`` = the transcript as distributed (upper case, apostrophes kept)
  pr   ``phones`` = the words looked up in a pronunciation lexicon (``lexicon=PATH``, lines
       ``WORD PH1 PH2 ...`` like librispeech-lexicon.txt); ARPAbet stress digits are stripped
       (``AH0`` -> ``AH``) as SUPERB's PR does, the first pronunciation of a word is used, and an
       utterance with a word missing from the lexicon is skipped (counted and reported).
Audio stays in place (absolute paths in the manifests).
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from ..data.manifest import Utterance
from .common import (
    SPLITS, CorpusError, LayoutError, as_list, check_root, examples, find_nested_root, most_common, progress,
    read_text_lines, require_dir, require_file, with_durations, write_subset,
)

log = logging.getLogger(__name__)

CORPUS = "LibriSpeech"
LAYOUT = "LibriSpeech/<subset>/<speaker>/<chapter>/*.flac + <speaker>-<chapter>.trans.txt"
DEFAULT_SUBSETS = {"train": ("train-clean-100",), "dev": ("dev-clean",), "test": ("test-clean",)}
_STRESS = re.compile(r"\d+$")


def strip_stress(phone: str) -> str:
    """ARPAbet stress marker removed: ``AH0`` -> ``AH``, ``EY1`` -> ``EY``, ``K`` -> ``K``."""
    return _STRESS.sub("", phone)


def read_lexicon(path) -> dict[str, list[str]]:
    """``WORD PH1 PH2 ...`` per line -> ``{WORD: [PH1, ...]}`` (upper-cased words, stress stripped).

    The first pronunciation of a word wins; blank lines and ``;;;`` comments are ignored; a line
    with a word but no phones raises :class:`CorpusError` naming file and line.
    """
    path = Path(path).expanduser()
    require_file(path, CORPUS, "lexicon", "expected lines 'WORD PH1 PH2 ...' like librispeech-lexicon.txt")
    lexicon: dict[str, list[str]] = {}
    for lineno, line in read_text_lines(path):
        if line.startswith(";;;"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise CorpusError(f"{path}:{lineno}: expected 'WORD PH1 PH2 ...', got {line!r}")
        word = parts[0].upper()
        if word not in lexicon:
            lexicon[word] = [p for p in (strip_stress(x) for x in parts[1:]) if p]
    if not lexicon:
        raise CorpusError(f"{path}: lexicon has no entries")
    log.info("lexicon %s: %d words", path, len(lexicon))
    return lexicon


def to_phones(text: str, lexicon: dict[str, list[str]]) -> tuple[Optional[str], list[str]]:
    """``(space-separated phones, [])`` or ``(None, missing words)``."""
    phones, missing = [], []
    for word in text.split():
        pron = lexicon.get(word.upper())
        if pron is None:
            missing.append(word)
        else:
            phones.extend(pron)
    return (None, missing) if missing else (" ".join(phones), [])


def scan_subset(root: Path, subset: str) -> list[Utterance]:
    """Rows (id, audio, text, speaker) of one LibriSpeech subset folder, in sorted order."""
    folder = require_dir(root, subset, CORPUS, LAYOUT)
    trans_files = sorted(folder.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise LayoutError(f"{CORPUS} root {root}: {subset}/ has no <speaker>/<chapter>/*.trans.txt (expected {LAYOUT})")
    rows = []
    for trans in progress(trans_files, desc=f"{subset}: transcripts", unit="chapter"):
        speaker = trans.parent.parent.name
        for lineno, line in read_text_lines(trans):
            parts = line.split(maxsplit=1)
            if len(parts) < 2:
                raise CorpusError(f"{trans}:{lineno}: expected '<utterance id> TRANSCRIPT', got {line!r}")
            utt_id, text = parts
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                raise LayoutError(f"{trans}:{lineno}: audio {audio.name} not found in {trans.parent}")
            rows.append(Utterance(id=utt_id, audio=str(audio), text=" ".join(text.split()), speaker=speaker))
    return rows


def prepare(root, out_dir, lexicon=None, train_subsets: Sequence[str] | str = DEFAULT_SUBSETS["train"],
            dev_subsets: Sequence[str] | str = DEFAULT_SUBSETS["dev"],
            test_subsets: Sequence[str] | str = DEFAULT_SUBSETS["test"]) -> dict[str, dict[str, Path]]:
    """Write ``asr`` (and with ``lexicon``, ``pr``) manifests; returns ``{subset: {split: path}}``."""
    chosen = {"train": as_list(train_subsets, "train_subsets"), "dev": as_list(dev_subsets, "dev_subsets"),
              "test": as_list(test_subsets, "test_subsets")}
    root = find_nested_root(check_root(root, CORPUS, LAYOUT), chosen["dev"][0], ("LibriSpeech",))
    out_dir = Path(out_dir)
    for split in SPLITS:  # check the whole layout before the long scans
        for subset in chosen[split]:
            require_dir(root, subset, CORPUS, LAYOUT)
    lex = read_lexicon(lexicon) if lexicon is not None else None

    asr: dict[str, list[Utterance]] = {}
    for split in SPLITS:
        rows = [r for subset in chosen[split] for r in scan_subset(root, subset)]
        asr[split] = with_durations(rows, desc=f"{CORPUS} {split}")
    result = {"asr": write_subset(out_dir, "asr", asr, f"{CORPUS} {root}")}

    if lex is None:
        log.info("%s: wrote only the asr subset; phone recognition (pr) needs a lexicon: "
                 "speechft prepare librispeech --root %s --lexicon librispeech-lexicon.txt", CORPUS, root)
        return result
    pr: dict[str, list[Utterance]] = {}
    for split in SPLITS:
        kept, missing_words, skipped = [], Counter(), 0
        for row in asr[split]:
            phones, missing = to_phones(row.text, lex)
            if phones is None:
                skipped += 1
                missing_words.update(missing)
            else:
                kept.append(replace(row, phones=phones))
        if skipped:
            log.warning("%s %s: skipped %d of %d utterances with words missing from lexicon %s; most frequent: %s",
                        CORPUS, split, skipped, len(asr[split]), lexicon, most_common(missing_words))
        if not kept:
            raise CorpusError(f"{CORPUS} {split}: every utterance has words missing from lexicon {lexicon} "
                              f"(e.g. {examples(w for w, _ in missing_words.most_common(5))}); is it a LibriSpeech lexicon?")
        pr[split] = kept
    result["pr"] = write_subset(out_dir, "pr", pr, f"{CORPUS} {root}")
    return result

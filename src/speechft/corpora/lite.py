"""The built-in synthetic benchmark ("lite" tasks), synthesised with espeak-ng from a seed.

``prepare(out_dir, size, seed)`` writes ``out_dir/<task>/{train,dev,test}.jsonl`` and the audio
under ``out_dir/<task>/wav/`` (16 kHz mono PCM) for seven tasks:

============  ===================================  ============  ==================================
task          what is spoken                        target        voices
============  ===================================  ============  ==================================
lite-pr       English grammar sentences             ``phones``    content split (below)
lite-asr      English grammar sentences             ``text``      content split
lite-ks       10 commands, other words, noise       ``label``     content split
lite-ic       30 home-assistant intents             ``label``     content split
lite-lid      phrases/numbers in 10 languages       ``language``  content split
lite-sid      English sentences                     ``speaker``   10 voices, all in every split
lite-style    English sentences, pitch x rate       ``label``     content split
============  ===================================  ============  ==================================

Content split: the espeak voice variants are shuffled by the seed; 12 are test-only, 8 dev-only,
the rest (~80) train-only, so test voices are never heard in training. Sentences of pr/asr/sid/style
are distinct across splits; ks/ic/lid reuse their small vocabularies in every split (as the real
corpora do) and differ by voice. Every class is in train (labels are dealt round-robin).

Everything is a pure function of ``(size, seed, VERSION, espeak-ng version)``: each task folder is
built in a temporary folder and renamed into place with a ``stamp.json`` naming that config, so an
interrupted run is never mistaken for a complete one; a matching stamp is a cache hit.
"""
from __future__ import annotations

import json
import logging
import random
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ..data.audio import TARGET_SR
from ..data.manifest import Utterance, write_manifest
from ..utils.io import atomic_dir, atomic_write_json
from ..utils.names import UnknownNameError, unknown_name
from . import espeak, text

log = logging.getLogger(__name__)

VERSION = 1  # bump whenever the generated data changes for the same (size, seed)
SPLITS = ("train", "dev", "test")
TASKS = ("lite-pr", "lite-asr", "lite-ks", "lite-sid", "lite-lid", "lite-ic", "lite-style")
ENGLISH_VOICE = "en-us"
# Variants left out: whispers have no pitch (style classes need one); "fast" is a speed preset.
EXCLUDED_VARIANTS = frozenset({"whisper", "whisperf", "fast"})
N_TEST_VOICES, N_DEV_VOICES, N_SID_VOICES = 12, 8, 10
NOISE_FLOOR = 1e-4  # dither: no digitally silent stretches (log features of exact zeros misbehave)
STYLE_CLASSES = {  # label -> (pitch range, words-per-minute range)
    "low-slow": ((10, 30), (105, 130)), "low-fast": ((10, 30), (215, 250)),
    "high-slow": ((70, 90), (105, 130)), "high-fast": ((70, 90), (215, 250)),
}


@dataclass(frozen=True)
class Size:
    train: int
    dev: int
    test: int
    min_words: int  # sentence length of the English-sentence tasks
    max_words: int


SIZES = {
    "quick": Size(40, 15, 15, 2, 6),  # for tests: seconds to make, every class still in train
    "default": Size(300, 100, 100, 4, 10),  # for the demo: sized so that `make demo` probes 5 models x 9 tasks in minutes
    # for the study: 4.5x the default test utterances, so that the 95 % interval of a paired difference
    # resolves a few points of accuracy (the widths are measured in the study's report), and about half its
    # train and 80 % of its dev utterances, so that ~40 models x 9 tasks x 3 probe seeds fit the study's
    # 90-minute budget (at 200/100/600 the full study took 95 min: extraction scales with every split,
    # probe training with train, dev selection with dev)
    "study": Size(160, 80, 450, 4, 10),
}


@dataclass
class _Item:
    """One planned utterance: what to say, how, and the manifest fields it gets."""
    id: str
    split: str
    text: Optional[str]
    voice: str
    speed: int
    pitch: int
    fields: dict = field(default_factory=dict)
    phones: bool = False
    noise: float = NOISE_FLOOR
    silence_s: float = 1.0


def voice_pool() -> list[str]:
    """The espeak voice variants the lite tasks use (installed ones minus :data:`EXCLUDED_VARIANTS`)."""
    pool = sorted(v for v in espeak.list_variants() if v not in EXCLUDED_VARIANTS)
    need = N_TEST_VOICES + N_DEV_VOICES + 10
    if len(pool) < need:
        raise RuntimeError(f"espeak-ng offers only {len(pool)} usable voice variants; the lite tasks need {need}")
    return pool


def voice_split(seed: int = 0) -> dict[str, list[str]]:
    """Disjoint ``train/dev/test`` voice variants of the content tasks for ``seed``."""
    pool = voice_pool()
    random.Random(f"lite-voices:{seed}").shuffle(pool)
    return {"test": pool[:N_TEST_VOICES], "dev": pool[N_TEST_VOICES:N_TEST_VOICES + N_DEV_VOICES],
            "train": pool[N_TEST_VOICES + N_DEV_VOICES:]}


def _dealt(labels: list, n: int, rng: random.Random) -> list:
    """``n`` labels dealt round-robin (every label once before any twice), then shuffled."""
    out = [labels[i % len(labels)] for i in range(n)]
    rng.shuffle(out)
    return out


def _sizes(size: Size) -> dict[str, int]:
    return {"train": size.train, "dev": size.dev, "test": size.test}


# ---------------------------------------------------------------------------------------------
# Per-task plans. Each returns the utterances to synthesise; nothing is written here.
# ---------------------------------------------------------------------------------------------
def _plan_sentences(task: str, size: Size, seed: int, voices: dict[str, list[str]], target: str) -> list[_Item]:
    rng = random.Random(f"{task}:{seed}")
    n = _sizes(size)
    sents = text.english_sentences(sum(n.values()), rng, size.min_words, size.max_words)
    items, k = [], 0
    for split in SPLITS:
        for i in range(n[split]):
            s = sents[k]
            k += 1
            item = _Item(f"{task}-{split}-{i:05d}", split, s, f"{ENGLISH_VOICE}+{rng.choice(voices[split])}",
                         rng.randint(140, 200), rng.randint(30, 70))
            if target == "text":
                item.fields["text"] = s
            else:
                item.phones = True  # phones come from the same espeak call that made the audio
            items.append(item)
    return items


def _plan_ks(size: Size, seed: int, voices: dict[str, list[str]]) -> list[_Item]:
    rng = random.Random(f"lite-ks:{seed}")
    items = []
    for split, n in _sizes(size).items():
        for i, label in enumerate(_dealt(list(text.KS_LABELS), n, rng)):
            word = (None if label == text.SILENCE
                    else rng.choice(text.KS_UNKNOWN_WORDS) if label == text.UNKNOWN else label)
            # Every clip gets a noise floor of random level, so _silence_ is not "the clip with noise".
            items.append(_Item(f"lite-ks-{split}-{i:05d}", split, word, f"{ENGLISH_VOICE}+{rng.choice(voices[split])}",
                               rng.randint(140, 200), rng.randint(30, 70), {"label": label},
                               noise=rng.uniform(0.001, 0.01), silence_s=rng.uniform(0.5, 1.0)))
    return items


def _plan_ic(size: Size, seed: int, voices: dict[str, list[str]]) -> list[_Item]:
    rng = random.Random(f"lite-ic:{seed}")
    intents = text.ic_intents()
    items = []
    for split, n in _sizes(size).items():
        for i, label in enumerate(_dealt(list(intents), n, rng)):
            items.append(_Item(f"lite-ic-{split}-{i:05d}", split, rng.choice(intents[label]),
                               f"{ENGLISH_VOICE}+{rng.choice(voices[split])}", rng.randint(140, 200),
                               rng.randint(30, 70), {"label": label}))
    return items


def _plan_lid(size: Size, seed: int, voices: dict[str, list[str]]) -> list[_Item]:
    rng = random.Random(f"lite-lid:{seed}")
    langs = text.languages()
    items = []
    for split, n in _sizes(size).items():
        for i, code in enumerate(_dealt(list(langs), n, rng)):
            lang = langs[code]
            items.append(_Item(f"lite-lid-{split}-{i:05d}", split, text.language_utterance(rng, lang),
                               f"{lang.voice}+{rng.choice(voices[split])}", rng.randint(140, 200),
                               rng.randint(30, 70), {"language": code}))
    return items


def _plan_sid(size: Size, seed: int) -> list[_Item]:
    rng = random.Random(f"lite-sid:{seed}")
    speakers = sorted(rng.sample(voice_pool(), N_SID_VOICES))
    n = _sizes(size)
    sents = text.english_sentences(sum(n.values()), rng, size.min_words, size.max_words)
    items, k = [], 0
    for split in SPLITS:
        for i, spk in enumerate(_dealt(speakers, n[split], rng)):
            # Small prosody jitter only: the voice variant, not pitch or rate, is what identifies a speaker.
            items.append(_Item(f"lite-sid-{split}-{i:05d}", split, sents[k], f"{ENGLISH_VOICE}+{spk}",
                               rng.randint(155, 185), rng.randint(42, 58), {"speaker": spk}))
            k += 1
    return items


def _plan_style(size: Size, seed: int, voices: dict[str, list[str]]) -> list[_Item]:
    rng = random.Random(f"lite-style:{seed}")
    n = _sizes(size)
    sents = text.english_sentences(sum(n.values()), rng, size.min_words, size.max_words)
    items, k = [], 0
    for split in SPLITS:
        for i, label in enumerate(_dealt(list(STYLE_CLASSES), n[split], rng)):
            (p0, p1), (s0, s1) = STYLE_CLASSES[label]
            items.append(_Item(f"lite-style-{split}-{i:05d}", split, sents[k],
                               f"{ENGLISH_VOICE}+{rng.choice(voices[split])}", rng.randint(s0, s1),
                               rng.randint(p0, p1), {"label": label}))
            k += 1
    return items


def plan(task: str, size: Size, seed: int) -> list[_Item]:
    """The utterances of ``task`` for ``size``/``seed`` (deterministic; no audio is made)."""
    voices = voice_split(seed)
    if task == "lite-pr":
        return _plan_sentences(task, size, seed, voices, "phones")
    if task == "lite-asr":
        return _plan_sentences(task, size, seed, voices, "text")
    if task == "lite-ks":
        return _plan_ks(size, seed, voices)
    if task == "lite-ic":
        return _plan_ic(size, seed, voices)
    if task == "lite-lid":
        return _plan_lid(size, seed, voices)
    if task == "lite-sid":
        return _plan_sid(size, seed)
    if task == "lite-style":
        return _plan_style(size, seed, voices)
    raise UnknownNameError(unknown_name("lite task", task, TASKS))


# ---------------------------------------------------------------------------------------------
# Building and caching
# ---------------------------------------------------------------------------------------------
def _config(task: str, size_name: str, seed: int) -> dict:
    return {"corpus": "lite", "task": task, "version": VERSION, "size": size_name, "seed": int(seed),
            "espeak": espeak.espeak_version(), "sizes": asdict(SIZES[size_name])}


def _cached(folder: Path, config: dict) -> bool:
    stamp = folder / "stamp.json"
    if not stamp.exists() or not all((folder / f"{s}.jsonl").exists() for s in SPLITS):
        return False
    try:
        old = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return old.get("config") == config


def _noise_seed(seed: int, uid: str) -> int:
    return (int(seed) << 32) ^ zlib.crc32(uid.encode("utf-8"))


def _build_task(task: str, size: Size, seed: int, folder: Path, config: dict, jobs: int) -> dict[str, int]:
    items = plan(task, size, seed)
    t0 = time.perf_counter()
    with atomic_dir(folder) as tmp:
        synth = [espeak.SynthJob(out_wav=tmp / "wav" / f"{it.id}.wav", text=it.text, voice=it.voice, speed=it.speed,
                                 pitch=it.pitch, phones=it.phones, noise=it.noise,
                                 noise_seed=_noise_seed(seed, it.id), silence_s=it.silence_s) for it in items]
        (tmp / "wav").mkdir()
        results = espeak.render_batch(synth, workers=jobs, desc=task)
        rows: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
        for it, res in zip(items, results):
            fields = dict(it.fields)
            if it.phones:
                fields["phones"] = " ".join(res.phones)
            if it.text is not None:
                # The voice variant is kept as speaker metadata on every row (lite-sid's target; for
                # the other tasks it lets anyone check that test voices are unseen in training).
                fields.setdefault("speaker", it.voice.split("+", 1)[1])
            rows[it.split].append(Utterance(id=it.id, audio=str(res.job.out_wav), duration=round(res.duration, 4),
                                            sample_rate=TARGET_SR, **fields))
        for split in SPLITS:
            write_manifest(tmp / f"{split}.jsonl", rows[split])
        counts = {s: len(rows[s]) for s in SPLITS}
        hours = sum(r.duration for rs in rows.values() for r in rs) / 3600
        # The stamp is written last: a folder with a matching stamp is complete by construction.
        atomic_write_json(tmp / "stamp.json", {"config": config, "counts": counts, "hours": round(hours, 4),
                                               "seconds_to_make": round(time.perf_counter() - t0, 2)})
    return counts


def prepare(out_dir: str | Path, size: str = "default", seed: int = 0, tasks: Optional[Iterable[str]] = None,
            jobs: int = 2) -> dict[str, dict[str, Path]]:
    """Synthesise (or find cached) lite tasks; returns ``{task: {split: manifest path}}``.

    ``size``: ``quick`` (tests; ~40/15/15 utterances per task), ``default`` (demo; 300/100/100) or ``study``
    (160/80/450: larger test sets for intervals).
    ``tasks``: a subset of :data:`TASKS` (all by default). ``jobs``: parallel espeak-ng processes.
    """
    if size not in SIZES:
        raise UnknownNameError(unknown_name("lite size", size, SIZES))
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(TASKS if tasks is None else tasks)
    for t in tasks:
        if t not in TASKS:
            raise UnknownNameError(unknown_name("lite task", t, TASKS))
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    out_dir = Path(out_dir)
    espeak.espeak_binary()  # fail early and clearly when espeak-ng is missing
    t0 = time.perf_counter()
    made = []
    for t in tasks:
        folder = out_dir / t
        config = _config(t, size, seed)
        if _cached(folder, config):
            log.debug("%s: cached in %s", t, folder)
            continue
        t1 = time.perf_counter()
        counts = _build_task(t, SIZES[size], seed, folder, config, jobs)
        made.append(t)
        log.info("%s: %s utterances (train/dev/test) in %.1f s -> %s", t, "/".join(str(counts[s]) for s in SPLITS),
                 time.perf_counter() - t1, folder)
    if made:
        (log.info if len(made) > 1 else log.debug)("lite (%s, seed %d): made %d task(s) in %.1f s", size, seed, len(made), time.perf_counter() - t0)
    return {t: {s: out_dir / t / f"{s}.jsonl" for s in SPLITS} for t in tasks}

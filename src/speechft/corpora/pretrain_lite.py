"""Unlabelled speech for pre-training the embedded encoder: many languages, voices, speeds, pitches.

``prepare(out_dir, hours)`` synthesises utterances of a few sentences each (mostly 3-8 s, cropped at 8 s) until
the train split holds ``hours`` of audio, and small dev/test splits (2% each, at least 4 utterances),
into ``out_dir/pretrain/{train,dev,test}.jsonl`` with the audio under ``out_dir/pretrain/wav/``.

Half of the utterances are English passages from the built-in grammar (the lite tasks are mostly
English); the other half are phrases and number words of the other languages of
``lite_languages.txt``, spoken with that language's espeak voice. Voices: every usable variant
except the dev and test voices of the lite content tasks for lite seed 0 (the default), so probing
on lite test sets measures voices the encoder never heard; sentences come from other random streams
than the lite tasks' (the grammar is large, so English overlap is rare; the LID phrase list is small
and is necessarily shared).

Deterministic from ``seed`` and cached like lite: a ``stamp.json`` with ``(hours, seed, languages,
VERSION, espeak version)`` is written last, inside a folder renamed into place.
"""
from __future__ import annotations

import json
import logging
import random
import time
import zlib
from pathlib import Path
from typing import Iterable, Optional

from ..data.audio import TARGET_SR
from ..data.manifest import Utterance, write_manifest
from ..utils.io import atomic_dir, atomic_write_json
from ..utils.names import UnknownNameError, unknown_name
from . import espeak, lite, text

log = logging.getLogger(__name__)

VERSION = 1
SUBSET = "pretrain"
SPLITS = ("train", "dev", "test")
MEAN_SECONDS_GUESS = 4.4  # only sizes the first batch; synthesis continues until `hours` is reached
EXCLUDE_LITE_SEED = 0
MAX_SECONDS = 8.0  # the few longer passages are cropped (fine for unlabelled audio; keeps batches even)


def _voices() -> list[str]:
    held_out = lite.voice_split(EXCLUDE_LITE_SEED)
    banned = set(held_out["dev"]) | set(held_out["test"])
    return [v for v in lite.voice_pool() if v not in banned]


def _resolve_languages(languages: Optional[Iterable[str]]) -> list[str]:
    known = text.all_languages()
    if languages is None:
        return list(text.languages())
    if isinstance(languages, str):
        languages = [x.strip() for x in languages.split(",") if x.strip()]
    out = list(dict.fromkeys(languages))
    for code in out:
        if code not in known:
            raise UnknownNameError(unknown_name("pretrain language", code, known))
    if not out:
        raise ValueError("pretrain-lite needs at least one language")
    return out


def _job(rng: random.Random, uid: str, wav: Path, langs: list[str], variants: list[str],
         seed: int) -> tuple[espeak.SynthJob, str]:
    known = text.all_languages()
    # English gets half of the utterances when it is among the languages (the benchmark is mostly English).
    if "en" in langs and (len(langs) == 1 or rng.random() < 0.5):
        code = "en"
        words = text.english_passage(rng, 8, 18)
    else:
        code = rng.choice([c for c in langs if c != "en"] or langs)
        words = text.language_utterance(rng, known[code], long=True)
    voice = f"{known[code].voice}+{rng.choice(variants)}"
    job = espeak.SynthJob(out_wav=wav, text=words, voice=voice, speed=rng.randint(130, 220),
                          pitch=rng.randint(20, 80), noise=lite.NOISE_FLOOR,
                          noise_seed=(int(seed) << 32) ^ zlib.crc32(uid.encode()), max_seconds=MAX_SECONDS)
    return job, code


def _config(hours: float, seed: int, langs: list[str]) -> dict:
    return {"corpus": "pretrain-lite", "version": VERSION, "hours": float(hours), "seed": int(seed),
            "languages": langs, "espeak": espeak.espeak_version()}


def prepare(out_dir: str | Path, hours: float = 1.0, seed: int = 0, jobs: int = 2,
            languages: Optional[Iterable[str]] = None) -> dict[str, dict[str, Path]]:
    """Synthesise (or find cached) ``hours`` of unlabelled training speech; returns ``{"pretrain": {split: path}}``."""
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    if int(jobs) < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    langs = _resolve_languages(languages)
    folder = Path(out_dir) / SUBSET
    paths = {SUBSET: {s: folder / f"{s}.jsonl" for s in SPLITS}}
    config = _config(hours, seed, langs)
    stamp = folder / "stamp.json"
    if stamp.exists() and all(p.exists() for p in paths[SUBSET].values()):
        try:
            if json.loads(stamp.read_text(encoding="utf-8")).get("config") == config:
                log.debug("pretrain-lite: cached in %s", folder)
                return paths
        except (OSError, json.JSONDecodeError):
            pass
    variants = _voices()
    rng = random.Random(f"pretrain-lite:{seed}")
    target_s = float(hours) * 3600.0
    t0 = time.perf_counter()
    with atomic_dir(folder) as tmp:
        (tmp / "wav").mkdir()
        rows: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
        done_s, i = 0.0, 0
        # dev/test first (fixed, small), then train batches until the hours are reached; the batch
        # sequence depends only on the seed, so the result is deterministic.
        n_eval = max(4, int(round(0.02 * target_s / MEAN_SECONDS_GUESS)))
        plan = [("dev", n_eval), ("test", n_eval)]
        while True:
            if plan:
                split, n = plan.pop(0)
            else:
                if done_s >= target_s:
                    break
                split, n = "train", max(8, int((target_s - done_s) / MEAN_SECONDS_GUESS) + 1)
            batch, codes = [], []
            for _ in range(n):
                uid = f"pretrain-{split}-{i:06d}"
                i += 1
                job, code = _job(rng, uid, tmp / "wav" / f"{uid}.wav", langs, variants, seed)
                batch.append(job)
                codes.append(code)
            for res, code in zip(espeak.render_batch(batch, workers=jobs, desc=f"pretrain-lite {split}"), codes):
                uid = res.job.out_wav.stem
                rows[split].append(Utterance(id=uid, audio=str(res.job.out_wav), language=code,
                                             speaker=res.job.voice.split("+", 1)[1],
                                             duration=round(res.duration, 4), sample_rate=TARGET_SR))
                if split == "train":
                    done_s += res.duration
        for split in SPLITS:
            write_manifest(tmp / f"{split}.jsonl", rows[split])
        secs = time.perf_counter() - t0
        summary = {s: {"utterances": len(rows[s]), "hours": round(sum(r.duration for r in rows[s]) / 3600, 4)}
                   for s in SPLITS}
        rate = done_s / 3600 / max(secs / 60, 1e-9)
        atomic_write_json(tmp / "stamp.json", {"config": config, "splits": summary, "seconds_to_make": round(secs, 1),
                                               "audio_hours_per_minute": round(rate, 3)})
    log.info("pretrain-lite: %.2f h of train audio (%d utterances) in %.1f s (%.2f h of audio per minute) -> %s",
             done_s / 3600, len(rows["train"]), secs, done_s / 3600 / max(secs / 60, 1e-9), folder)
    return paths

"""Deterministic text sources of the built-in corpora, owned by the package (no network).

* English sentences from a small template grammar over ``lite_english.txt`` (lite-pr, lite-asr,
  lite-sid, lite-style, pretrain-lite). Lowercase ``a-z`` and spaces only, so character targets
  have a fixed 27-symbol alphabet.
* Keyword spotting words as in SUPERB KS: 10 commands, ``_unknown_`` (other words) and ``_silence_``.
* Intent commands (lite-ic): 30 intents ``action|object|location``, several phrasings each.
* Phrases and number words in 10 languages (lite-lid, pretrain-lite) from ``lite_languages.txt``.

Every generator takes a :class:`random.Random` (or a seed) so a dataset is a pure function of its seed.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGLISH_FILE = HERE / "lite_english.txt"
LANGUAGES_FILE = HERE / "lite_languages.txt"
UNSEEN_LANGUAGES_FILE = HERE / "unseen_languages.txt"

# ---------------------------------------------------------------------------------------------
# English grammar
# ---------------------------------------------------------------------------------------------
TEMPLATES = (
    "{det} {adj} {noun} {verb_t} {det} {noun}",
    "{name} {verb_t} {det} {adj} {noun} {prep} {det} {noun}",
    "{det} {noun} {verb_i} {prep} {det} {adj} {noun}",
    "{name} and {name} {verb_i} {adv}",
    "{name} {verb_t} {det} {noun} {time_phrase}",
    "there is {det} {adj} {noun} {prep} {det} {noun}",
    "{name} said that {det} {noun} was {adj}",
    "we {verb_t} {det} {adj} {noun} {time}",
    "{det} {noun} was {adj} and {det} {noun} was {adj}",
    "{det} {adj} {noun} {verb_i} {adv}",
    "i {verb_t} {det} {noun}",
    "my {noun} is {adj}",
    "{name} {verb_i}",
    "{name} {verb_t} {name}",
    "{det} {noun} {verb_i}",
    "{det} {adj} {noun}",
    "{name} {verb_t} {det} {adj} {noun} and {det} {noun} {verb_i} {adv}",
)


class TextSourceError(ValueError):
    """A word or phrase file of the package is malformed (names the file and line)."""


@functools.lru_cache(maxsize=1)
def english_words() -> dict[str, tuple[str, ...]]:
    """``category -> words`` from ``lite_english.txt`` (``|`` separates multi-word entries)."""
    words: dict[str, list[str]] = {}
    for lineno, line in enumerate(ENGLISH_FILE.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            raise TextSourceError(f"{ENGLISH_FILE}:{lineno}: expected 'category: words', got {line!r}")
        cat, rest = (s.strip() for s in line.split(":", 1))
        items = [w.strip() for w in rest.split("|")] if "|" in rest else rest.split()
        for w in items:
            if not w or not all(c.isascii() and (c.isalpha() or c == " ") and not c.isupper() for c in w):
                raise TextSourceError(f"{ENGLISH_FILE}:{lineno}: {w!r} is not lowercase a-z")
        words.setdefault(cat, []).extend(items)
    return {k: tuple(v) for k, v in words.items()}


def _fill(template: str, rng: random.Random) -> str:
    words = english_words()
    out = []
    for tok in template.split():
        if tok.startswith("{") and tok.endswith("}"):
            cat = tok[1:-1]
            if cat not in words:
                raise TextSourceError(f"{ENGLISH_FILE}: template needs category {cat!r}, which the file lacks")
            out.append(rng.choice(words[cat]))
        else:
            out.append(tok)
    # "a" before a vowel sound is "an" (spelling rule is good enough for this word list).
    for i in range(len(out) - 1):
        if out[i] == "a" and out[i + 1][0] in "aeiou":
            out[i] = "an"
    return " ".join(out)


def english_sentence(rng: random.Random, min_words: int = 3, max_words: int = 12) -> str:
    """One grammatical sentence of ``min_words``..``max_words`` words."""
    if min_words > max_words or max_words < 2:
        raise ValueError(f"bad sentence length range {min_words}..{max_words}")
    for _ in range(1000):
        s = _fill(rng.choice(TEMPLATES), rng)
        if min_words <= len(s.split()) <= max_words:
            return s
    raise ValueError(f"the grammar cannot make sentences of {min_words}..{max_words} words")


def english_sentences(n: int, rng: random.Random, min_words: int = 3, max_words: int = 12) -> list[str]:
    """``n`` distinct sentences (so that splits made from them never share a sentence)."""
    seen: dict[str, None] = {}
    tries = 0
    while len(seen) < n:
        seen.setdefault(english_sentence(rng, min_words, max_words))
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"could not make {n} distinct sentences of {min_words}..{max_words} words")
    return list(seen)


def english_passage(rng: random.Random, min_words: int, max_words: int) -> str:
    """Several sentences joined with periods, about ``min_words``..``max_words`` words in all."""
    target = rng.randint(min_words, max_words)
    parts, count = [], 0
    while count < target:
        s = english_sentence(rng, 2, max(4, min(12, max_words - count)))
        parts.append(s)
        count += len(s.split())
    return ". ".join(parts) + "."


# ---------------------------------------------------------------------------------------------
# Keyword spotting (SUPERB KS: Speech Commands v0.01 commands + silence + unknown)
# ---------------------------------------------------------------------------------------------
KS_COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
KS_UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine",
                    "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero")
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
KS_LABELS = KS_COMMANDS + (SILENCE, UNKNOWN)

# ---------------------------------------------------------------------------------------------
# Intent classification (Fluent Speech Commands style: action|object|location)
# ---------------------------------------------------------------------------------------------
IC_LOCATIONS = ("kitchen", "bedroom", "washroom")
_LOC_PHRASINGS = {  # how a location is said at the end of a command
    "kitchen": ("in the kitchen",), "bedroom": ("in the bedroom",), "washroom": ("in the washroom", "in the bathroom"),
}
# (action, object, takes a location, phrasings); "{loc}" marks where a location goes.
_IC_GRAMMAR = (
    ("activate", "lights", True, ("turn on the lights{loc}", "switch on the lights{loc}", "lights on{loc}")),
    ("deactivate", "lights", True, ("turn off the lights{loc}", "switch off the lights{loc}", "lights off{loc}")),
    ("increase", "heat", True, ("turn up the heat{loc}", "increase the temperature{loc}", "make it warmer{loc}")),
    ("decrease", "heat", True, ("turn down the heat{loc}", "decrease the temperature{loc}", "make it cooler{loc}")),
    ("activate", "music", False, ("play the music", "put on some music", "start the music")),
    ("deactivate", "music", False, ("stop the music", "turn the music off", "pause the music")),
    ("increase", "volume", False, ("turn up the volume", "make it louder", "increase the volume")),
    ("decrease", "volume", False, ("turn down the volume", "make it quieter", "decrease the volume")),
    ("activate", "lamp", False, ("turn on the lamp", "switch the lamp on", "lamp on")),
    ("deactivate", "lamp", False, ("turn off the lamp", "switch the lamp off", "lamp off")),
    ("bring", "newspaper", False, ("bring me the newspaper", "get me the newspaper", "fetch the newspaper")),
    ("bring", "juice", False, ("bring me some juice", "get me the juice", "fetch me a juice")),
    ("bring", "shoes", False, ("bring me my shoes", "get me the shoes", "fetch my shoes")),
    ("bring", "socks", False, ("bring me my socks", "get me the socks", "fetch my socks")),
)
_IC_LANGUAGES = ("chinese", "korean", "english", "german")
_IC_LANGUAGE_PHRASINGS = ("switch the language to {lang}", "change the language to {lang}",
                          "set the language to {lang}", "i want to use {lang}")


@functools.lru_cache(maxsize=1)
def ic_intents() -> dict[str, tuple[str, ...]]:
    """``"action|object|location" -> phrasings`` (30 intents; location ``none`` when not said)."""
    out: dict[str, tuple[str, ...]] = {}
    for action, obj, has_loc, phrasings in _IC_GRAMMAR:
        out[f"{action}|{obj}|none"] = tuple(p.format(loc="") for p in phrasings)
        if has_loc:
            for loc in IC_LOCATIONS:
                out[f"{action}|{obj}|{loc}"] = tuple(p.format(loc=" " + lp) for p in phrasings
                                                     for lp in _LOC_PHRASINGS[loc])
    for lang in _IC_LANGUAGES:
        out[f"change_language|{lang}|none"] = tuple(p.format(lang=lang) for p in _IC_LANGUAGE_PHRASINGS)
    return out


# ---------------------------------------------------------------------------------------------
# Languages (lite-lid, pretrain-lite)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Language:
    code: str  # label written to manifests (ISO 639-1)
    voice: str  # espeak-ng voice
    numbers: tuple[str, ...]  # one..ten
    phrases: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def languages() -> dict[str, Language]:
    """``code -> Language`` from ``lite_languages.txt``, in file order (the lite tasks' languages)."""
    return _read_languages(LANGUAGES_FILE)


@functools.lru_cache(maxsize=1)
def unseen_languages() -> dict[str, Language]:
    """``code -> Language`` from ``unseen_languages.txt``: languages no lite task and no pre-training of
    speechft-tiny uses (the study's cross-lingual continued pre-training)."""
    out = _read_languages(UNSEEN_LANGUAGES_FILE)
    clash = sorted(set(out) & set(languages()))
    if clash:
        raise TextSourceError(f"{UNSEEN_LANGUAGES_FILE}: {', '.join(clash)} also in {LANGUAGES_FILE.name}")
    return out


def all_languages() -> dict[str, Language]:
    return {**languages(), **unseen_languages()}


def _read_languages(path: Path) -> dict[str, Language]:
    LANGUAGES_FILE = path  # noqa: N806 - the messages below name the file read
    rows: dict[str, dict] = {}
    for lineno, line in enumerate(LANGUAGES_FILE.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split("|")]
        if len(cols) not in (3, 4) or not all(cols):
            raise TextSourceError(f"{LANGUAGES_FILE}:{lineno}: expected 'code | voice | phrase', got {line!r}")
        code, voice = cols[0], cols[1]
        row = rows.setdefault(code, {"voice": voice, "numbers": None, "phrases": []})
        if row["voice"] != voice:
            raise TextSourceError(f"{LANGUAGES_FILE}:{lineno}: language {code!r} has two voices "
                                  f"({row['voice']!r}, {voice!r})")
        if len(cols) == 4:
            if cols[2] != "numbers" or len(cols[3].split()) != 10:
                raise TextSourceError(f"{LANGUAGES_FILE}:{lineno}: expected 'code | voice | numbers | one .. ten'")
            row["numbers"] = tuple(cols[3].split())
        else:
            row["phrases"].append(cols[2])
    out = {}
    for code, row in rows.items():
        if row["numbers"] is None or not row["phrases"]:
            raise TextSourceError(f"{LANGUAGES_FILE}: language {code!r} needs a numbers line and phrases")
        out[code] = Language(code, row["voice"], row["numbers"], tuple(row["phrases"]))
    return out


def language_utterance(rng: random.Random, lang: Language, long: bool = False) -> str:
    """A short utterance in ``lang``: a phrase, a phrase and numbers, numbers, or two phrases.

    With ``long`` several such pieces are joined into a passage of a few sentences.
    """
    def piece() -> str:
        kind = rng.randrange(4)
        if kind == 0:
            return rng.choice(lang.phrases)
        if kind == 1:
            return f"{rng.choice(lang.phrases)}, " + " ".join(rng.choices(lang.numbers, k=rng.randint(2, 3)))
        if kind == 2:
            return " ".join(rng.choices(lang.numbers, k=rng.randint(3, 5)))
        a, b = rng.sample(lang.phrases, 2)
        return f"{a}, {b}"

    if not long:
        return piece()
    return ". ".join(piece() for _ in range(rng.randint(2, 3))) + "."

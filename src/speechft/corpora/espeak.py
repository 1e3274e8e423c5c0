"""A small synthesis layer over the ``espeak-ng`` command line.

espeak-ng is fast (tens of utterances per second per core), deterministic for a given version and
argument list, ships ~130 languages and ~100 voice variants (``en-us+f3``), and prints the IPA
phonemes of what it speaks. That is what the built-in benchmark is made of.

Phones (:func:`phonemize`, :func:`split_phones`): espeak prints ``--ipa --sep=_`` output as words
separated by spaces and phones separated by ``_``. We drop word boundaries (phone recognition is
scored on the phone sequence, as in SUPERB PR), drop the stress marks ``ˈ ˌ`` (stress is not a
segment, and keeping it would split one vowel into several classes), keep the length mark ``ː``
attached to its vowel (``ɑː`` and ``ɑ`` are different phonemes in espeak's English), and drop
language-switch markers such as ``(en)``. The inventory is therefore the set of espeak phoneme
symbols of the language, stable across runs and voice variants (variants change how a voice
sounds, not what it says).
"""
from __future__ import annotations

import functools
import io
import logging
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import soundfile as sf

from ..data.audio import TARGET_SR, resample, write_audio

log = logging.getLogger(__name__)

ESPEAK_SR = 22050
PEAK = 0.9  # louder utterances are scaled down to this peak
INSTALL_HINT = "install it: apt-get install espeak-ng, or run make install"
_STRESS = str.maketrans("", "", "ˈˌ")
_LANG_SWITCH = re.compile(r"\([a-zA-Z-]+\)")


class EspeakError(RuntimeError):
    """espeak-ng failed on an input; the message names the voice, the text and espeak's own error."""


@functools.lru_cache(maxsize=1)
def espeak_binary() -> str:
    """Path of ``espeak-ng``; raises :class:`FileNotFoundError` with an install hint when missing."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise FileNotFoundError(
            f"espeak-ng not found on PATH (the lite-* tasks are synthesised with it); {INSTALL_HINT}")
    return path


def _run(args: Sequence[str], text: Optional[str] = None, what: str = "") -> subprocess.CompletedProcess:
    # Text goes through stdin so that a sentence starting with '-' can never be read as an option.
    proc = subprocess.run([espeak_binary(), *args], input=None if text is None else text.encode("utf-8"),
                          capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise EspeakError(f"espeak-ng failed{what} (exit {proc.returncode}): {err or 'no message'}")
    return proc


@functools.lru_cache(maxsize=1)
def espeak_version() -> str:
    """e.g. ``"1.51"``; recorded in dataset stamps because audio is only reproducible per version."""
    out = _run(["--version"]).stdout.decode("utf-8", "replace")
    m = re.search(r"text-to-speech:\s*(\S+)", out)
    return m.group(1) if m else out.strip()


def _voice_table(kind: Optional[str]) -> list[list[str]]:
    arg = "--voices" if kind is None else f"--voices={kind}"
    lines = _run([arg]).stdout.decode("utf-8", "replace").splitlines()
    return [ln.split() for ln in lines[1:] if ln.strip()]


@functools.lru_cache(maxsize=1)
def list_languages() -> tuple[str, ...]:
    """Language/voice codes espeak-ng knows (``en-us``, ``de``, ``fr-fr``, ...), sorted."""
    return tuple(sorted({cols[1] for cols in _voice_table(None) if len(cols) > 1}))


@functools.lru_cache(maxsize=1)
def list_variants() -> tuple[str, ...]:
    """Voice variants usable as ``<language>+<variant>`` (``f3``, ``m2``, ``klatt``, ...), sorted."""
    out = set()
    for cols in _voice_table("variant"):
        f = next((c for c in cols if c.startswith("!v/")), None)
        if f:
            out.add(f[3:])
    return tuple(sorted(out))


def voice_name(language: str, variant: Optional[str] = None) -> str:
    return f"{language}+{variant}" if variant else language


def split_phones(ipa: str) -> list[str]:
    """espeak ``--ipa --sep=_`` output -> phones (see the module docstring for the conventions)."""
    ipa = _LANG_SWITCH.sub(" ", ipa).translate(_STRESS)
    return [p for p in re.split(r"[\s_]+", ipa) if p]


def phonemize(text: str, voice: str = "en-us") -> list[str]:
    """IPA phones of ``text`` as spoken by ``voice`` (no audio is made)."""
    out = _run(["-v", voice, "-q", "--ipa", "--sep=_"], text, f" phonemizing {text!r} with voice {voice!r}")
    return split_phones(out.stdout.decode("utf-8"))


def synthesize_array(text: str, voice: str = "en-us", speed: int = 175, pitch: int = 50,
                     phones: bool = False) -> tuple[np.ndarray, Optional[list[str]]]:
    """Speak ``text``: float32 ``[S]`` at 16 kHz and, with ``phones``, the IPA phones spoken.

    ``speed`` is words per minute (espeak ``-s``, 80-450), ``pitch`` 0-99 (``-p``) relative to the voice.
    """
    if not text.strip():
        raise ValueError(f"cannot synthesise empty text (voice {voice!r})")
    what = f" on {text[:60]!r} with voice {voice!r}"
    args = ["-v", voice, "-s", str(int(speed)), "-p", str(int(pitch))]
    if phones:
        # Phones go to stdout and the wav to a file, so one call gives both and they always agree.
        import tempfile

        with tempfile.TemporaryDirectory(prefix="speechft-espeak-") as tmp:
            wav_path = Path(tmp) / "out.wav"
            proc = _run([*args, "-w", str(wav_path), "--ipa", "--sep=_"], text, what)
            data = wav_path.read_bytes()
        ph = split_phones(proc.stdout.decode("utf-8"))
    else:
        data = _run([*args, "--stdout"], text, what).stdout
        ph = None
    try:
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise EspeakError(f"espeak-ng produced unreadable audio{what}: {e}") from None
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    if wav.size == 0:
        raise EspeakError(f"espeak-ng produced no audio{what}")
    return resample(wav, sr, TARGET_SR), ph


def synthesize(text: str, voice: str, speed: int, pitch: int, out_wav: str | Path) -> float:
    """Speak ``text`` into ``out_wav`` (16 kHz mono 16-bit PCM); returns the duration in seconds."""
    wav, _ = synthesize_array(text, voice, speed, pitch)
    write_audio(out_wav, wav, TARGET_SR)
    return len(wav) / TARGET_SR


@dataclass(frozen=True)
class SynthJob:
    """One utterance to render. ``text=None`` renders noise only (a ``_silence_`` clip of ``silence_s``).

    ``noise`` is the std of white noise added to the waveform (a recording's noise floor); it is
    drawn from ``noise_seed`` so the audio is identical on every run.
    """
    out_wav: Path
    text: Optional[str]
    voice: str = "en-us"
    speed: int = 175
    pitch: int = 50
    phones: bool = False
    noise: float = 0.0
    noise_seed: int = 0
    silence_s: float = 1.0
    max_seconds: Optional[float] = None  # crop longer audio (unlabelled pre-training data only)


@dataclass(frozen=True)
class SynthResult:
    job: SynthJob
    duration: float
    phones: Optional[tuple[str, ...]]


def render(job: SynthJob) -> SynthResult:
    """Synthesise (or make a noise clip), add the noise floor, write the 16 kHz wav."""
    rng = np.random.default_rng(job.noise_seed)
    if job.text is None:
        wav, ph = np.zeros(int(round(job.silence_s * TARGET_SR)), dtype=np.float32), None
    else:
        wav, ph = synthesize_array(job.text, job.voice, job.speed, job.pitch, phones=job.phones)
        if job.phones and not ph:
            raise EspeakError(f"espeak-ng returned no phones for {job.text!r} (voice {job.voice!r})")
        peak = float(np.abs(wav).max())
        if peak > PEAK:  # some variants (and the resampler's overshoot) exceed full scale: scale, never clip
            wav = wav * (PEAK / peak)
    if job.max_seconds is not None:
        wav = wav[: int(job.max_seconds * TARGET_SR)]
    if job.noise > 0:
        wav = wav + rng.normal(0.0, job.noise, size=wav.shape).astype(np.float32)
    write_audio(job.out_wav, np.clip(wav, -1.0, 1.0), TARGET_SR)
    return SynthResult(job, len(wav) / TARGET_SR, tuple(ph) if ph is not None else None)


def render_batch(jobs: Iterable[SynthJob], workers: int = 2, desc: str = "synthesising",
                 progress: bool = True, on_result: Optional[Callable[[SynthResult], None]] = None) -> list[SynthResult]:
    """Render ``jobs`` with ``workers`` threads (each thread drives one espeak-ng process at a time).

    Results come back in job order. The first failure stops the batch and is raised (no silent skipping).
    """
    from tqdm.auto import tqdm

    jobs = list(jobs)
    espeak_binary()  # fail before starting threads when espeak-ng is missing
    results: list[SynthResult] = []
    pool = ThreadPoolExecutor(max_workers=max(1, int(workers)))
    try:
        with tqdm(total=len(jobs), desc=desc, unit="utt", disable=not progress, leave=False, mininterval=1.0) as bar:
            for res in pool.map(render, jobs):
                results.append(res)
                if on_result is not None:
                    on_result(res)
                bar.update(1)
    except BaseException:
        # Do not keep synthesising the rest of a batch that is going to be thrown away.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results

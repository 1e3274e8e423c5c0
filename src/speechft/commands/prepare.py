"""`speechft prepare`: make the train/dev/test manifests of a corpus."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import split_csv, user_errors

# Which command-line options each corpus takes (every other option is an error for it, not ignored).
CORPUS_OPTIONS = {
    "lite": ("size", "seed", "jobs", "tasks"),
    "fsdd": ("size",),
    "pretrain-lite": ("hours", "seed", "jobs", "languages"),
    "librispeech": ("lexicon",),
    "iemocap": ("fold",),
    "speechcommands": ("test_root",),
    "tedlium3": ("hours",),
}
_FLAGS = {"size": "--size/--quick", "seed": "--seed", "jobs": "--jobs", "tasks": "--tasks", "hours": "--hours",
          "lexicon": "--lexicon", "fold": "--fold", "test_root": "--test-root", "languages": "--languages"}


def corpus_options(corpus: str, given: dict) -> dict:
    """The options given on the command line that ``corpus`` takes; an error names any it does not take."""
    allowed = CORPUS_OPTIONS.get(corpus, ())
    extra = [_FLAGS[k] for k, v in given.items() if v is not None and k not in allowed]
    if extra:
        takes = ", ".join(_FLAGS[k] for k in allowed) or "no options besides --root/--out"
        raise ValueError(f"{' '.join(extra)} does not apply to corpus {corpus!r} (it takes {takes})")
    return {k: v for k, v in given.items() if v is not None}


def command(
    corpus: str = typer.Argument(..., help="Corpus to prepare: lite, pretrain-lite, fsdd, librispeech, "
                                 "speechcommands, voxceleb1, iemocap, fluent, tedlium3."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder of the downloaded corpus (real corpora; "
                                        "fsdd defaults to $SPEECHFT_FSDD or ../shared/data/fsdd)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: $SPEECHFT_HOME/<corpus>, "
                                       "quick size: $SPEECHFT_HOME/lite-quick, fsdd-quick)."),
    quick: bool = typer.Option(False, "--quick", help="lite, fsdd: the small size used by tests and reproduce --quick (same as --size quick)."),
    size: Optional[str] = typer.Option(None, "--size", help="lite, fsdd: quick, default or study (larger test sets)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="lite, pretrain-lite: random seed of the synthesis "
                                       "(default 0; same seed gives identical data)."),
    hours: Optional[float] = typer.Option(None, "--hours", help="pretrain-lite: hours of training audio (default 1); "
                                       "tedlium3: hours of the asr-10h training subset (default 10)."),
    lexicon: Optional[Path] = typer.Option(None, "--lexicon", help="librispeech: pronunciation lexicon for the "
                                           "phone targets of PR."),
    fold: Optional[int] = typer.Option(None, "--fold", help="iemocap: test session (1-5; default: all five folds)."),
    test_root: Optional[Path] = typer.Option(None, "--test-root", help="speechcommands: the separate v0.01 test "
                                             "set archive, extracted (SUPERB's test split)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", help="lite, pretrain-lite: parallel espeak-ng processes "
                                       "(default 2)."),
    languages: Optional[str] = typer.Option(None, "--languages", help="pretrain-lite: comma-separated language "
                                            "codes (default: the 10 lite languages; also hu, tr, sw, id, cs, vi, "
                                            "which no lite task and no speechft-tiny pre-training uses)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lite: comma-separated subset of tasks "
                                        "(default: all seven)."),
) -> None:
    """Prepare a corpus: write OUT/<subset>/{train,dev,test}.jsonl manifests (synthesising the built-in
    lite and pretrain-lite audio with espeak-ng; real corpora are referenced in place) and print each
    manifest with its row count. Prepared data is cached: running it again with the same options is instant."""
    from ..corpora.registry import default_out_dir, get_corpus
    from ..paths import default_fsdd_root

    with user_errors():
        if quick and size not in (None, "quick"):
            raise ValueError(f"--quick and --size {size} disagree; give one of them")
        size = "quick" if quick else size
        spec = get_corpus(corpus)
        options = corpus_options(corpus, {"size": size, "seed": seed, "jobs": jobs, "tasks": split_csv(tasks) or None,
                                          "hours": hours, "lexicon": str(lexicon) if lexicon else None, "fold": fold,
                                          "test_root": str(test_root) if test_root else None,
                                          "languages": split_csv(languages) or None})
        if root is None and corpus == "fsdd":
            root = default_fsdd_root()
        if root is None and spec.needs_root:
            raise ValueError(f"corpus {corpus!r} needs --root PATH: the folder of the downloaded corpus")
        if root is not None and not spec.needs_root:
            raise ValueError(f"corpus {corpus!r} is synthesised and takes no --root")
        out_dir = out if out is not None else default_out_dir(corpus, size or "default")
        manifests = spec.prepare(str(root) if root is not None else None, out_dir, **options)
    for subset, splits in manifests.items():
        for split, path in splits.items():
            with open(path, encoding="utf-8") as f:
                n = sum(1 for line in f if line.strip())
            typer.echo(f"{subset:<12} {split:<5} {n:>7} rows  {path}")

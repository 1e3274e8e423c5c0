"""`speechft analyze`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import DEFAULT_MODEL, check_models, device_option, split_csv, user_errors
from .merge import parse_floats


def command(
    models: Optional[List[str]] = typer.Option(None, "--models", help="Model references; the first is the reference "
                                               "M0 (usually the pre-trained model), the others are compared to it. "
                                               "List them after the option or as arguments, repeat the option or "
                                               "comma-separate; a single model is compared to speechft-tiny."),
    more: Optional[List[str]] = typer.Argument(None, help="Further models (same as --models).", show_default=False),
    manifest: Path = typer.Option(..., "--manifest", help="JSONL manifest of the audio to run all models on."),
    out: Path = typer.Option(..., "--out", help="Output folder for analysis.jsonl and the PNG plots (new or empty, "
                             "or --overwrite)."),
    alphas: str = typer.Option("0,0.25,0.5,0.75,1", "--alphas", help="Comma-separated α grid for the LLFC analysis."),
    limit: int = typer.Option(0, "--limit", help="At most N utterances of the manifest (0 = all), as in probe."),
    extract_batch_seconds: float = typer.Option(40.0, "--extract-batch-seconds", help="Padded audio seconds per "
                                                "inference batch (sets the memory used; no training happens here)."),
    device: str = device_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an --out that already holds files "
                                   "(its analysis.jsonl and plots are replaced)."),
) -> None:
    """Per-layer similarity (cosine, unbiased linear CKA) of each model to M0, LLFC R² of interpolated
    models, and weight distances per layer; writes analysis.jsonl and similarity/llfc/weight_distance PNGs."""
    from ..analysis.run import analyze

    refs = [m for item in [*(models or []), *(more or [])] for m in split_csv(item)]
    with user_errors(out=out, device=device) as dev:
        if not refs:
            raise ValueError("--models: name the models to compare (the first is the reference M0)")
        if len(refs) == 1:
            refs = [DEFAULT_MODEL, *refs]
        check_models(refs)
        if not manifest.is_file():
            raise FileNotFoundError(f"--manifest {manifest}: no such file")
        from ..utils.io import check_not_input

        check_not_input(out, {"--models": refs, "--manifest": manifest}, replaced=False)  # before "not empty"
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise FileExistsError(f"--out {out} already exists and is not empty; pass --overwrite to replace its "
                                  "analysis, or choose another --out")
        recs = analyze(refs, manifest, out, alphas=parse_floats(alphas, "--alphas") or [], limit=limit or None,
                       batch_seconds=extract_batch_seconds, device=dev)
    typer.echo(f"wrote {len(recs)} records to {out / 'analysis.jsonl'} and plots to {out}")

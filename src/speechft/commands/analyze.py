"""`speechft analyze`."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from ._common import split_csv, user_errors


def command(
    models: List[str] = typer.Option(..., "--models", help="Model references; the first is the reference M0 "
                                     "(usually the pre-trained model), the others are compared to it. Repeat or list."),
    manifest: Path = typer.Option(..., "--manifest", help="JSONL manifest of the audio to run all models on."),
    out: Path = typer.Option(..., "--out", help="Output folder for analysis.jsonl and the PNG plots."),
    alphas: str = typer.Option("0,0.25,0.5,0.75,1", "--alphas", help="Comma-separated α grid for the LLFC analysis."),
    limit: int = typer.Option(200, "--limit", help="Use at most this many utterances of the manifest (0 = all)."),
    batch_seconds: float = typer.Option(40.0, "--batch-seconds", help="Padded audio seconds per batch."),
) -> None:
    """Per-layer similarity (cosine, unbiased linear CKA) of each model to M0, LLFC R² of interpolated
    models, and weight distances per layer; writes analysis.jsonl and similarity/llfc/weight_distance PNGs."""
    from ..analysis.run import analyze

    refs = [m for item in models for m in split_csv(item)]
    with user_errors():
        recs = analyze(refs, manifest, out, alphas=[float(a) for a in split_csv(alphas)], limit=limit or None,
                       batch_seconds=batch_seconds)
    typer.echo(f"wrote {len(recs)} records to {out / 'analysis.jsonl'} and plots to {out}")

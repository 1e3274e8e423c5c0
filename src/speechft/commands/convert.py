"""`speechft convert`: fairseq / s3prl / Speech-FT release checkpoints -> Hugging Face directory."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import user_errors


def command(
    src: Path = typer.Argument(..., help="Checkpoint file (.pt / .ckpt / .safetensors)."),
    out: Path = typer.Option(..., "--out", help="Output HF directory (written atomically, verified first)."),
    fmt: str = typer.Option(
        "auto", "--format",
        help="auto | fairseq | s3prl-upstream | s3prl-downstream | speechft-release | safetensors | state-dict.",
    ),
    allow_unsafe_pickle: bool = typer.Option(
        False, "--allow-unsafe-pickle",
        help="Fully unpickle files that hold more than tensors (fairseq configs, s3prl Args). "
             "Unpickling can run code hidden in the file: only for files you trust.",
    ),
    config: Optional[str] = typer.Option(
        None, "--config",
        help="Architecture when the file has none (s3prl downstream, bare state dicts): an HF model dir, "
             "a config.json, or the fairseq/s3prl checkpoint the weights come from.",
    ),
    model_type: Optional[str] = typer.Option(
        None, "--model-type", help="hubert | wav2vec2 | wavlm, when the file does not tell."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Fail on tensors that are neither mapped nor dropped by design."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Convert a fairseq, s3prl or official Speech-FT checkpoint to a Hugging Face model directory.

    Prints the detected format, the mapped-tensor count and every unmapped or dropped key.
    The output loads with transformers.AutoModel.from_pretrained and with every speechft command."""
    with user_errors():
        from ..models.convert import convert_checkpoint

        report = convert_checkpoint(
            src, out, allow_unsafe_pickle=allow_unsafe_pickle, model_type=model_type, fmt=fmt,
            config=config, strict=strict, overwrite=overwrite,
        )
        for line in report.lines():
            typer.echo(line)

"""`speechft merge`: weight-space merge of a pre-trained encoder with fine-tuned ones."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import DEFAULT_MODEL, check_models, split_csv, user_errors


def parse_floats(value: Optional[str], what: str) -> Optional[list[float]]:
    if not value:
        return None
    try:
        return [float(v) for v in split_csv(value)]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {value!r}") from None


def command(
    pretrained: str = typer.Option(DEFAULT_MODEL, "--pretrained", help="θ₀: a model folder, speechft-tiny, "
                                   "speechft-tiny-v1, speechft-tiny-random or a hub id."),
    finetuned: List[str] = typer.Option(..., "--finetuned", help="θ′: model folders or fine-tuning run folders "
                                        "(their encoder/); repeat, or list several after it."),
    more: Optional[List[str]] = typer.Argument(None, help="Further fine-tuned models.", show_default=False),
    out: Path = typer.Option(..., "--out", help="Output HF directory (written atomically)."),
    alpha: float = typer.Option(0.25, "--alpha", help="Interpolation weight α (0 = θ₀, 1 = θ′)."),
    method: str = typer.Option("linear", "--method", help="linear | task_arithmetic | ties | dare | dare_ties."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Per-model weights, comma-separated."),
    density: float = typer.Option(0.5, "--density", help="ties/dare: fraction of task-vector entries kept."),
    seed: int = typer.Option(0, "--seed", help="dare: seed of the random drop masks."),
    majority_sign: str = typer.Option("total", "--majority-sign", help="ties: sign election, total | frequency."),
    dtype: str = typer.Option("source", "--dtype", help="Output dtype: source | float32 | float16 | bfloat16."),
    excluded: str = typer.Option("keep", "--excluded", help="Pre-training-only/head tensors: keep θ₀'s | drop."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Merge a pre-trained encoder with fine-tuned ones (Speech-FT: θ̂ = θ₀ + α·mean(θ′ − θ₀))."""
    with user_errors(out=out):
        from ..merge import merge_models

        check_models([pretrained, *finetuned, *(more or [])])
        path = merge_models(
            pretrained, [*finetuned, *(more or [])], out, method=method, alpha=alpha,
            weights=parse_floats(weights, "--weights"), density=density, seed=seed, majority_sign=majority_sign,
            dtype=dtype, excluded=excluded, overwrite=overwrite,
        )
        typer.echo(str(path))

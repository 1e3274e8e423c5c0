"""`speechft merge`: weight-space merge of a pre-trained encoder with fine-tuned ones."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import DEFAULT_MODEL, FINETUNED_HELP, PRETRAINED_HELP, check_models, split_csv, user_errors


def parse_floats(value: Optional[str], what: str) -> Optional[list[float]]:
    if not value:
        return None
    try:
        return [float(v) for v in split_csv(value)]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {value!r}") from None


def command(
    pretrained: str = typer.Option(DEFAULT_MODEL, "--pretrained", help=PRETRAINED_HELP),
    finetuned: List[str] = typer.Option(..., "--finetuned", help=FINETUNED_HELP),
    more: Optional[List[str]] = typer.Argument(None, help="Further fine-tuned models.", show_default=False),
    out: Path = typer.Option(..., "--out", help="Output HF directory (written atomically)."),
    alpha: str = typer.Option("0.25", "--alpha", help="Interpolation weight α (0 = θ₀, 1 = θ′), or auto[:RULE[:VALUE]]: "
                              "chosen from the fine-tuning run itself (linear merge of one "
                              "fine-tuning run folder; rules cka (default), ft-dev, held-out, drift (per-layer α); "
                              "see docs/merge.md)."),
    auto_limit: int = typer.Option(200, "--auto-limit", help="--alpha auto: at most N dev utterances (0 = all)."),
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

        sources = [*finetuned, *(more or [])]
        check_models([pretrained, *sources])
        value, extra = resolve_alpha(alpha, pretrained, sources, method, auto_limit)
        layer_alphas = extra["alpha_auto"].get("layer_alphas") if extra else None
        path = merge_models(
            pretrained, sources, out, method=method, alpha=value, layer_alphas=layer_alphas,
            weights=parse_floats(weights, "--weights"), density=density, seed=seed, majority_sign=majority_sign,
            dtype=dtype, excluded=excluded, overwrite=overwrite, card_extra=extra,
        )
        typer.echo(str(path))


def resolve_alpha(alpha: str, pretrained: str, sources: list, method: str, limit: int) -> tuple[float, Optional[dict]]:
    """``(α, card extra)``: a number as given, or ``auto…`` chosen from the one fine-tuning run in ``sources``
    (its choice, curve and cost go into the merged model's card and one log line). A per-layer rule's
    α per layer group is the extra's ``alpha_auto.layer_alphas``."""
    from ..merge.auto import choose_alpha, is_auto, run_folder

    if not is_auto(alpha):
        return parse_floats(alpha, "--alpha")[0], None
    if method != "linear" or len(sources) != 1:
        raise ValueError("--alpha auto chooses α for the linear merge of one fine-tuning run "
                         f"(got --method {method} with {len(sources)} fine-tuned model(s))")
    choice = choose_alpha(pretrained, run_folder(sources[0]), alpha.strip(), limit=limit or None)
    if choice.layer_alphas is not None:
        per = ", ".join(f"{g}: {a:.3f}" for g, a in sorted(choice.layer_alphas.items()))
        typer.echo(f"--alpha {alpha}: per-layer α by {choice.rule} ({choice.value:g}) in {choice.seconds:.1f} s: {per}",
                   err=True)
        return choice.alpha, {"alpha_auto": choice.to_json()}
    curve = ", ".join(f"{a:g}: {v:.4g}" for a, v in sorted(choice.curve.items()))
    typer.echo(f"--alpha {alpha}: α = {choice.alpha:g} by {choice.rule} ({choice.value:g}) in {choice.seconds:.1f} s; "
               f"{choice.metric} per α: {curve}", err=True)
    return choice.alpha, {"alpha_auto": choice.to_json()}

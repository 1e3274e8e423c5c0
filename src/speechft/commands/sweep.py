"""`speechft sweep`: merge at several α, probe each, record, plot, optionally select one α."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import (DEFAULT_MODEL, FINETUNED_HELP, PRETRAINED_HELP, TARGET_FIELD_HELP, TASK_MANIFESTS_HELP, TASK_COLUMNS_HELP, TASK_METRIC_HELP, TASK_NAME_HELP,
                      TASK_TYPE_HELP, check_models, device_option, get_task, split_csv, user_errors, user_task_from_options)
from .merge import parse_floats, resolve_alpha


def command(
    pretrained: str = typer.Option(DEFAULT_MODEL, "--pretrained", help=PRETRAINED_HELP),
    finetuned: List[str] = typer.Option(..., "--finetuned", help=FINETUNED_HELP),
    more: Optional[List[str]] = typer.Argument(None, help="Further fine-tuned models.", show_default=False),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated probe tasks (see 'speechft probe "
                                        "--list'); required unless --task-manifests gives your own task."),
    out: Path = typer.Option(..., "--out", help="Folder: sweep.jsonl (resumable), sweep.png, selected/."),
    alphas: str = typer.Option("0,0.1,0.25,0.5,0.75,1", "--alphas", help="Comma-separated α values; an entry "
                               "auto[:RULE[:VALUE]] adds the α that rule picks (as merge --alpha auto)."),
    auto_limit: int = typer.Option(200, "--auto-limit", help="auto entries: at most N dev utterances for the "
                                   "rule's signal (0 = all)."),
    method: str = typer.Option("linear", "--method", help="linear | task_arithmetic | ties | dare | dare_ties."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Per-model weights, comma-separated."),
    density: float = typer.Option(0.5, "--density", help="ties/dare: fraction of task-vector entries kept."),
    seed: int = typer.Option(0, "--seed", help="dare: seed of the random drop masks."),
    majority_sign: str = typer.Option("total", "--majority-sign", help="ties: sign election, total | frequency."),
    excluded: str = typer.Option("keep", "--excluded", help="Pre-training-only/head tensors: keep θ₀'s | drop."),
    models: str = typer.Option("memory", "--models", help="Where each α's encoder lives: memory | disk "
                               "(disk keeps them in OUT/models/)."),
    select: Optional[str] = typer.Option(None, "--select", help="Pick α and save OUT/selected/: 'mean-normalized' "
                                         "or 'ft-task:TASK,max-drop:X' (X relative to α=0, e.g. 0.02 or 2%)."),
    seeds: int = typer.Option(1, "--seeds", help="Probe seeds per task (0..N-1); records hold their mean."),
    limit: int = typer.Option(0, "--limit", help="At most N utterances per split (0 = all), for smoke tests."),
    quick: bool = typer.Option(False, "--quick", help="Quick-size lite data and fewer epochs."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override every task's number of training epochs."),
    fsdd: Optional[Path] = typer.Option(None, "--fsdd", help="Free Spoken Digit Dataset clone (fsdd-* tasks)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache root."),
    device: str = device_option(),
    task_manifests: Optional[str] = typer.Option(None, "--task-manifests", help=TASK_MANIFESTS_HELP),
    task_type: Optional[str] = typer.Option(None, "--task-type", help=TASK_TYPE_HELP, show_default=False),
    task_name: str = typer.Option("user", "--task-name", help=TASK_NAME_HELP + " Usable in --select ft-task:NAME."),
    target_field: Optional[str] = typer.Option(None, "--target-field", help=TARGET_FIELD_HELP, show_default=False),
    task_metric: Optional[str] = typer.Option(None, "--task-metric", help=TASK_METRIC_HELP, show_default=False),
    task_columns: Optional[str] = typer.Option(None, "--task-columns", help=TASK_COLUMNS_HELP, show_default=False),
) -> None:
    """α sweep: merge θ₀ with the fine-tuned models at each α, probe each merged encoder on the tasks,
    append one record per (α, task) to OUT/sweep.jsonl (pairs already there are skipped), plot metric vs
    α to OUT/sweep.png and, with --select, save the chosen α's encoder to OUT/selected/."""
    with user_errors(out=out, device=device):
        from ..merge.sweep import run_sweep

        check_models([pretrained, *finetuned, *(more or [])])
        if seeds < 1:
            raise ValueError("--seeds must be at least 1")
        user = user_task_from_options(task_manifests, task_type, task_name, target_field, task_metric, task_columns)
        task_list: list = [t for t in split_csv(tasks) if user is None or t != user.name]  # --tasks may name it
        if user is not None:
            task_list.append(user)
        if not task_list:
            raise ValueError("--tasks (or --task-manifests) is required")
        for t in task_list:
            if isinstance(t, str):
                get_task(t)
        sources = [*finetuned, *(more or [])]
        values = sweep_alphas(alphas, pretrained, sources, method, auto_limit, out)
        res = run_sweep(
            pretrained, sources, values, task_list, out,
            method=method, weights=parse_floats(weights, "--weights"), density=density, seed=seed,
            majority_sign=majority_sign, excluded=excluded, models=models, select=select,
            size="quick" if quick else "default", seeds=tuple(range(seeds)), limit=limit or None,
            fsdd_root=str(fsdd) if fsdd else None, epochs=epochs, cache_dir=str(cache_dir) if cache_dir else None,
        )
        for r in sorted(res.records, key=lambda r: (r["task"], r["alpha"])):
            typer.echo(f"{r['task']:<12} α={r['alpha']:<6g} {r['metric']} = {r['value']:.4f}")
        if res.plot:
            typer.echo(f"plot: {res.plot}")
        if res.selection:
            typer.echo(f"selected α={res.selection['alpha']:g} ({res.selection['rule']}): {res.selected_dir}")


def sweep_alphas(alphas: str, pretrained: str, sources: list, method: str, limit: int, out: Path) -> list:
    """The α of ``--alphas``: numbers as given, each ``auto…`` entry replaced by the α its rule picks (its
    choice, curve and cost appended to OUT/alpha_auto.jsonl)."""
    from ..merge.auto import is_auto, parse_rule
    from ..utils.io import append_jsonl

    values = []
    for entry in split_csv(alphas):
        if not is_auto(entry):
            values += parse_floats(entry, "--alphas")
            continue
        if parse_rule(entry.strip())[0].per_layer:
            raise ValueError(f"--alphas {entry}: this rule chooses an α per layer, not a point of the sweep; "
                             f"use it with `speechft merge --alpha {entry}`")
        value, card = resolve_alpha(entry, pretrained, sources, method, limit)
        Path(out).mkdir(parents=True, exist_ok=True)
        append_jsonl(Path(out) / "alpha_auto.jsonl", {"spec": entry, **card["alpha_auto"]})
        values.append(value)
    return list(dict.fromkeys(values))

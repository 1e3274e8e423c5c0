"""`speechft probe`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from ._common import (DEFAULT_MODEL, MODEL_REFS, TARGET_FIELD_HELP, TASK_MANIFESTS_HELP, TASK_COLUMNS_HELP, TASK_METRIC_HELP,
                      TASK_NAME_HELP, TASK_TYPE_HELP, check_models, device_option, get_task, split_csv, user_errors,
                      user_task_from_options)

log = logging.getLogger(__name__)


def list_tasks() -> str:
    from ..tasks import TASKS

    lines = []
    for t in TASKS.values():
        arrow = "↑" if t.higher_is_better else "↓"
        head = t.head + (f" {t.head_options()}" if t.head_options() else "")
        lines.append(f"{t.name:<13} {t.kind:<8} {t.target_field:<8} {t.metric + ' ' + arrow:<10} {head:<40} "
                     f"v{t.version}  {t.superb_analogue:<4} {t.description}")
    header = f"{'task':<13} {'kind':<8} {'target':<8} {'metric':<10} {'head':<40} ver SUPERB description"
    return "\n".join([header] + lines)


def command(
    model: Optional[List[str]] = typer.Option(None, "--model", help=f"Model reference(s) to probe: {MODEL_REFS}. "
                                              "Repeat or comma-separate to probe several (probe 'fbank' too for the "
                                              "SUPERB score)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task names (see --list). Default: "
                                        "every lite task plus fsdd-ks/fsdd-sid when FSDD is found."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder: results.jsonl (appended, resumable), "
                                       "summary.md, layer_weights.png. Required (except with --list)."),
    seeds: int = typer.Option(1, "--seeds", help="Number of seeds (0..N-1); more than one reports mean ± std."),
    limit: int = typer.Option(0, "--limit", help="At most N utterances per split (0 = all), for smoke tests."),
    quick: bool = typer.Option(False, "--quick", help="Quick-size lite data and fewer epochs."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override every task's number of training epochs."),
    fsdd: Optional[Path] = typer.Option(None, "--fsdd", help="Path of a Free Spoken Digit Dataset clone "
                                        "(default: $SPEECHFT_FSDD or ../shared/data/fsdd)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop invalid manifest rows (logged) instead of failing."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache root "
                                             "(default: $SPEECHFT_HOME/features)."),
    device: str = device_option(),
    task_manifests: Optional[str] = typer.Option(None, "--task-manifests", help=TASK_MANIFESTS_HELP),
    task_type: Optional[str] = typer.Option(None, "--task-type", help=TASK_TYPE_HELP, show_default=False),
    task_name: str = typer.Option("user", "--task-name", help=TASK_NAME_HELP),
    target_field: Optional[str] = typer.Option(None, "--target-field", help=TARGET_FIELD_HELP, show_default=False),
    task_metric: Optional[str] = typer.Option(None, "--task-metric", help=TASK_METRIC_HELP, show_default=False),
    task_columns: Optional[str] = typer.Option(None, "--task-columns", help=TASK_COLUMNS_HELP, show_default=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace results in --out of the same model and task "
                                   "that were made with other inputs (data, weights, settings); without it they are "
                                   "an error."),
    profile: str = typer.Option("fast", "--profile", help="Probe profile: 'fast' (speechft's heads and training "
                                "lengths, minutes on a CPU; scored against FBANK probed the same way) or 'superb' "
                                "(s3prl's downstream recipes for pr/asr/ks/sid/er/ic, scored against the published "
                                "reference points). See docs/probe.md."),
    list_: bool = typer.Option(False, "--list", help="List the registered tasks and exit."),
) -> None:
    """SUPERB-style probing: the encoder is frozen, a learnable softmax-weighted sum of all its hidden
    states feeds a head trained from scratch per task (cached features; dev picks the checkpoint; test
    metric reported), then prints raw metrics and the SUPERB score and writes summary.md and
    layer_weights.png."""
    if list_:
        typer.echo(list_tasks())
        return
    if out is None:
        typer.echo("error: --out is required (or use --list)", err=True)
        raise typer.Exit(2)
    with user_errors(out=out, device=device) as device:
        from ..probe import default_tasks, run_probe, write_reports

        from ..probe.profiles import get_profile

        get_profile(profile)
        refs = [m for item in model or [DEFAULT_MODEL] for m in split_csv(item)]
        check_models(refs)
        if seeds < 1:
            raise ValueError("--seeds must be at least 1")
        user = user_task_from_options(task_manifests, task_type, task_name, target_field, task_metric, task_columns)
        task_list: list = [get_task(n) for n in split_csv(tasks) if user is None or n != user.name]  # --tasks may name it
        if user is not None:
            task_list.append(user)
        if not task_list:
            task_list = [get_task(n) for n in default_tasks(str(fsdd) if fsdd else None)]
        for k, ref in enumerate(refs, 1):  # the overall progress line: model k of N
            log.info("model %d/%d: %s on %d task(s): %s", k, len(refs), ref, len(task_list),
                     ", ".join(t.name for t in task_list))
            run_probe(ref, task_list, out, seeds=tuple(range(seeds)), size="quick" if quick else "default",
                      fsdd_root=str(fsdd) if fsdd else None, limit=limit or None, epochs=epochs,
                      cache_dir=cache_dir, device=device, skip_bad=skip_bad, replace=overwrite, profile=profile)
        rep = write_reports(out)
    if rep.get("profile"):
        typer.echo(rep["profile"] + "\n")
    typer.echo(rep["table"])
    typer.echo(f"\nresults: {out / 'results.jsonl'}\nsummary: {rep['summary']}"
               + (f"\nlayer weights: {rep['plot']}" if rep["plot"] else ""))

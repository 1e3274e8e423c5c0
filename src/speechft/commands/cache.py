"""`speechft cache list` and `speechft cache prune`: the shared feature cache of frozen-encoder features."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import user_errors

app = typer.Typer(help="The feature cache: frozen-encoder features of every model probed, one folder per model "
                       "(by weight fingerprint). List it, or prune what has not been used for a while.",
                  no_args_is_help=True)

CACHE_DIR_HELP = "Feature cache root (default: $SPEECHFT_HOME/features, i.e. ~/.cache/speechft/features)."


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


@app.command("list")
def list_command(cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=CACHE_DIR_HELP)) -> None:
    """One line per model folder, most recently used first: fingerprint, name, split folders, size, last use."""
    from ..probe.cache import cache_root, list_cache

    root = cache_root(cache_dir)
    with user_errors():
        models = list_cache(root)
    now = time.time()
    typer.echo(f"{root}: {len(models)} model(s), {_size(sum(m.bytes for m in models))}")
    for m in models:
        busy = f"  in use by {', '.join(m.users)}" if m.users else ""
        typer.echo(f"  {m.fingerprint}  {m.name or '(unknown)':<28} {m.splits:3d} splits  {_size(m.bytes):>10}  "
                   f"used {_age(now - m.last_used)}{busy}")


@app.command("prune")
def prune_command(
    older_than: Optional[float] = typer.Option(None, "--older-than", help="Remove the models not used for this many "
                                               "days (fractions allowed: 0.5 = 12 hours)."),
    all_models: bool = typer.Option(False, "--all", help="Remove every model's features."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be removed; remove nothing."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help=CACHE_DIR_HELP),
) -> None:
    """Remove model folders from the feature cache; they are extracted again when next probed.
    Folders a running probe is using are kept (and named)."""
    from ..probe.cache import cache_root, prune_cache

    with user_errors():
        if (older_than is None) == (not all_models):
            raise ValueError("say which models to remove: --older-than DAYS or --all (not both)")
        gone, busy = prune_cache(cache_root(cache_dir), None if all_models else older_than, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for m in gone:
        typer.echo(f"  {verb} {m.fingerprint}  {m.name or '(unknown)'}  {_size(m.bytes)}")
    for m in busy:
        typer.echo(f"  kept {m.fingerprint}  {m.name or '(unknown)'}: in use by {', '.join(m.users)}")
    typer.echo(f"{verb} {len(gone)} model(s), {_size(sum(m.bytes for m in gone))}")

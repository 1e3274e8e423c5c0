"""What a command prints: one quiet line per stage (``-v`` for more), log lines never glued onto a
progress bar, none of transformers' own bars or logs, an overall "model k/N" / "α k/N" line for
multi-model work, and a progress indicator for the dev evaluation after the training bar's 100 %.

Real ``speechft`` processes; their stderr is not a terminal, so tqdm writes every bar refresh.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest
import yaml

from test_bad_input_commands import _good_manifest

ENV = {k: v for k, v in os.environ.items() if k not in ("SPEECHFT_LOG", "TQDM_DISABLE")}
ENV["OMP_NUM_THREADS"] = "1"
HF_NOISE = ("Loading weights", "Writing model shards", "transformers", "huggingface")
BAR = re.compile(r"\|[^|]*\| *\d+/\d+")  # tqdm's "| 3/40" part


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speechft.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=600)


def segments(text: str) -> list[str]:
    """What a terminal would show as separate lines: split on newlines and carriage returns."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # cursor moves of nested bars
    return [s.rstrip() for s in re.split(r"[\r\n]", text) if s.strip()]


def log_lines(text: str) -> list[str]:
    """The segments that are not progress bars."""
    return [s for s in segments(text) if not BAR.search(s)]


def glued(text: str) -> list[str]:
    """Segments holding a bar and more text after it (a log line written into a bar)."""
    return [s for s in segments(text) if (m := BAR.search(s)) and re.search(r"[a-z]{3,}: ", s[m.end():])]


@pytest.fixture(scope="module")
def user_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-output")
    paths = [_good_manifest(root / s, s, n) for s, n in (("train", 12), ("dev", 4), ("test", 4))]
    return root, ",".join(map(str, paths))


@pytest.mark.slow
def test_probe_two_models_prints_a_line_per_stage_and_nothing_from_transformers(user_task, tmp_path):
    _, manifests = user_task
    res = run("probe", "--model", "fbank,speechft-tiny", "--task-manifests", manifests, "--task-type", "classify",
              "--target-field", "label", "--epochs", 2, "--out", tmp_path / "p")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert not [n for n in HF_NOISE if n in out], out[-3000:]
    assert glued(res.stderr) == []
    lines = log_lines(res.stderr)
    assert [s for s in lines if s.startswith("model ")] == [
        "model 1/2: fbank on 1 task(s): user", "model 2/2: speechft-tiny on 1 task(s): user"]
    # per model: its progress line and its result line; nothing else unless something is wrong
    assert len(lines) <= 4, "\n".join(lines)
    assert not any(re.match(r"\d\d:\d\d:\d\d ", s) for s in lines), "times and logger names are for -v"

    res = run("probe", "--model", "fbank", "--task-manifests", manifests, "--task-type", "classify",
              "--target-field", "label", "--epochs", 2, "--out", tmp_path / "pv", "-v")
    assert res.returncode == 0, res.stderr[-3000:]
    verbose = log_lines(res.stderr)
    assert any("DEBUG" in s for s in verbose) and len(verbose) > 2, "\n".join(verbose)
    assert glued(res.stderr) == []


@pytest.mark.slow
def test_finetune_output_dev_progress_and_logs_between_bars(user_task, tmp_path):
    root, manifests = user_task
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump(dict(steps=6, eval_every=3, log_every=1, batch_seconds=2.0, tensorboard=False,
                                       num_threads=1)))
    res = run("-v", "finetune", "--model", "speechft-tiny", "--task-manifests", manifests, "--task-type", "classify",
              "--config", cfg, "--out", tmp_path / "ft")
    assert res.returncode == 0, res.stderr[-3000:]
    assert not [n for n in ("Loading weights", "Writing model shards") if n in res.stdout + res.stderr]
    assert "dev evaluation" in res.stderr, "no progress indicator during the dev evaluation"
    dev_logs = [s for s in segments(res.stderr) if "dev loss" in s]
    assert len(dev_logs) == 2 and glued(res.stderr) == [], "\n".join(segments(res.stderr))

    res = run("finetune", "--model", "speechft-tiny", "--task-manifests", manifests, "--task-type", "classify",
              "--config", cfg, "--out", tmp_path / "ft-quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(log_lines(res.stderr)) <= 3, "\n".join(log_lines(res.stderr))


def test_sweep_logs_alpha_k_of_n(tmp_path, caplog):
    from conftest import make_tiny_encoder
    from speechft.merge.sweep import run_sweep
    from speechft.models.io import save_encoder

    from test_sweep import StandInProbe

    save_encoder(make_tiny_encoder(seed=0), tmp_path / "m0")
    save_encoder(make_tiny_encoder(seed=1), tmp_path / "m1")
    with caplog.at_level(logging.INFO, logger="speechft"):
        run_sweep(str(tmp_path / "m0"), [str(tmp_path / "m1")], [0, 0.5, 1], ["lite-ks"], tmp_path / "sw",
                  probe_fn=StandInProbe(tmp_path / "m0", tmp_path / "m1"), plot=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("α ")]
    assert lines == ["α 1/3 (0): probing 1 task(s)", "α 2/3 (0.5): probing 1 task(s)", "α 3/3 (1): probing 1 task(s)"]

"""No command deletes or overwrites its own inputs, whatever the path nesting.

An --out that a command may replace (``--overwrite``, an atomic folder swap) must not be an input,
hold one, or lie inside one; the command stops with one line naming both paths (exit 2 on the
command line, ``ValueError`` from the API) before anything is written, and the inputs are intact.
Symlinks and relative paths are resolved; built-in model names and hub ids are not paths.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_tiny_encoder


def cli(*args):
    from speechft.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict:
    """Every file under ``root`` (or ``root`` itself) with the hash of its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    assert files, f"nothing to protect under {root}"
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def assert_refused(res, *paths) -> None:
    """Exit 2 with one ``error:`` line from the input check that names every path in ``paths``."""
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out "), res.stderr
    assert lines[0].endswith("that input: choose another --out"), lines[0]
    for p in paths:
        assert str(p) in lines[0], (p, lines[0])


def save_tiny(path: Path, seed: int = 0) -> Path:
    from speechft.models.io import save_encoder

    save_encoder(make_tiny_encoder(seed=seed), path, card={"name": path.name})
    return path


def fake_run(root: Path, encoder_from: Path | None = None, seed: int = 1) -> Path:
    """A fine-tuning run's layout: encoder/ (a model), head/, config.yaml, metrics.jsonl."""
    root.mkdir(parents=True)
    if encoder_from is not None:
        shutil.copytree(encoder_from, root / "encoder")
    else:
        save_tiny(root / "encoder", seed=seed)
    (root / "head").mkdir()
    (root / "head" / "head.json").write_text('{"kind": "ctc"}\n')
    (root / "config.yaml").write_text("run: {}\n")
    (root / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    return root


# -- the helper --------------------------------------------------------------------------------
def test_helper_relations_symlinks_relative_and_non_paths(tmp_path, monkeypatch):
    from speechft.utils.io import check_not_input

    run = fake_run(tmp_path / "run")
    enc = run / "encoder"
    (tmp_path / "link").symlink_to(run, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    refused = [  # (out, inputs, replaced, words in the message)
        ("run", {"--finetuned": "run/encoder"}, True, "contains the input --finetuned run/encoder"),
        ("link", ["run/encoder"], True, "contains the input"),                # out through a symlink
        ("run/encoder", [str(enc)], False, "is the input"),                    # relative out, absolute input
        ("link/encoder", {"--model": "run/encoder"}, False, "both resolve to"),
        ("run/encoder/merged", {"--model": "run/encoder"}, False, "lies inside the input --model run/encoder"),
        ("./run/./head/../encoder", ["run/encoder"], True, "is the input"),
    ]
    for out, inputs, replaced, words in refused:
        with pytest.raises(ValueError, match="choose another --out") as e:
            check_not_input(out, inputs, replaced=replaced)
        assert words in str(e.value) and "\n" not in str(e.value), (out, str(e.value))
    # allowed: siblings, an input inside an output that is only added to, non-path references
    check_not_input("run2", ["run/encoder"])
    check_not_input("run", ["run/encoder"], replaced=False)
    check_not_input("speechft-tiny", ["speechft-tiny", "fbank", "facebook/hubert-base-ls960", None, ""])
    check_not_input("run", {"--model": "speechft-tiny", "--manifest": ["missing.jsonl"]})


# -- merge -------------------------------------------------------------------------------------
def test_merge_out_holding_the_finetuned_run_is_refused_and_the_run_survives(tmp_path):
    """``speechft merge --pretrained speechft-tiny --finetuned RUN/encoder --out RUN --overwrite``."""
    from speechft.paths import ASSETS_DIR

    run = fake_run(tmp_path / "RUN", encoder_from=ASSETS_DIR / "speechft-tiny")
    before = snapshot(run)
    res = cli("merge", "--pretrained", "speechft-tiny", "--finetuned", run / "encoder", "--out", run, "--overwrite")
    assert_refused(res, run, run / "encoder")
    assert "contains the input" in res.stderr
    assert snapshot(run) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_merge_api_refuses_every_nesting(tmp_path, tiny_model_dir):
    from speechft.merge import merge_models

    run = fake_run(tmp_path / "run", seed=1)
    m0, m1 = str(tiny_model_dir), str(run / "encoder")
    before = {**snapshot(run), **snapshot(tiny_model_dir)}
    for out, words in [(run, "contains the input"), (run / "encoder", "is the input"),
                       (run / "encoder" / "merged", "lies inside the input"), (tiny_model_dir, "is the input")]:
        with pytest.raises(ValueError, match=words):
            merge_models(m0, [m1], out, overwrite=True, progress=False)
    assert {**snapshot(run), **snapshot(tiny_model_dir)} == before
    assert not (run / "encoder" / "merged").exists()
    out = merge_models(m0, [m1], tmp_path / "merged", overwrite=True, progress=False)  # a sibling is fine
    assert (out / "model.safetensors").is_file()


def test_sweep_selected_and_models_dirs_never_hold_an_input(tmp_path, tiny_model_dir):
    from speechft.merge.sweep import run_sweep

    out = tmp_path / "sweep"
    tuned = save_tiny(out / "selected", seed=2)  # last sweep's choice, given as θ′ to a new sweep in the same --out
    before = snapshot(tuned)

    def no_probe(*a, **k):
        raise AssertionError("probed before refusing")

    with pytest.raises(ValueError, match=r"sweep/selected is the input --finetuned"):
        run_sweep(str(tiny_model_dir), [str(tuned)], [0.0, 1.0], ["lite-ks"], out, probe_fn=no_probe, plot=False)
    with pytest.raises(ValueError, match="sweep/selected/probe lies inside the input --finetuned"):
        run_sweep(str(tiny_model_dir), [str(tuned)], [0.0], ["lite-ks"], tuned / "probe", probe_fn=no_probe, plot=False)
    disk = save_tiny(out / "models" / "alpha-0.5", seed=3)  # --models disk keeps (and replaces) these
    with pytest.raises(ValueError, match="sweep/models contains the input --finetuned"):
        run_sweep(str(tiny_model_dir), [str(disk)], [0.0, 1.0], ["lite-ks"], out, models="disk", probe_fn=no_probe)
    assert snapshot(tuned) == before and sorted(p.name for p in out.iterdir()) == ["models", "selected"]


# -- finetune ----------------------------------------------------------------------------------
def test_finetune_out_vs_model(tmp_path):
    run = fake_run(tmp_path / "RUN", seed=1)
    before = snapshot(run)
    res = cli("finetune", "--model", run / "encoder", "--task", "lite-asr", "--out", run, "--steps", "1")
    assert_refused(res, run, run / "encoder")
    res = cli("finetune", "--model", run / "encoder", "--task", "lite-asr", "--out", run / "encoder" / "ft")
    assert_refused(res, run / "encoder" / "ft", run / "encoder")
    assert snapshot(run) == before and not (run / "encoder" / "ft").exists()


def test_finetune_api_resolves_symlinks(tmp_path):
    from speechft.finetune import finetune

    model = save_tiny(tmp_path / "base")
    (tmp_path / "alias").symlink_to(model, target_is_directory=True)
    before = snapshot(model)
    with pytest.raises(ValueError, match="both resolve to"):
        finetune(str(model), "lite-asr", tmp_path / "alias", steps=1, progress=False)
    assert snapshot(model) == before and not (model / "config.yaml").exists()


# -- pretrain ----------------------------------------------------------------------------------
def test_pretrain_out_holding_the_init_encoder(tmp_path):
    from speechft.pretrain import pretrain

    run = fake_run(tmp_path / "it1", seed=3)
    before = snapshot(run)
    for kw in ({"init": str(run / "encoder")}, {"kmeans_from": str(run / "encoder"), "kmeans_layer": 1}):
        with pytest.raises(ValueError, match="contains the input --(init|kmeans-from)"):
            pretrain(manifest=None, out_dir=run, quick=True, progress=False, **kw)
    res = cli("pretrain", "--quick", "--init", run / "encoder", "--out", run)
    assert_refused(res, run, run / "encoder")
    assert snapshot(run) == before
    assert not (run / "run.json").exists() and not (run / "pretrain_config.yaml").exists()


# -- analyze -----------------------------------------------------------------------------------
def test_analyze_out_is_or_lies_inside_a_model(tmp_path, monkeypatch):
    model = save_tiny(tmp_path / "ft", seed=1)
    manifest = tmp_path / "dev.jsonl"
    manifest.write_text('{"id": "a", "path": "a.wav"}\n')
    before = {**snapshot(model), **snapshot(manifest)}
    res = cli("analyze", "--models", f"speechft-tiny,{model}", "--manifest", manifest, "--out", model)
    assert_refused(res, model)
    assert "is the input --models" in res.stderr
    res = cli("analyze", "--models", f"speechft-tiny,{model}", "--manifest", manifest, "--out", model / "analysis")
    assert_refused(res, model / "analysis", model)
    monkeypatch.chdir(tmp_path)
    res = cli("analyze", "--models", "speechft-tiny,ft", "--manifest", "dev.jsonl", "--out", "ft/../ft")
    assert_refused(res, "ft/../ft")
    assert {**snapshot(model), **snapshot(manifest)} == before
    assert not (model / "analysis").exists() and not (model / "analysis.jsonl").exists()


# -- convert -----------------------------------------------------------------------------------
def test_convert_out_holding_the_checkpoint(tmp_path):
    import torch

    src_dir = tmp_path / "release"
    src_dir.mkdir()
    ckpt = src_dir / "model.pt"
    torch.save({"w": torch.zeros(2)}, ckpt)
    before = snapshot(src_dir)
    res = cli("convert", ckpt, "--out", src_dir, "--overwrite")
    assert_refused(res, src_dir, ckpt)
    assert snapshot(src_dir) == before
    assert os.listdir(tmp_path) == ["release"]

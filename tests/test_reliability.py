"""Faults that must be refused cleanly: code-executing pickles, damaged checkpoints, models that do
not fit together, and output locations that cannot be written (read-only, not a folder, disk full).

Each refusal is checked for its exact reason, for the exit code of the command (2: the user's
input), and for leaving nothing behind: no output directory, no checkpoint, no temporary folder.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import make_tiny_encoder

SRC = Path(__file__).resolve().parents[1] / "src" / "speechft"


def _cli(args):
    from speechft.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _error_text(res) -> str:
    """What a refused command prints from its ``error: ...`` line on (never a traceback)."""
    assert "Traceback" not in res.output, res.output
    start = res.output.find("error: ")
    assert start >= 0, f"no 'error:' line in:\n{res.output}"
    return res.output[start:]


def _error_line(res) -> str:
    return _error_text(res).splitlines()[0]


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


# -- pickles that execute code ------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``exec``: it creates the marker file (what an attacker's file would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _evil_checkpoint(path: Path, marker: Path, wrap=None) -> Path:
    obj = {"model": {"w": torch.zeros(2)}, "payload": _Payload(marker)}
    torch.save(wrap(obj) if wrap else obj, path)
    return path


def _torch_load_calls():
    """(file, line, weights_only node, names of the enclosing function's parameters) of every torch.load."""
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            owner = [f for f in funcs if f.lineno <= node.lineno <= (f.end_lineno or f.lineno)]
            params = {a.arg for f in owner for a in f.args.args + f.args.kwonlyargs}
            yield path.relative_to(SRC.parent), node.lineno, kw.get("weights_only"), params


def test_every_torch_load_in_the_package_is_weights_only():
    """``weights_only=True`` everywhere, unless the caller passed an explicit ``allow_unsafe_*`` flag."""
    calls = list(_torch_load_calls())
    assert calls, "no torch.load found: the scan is broken"
    unsafe = []
    for where, line, wo, params in calls:
        if isinstance(wo, ast.Constant) and wo.value is True:
            continue
        if any("unsafe" in p for p in params):  # e.g. convert's read_checkpoint(allow_unsafe_pickle)
            continue
        unsafe.append(f"{where}:{line} (weights_only={ast.unparse(wo) if wo is not None else 'missing'})")
    assert not unsafe, "torch.load without weights_only=True and without an explicit unsafe flag: " + ", ".join(unsafe)


def test_convert_refuses_a_code_executing_pickle(tmp_path):
    marker = tmp_path / "pwned"
    src = _evil_checkpoint(tmp_path / "evil.pt", marker)
    res = _cli(["convert", src, "--out", tmp_path / "hf"])
    assert res.exit_code == 2, res.output
    line = _error_line(res)
    assert str(src) in line and "--allow-unsafe-pickle" in line, line
    assert not marker.exists(), "the pickle's code ran"
    assert _leftovers(tmp_path, "hf") == []


def test_pretrain_resume_does_not_run_code_from_a_planted_checkpoint(tmp_path):
    """A checkpoint.pt swapped in by someone else must not execute on --resume."""
    from speechft.pretrain import PretrainConfig, pretrain
    from speechft.pretrain.data import generate_quick_audio

    audio = generate_quick_audio(tmp_path / "audio", num=4, seconds=1.0, seed=1)
    cfg = PretrainConfig(model=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    conv_dim=[8] * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2),
                         num_clusters=4, kmeans_max_frames=2000, proj_dim=8, steps=4, batch_seconds=2.0,
                         max_seconds=1.0, checkpoint_every=1, log_every=1)
    out = tmp_path / "pt"
    pretrain(manifest=str(audio), out_dir=out, config=cfg, stop_after=1, progress=False)
    marker = tmp_path / "pwned"
    _evil_checkpoint(out / "checkpoint.pt", marker)
    with pytest.raises(Exception) as err:
        pretrain(out_dir=out, resume=True, progress=False)
    assert not marker.exists(), "resuming unpickled arbitrary code from checkpoint.pt"
    assert err.type is ValueError and f"{out / 'checkpoint.pt'}: unreadable checkpoint" in str(err.value), err.value


def test_finetune_resume_does_not_run_code_from_a_planted_checkpoint(tmp_path, tiny_model_dir):
    from speechft.finetune import finetune
    from speechft.finetune.checkpoint import latest_checkpoint
    from speechft.tasks import user_task

    from test_bad_input_commands import _good_manifest

    train, dev = _good_manifest(tmp_path / "d", "train", 6), _good_manifest(tmp_path / "d", "dev", 3)
    task = user_task("user", (train, dev, dev), "classify", "label")
    out = tmp_path / "ft"
    finetune(str(tiny_model_dir), task, out, steps=4, stop_after=2, checkpoint_every=2, eval_every=0,
             tensorboard=False, batch_seconds=2.0, progress=False)
    ckpt = latest_checkpoint(out)
    assert ckpt is not None
    marker = tmp_path / "pwned"
    _evil_checkpoint(ckpt / "rng.pt", marker, wrap=lambda o: [o])
    with pytest.raises(Exception) as err:
        finetune(None, None, out, resume=True, progress=False)
    assert not marker.exists(), "resuming unpickled arbitrary code from rng.pt"
    assert err.type is ValueError and f"{ckpt / 'rng.pt'}: unreadable checkpoint" in str(err.value), err.value


# -- damaged safetensors ------------------------------------------------------------------------
@pytest.fixture
def truncated_model(tmp_path, tiny_model_dir) -> tuple[Path, Path, int, int]:
    d = tmp_path / "damaged"
    shutil.copytree(tiny_model_dir, d)
    st = d / "model.safetensors"
    full = st.stat().st_size
    st.write_bytes(st.read_bytes()[: full // 2])
    return d, st, full, full // 2


def test_truncated_safetensors_is_reported_not_half_loaded(truncated_model):
    from speechft.models.io import load_encoder

    d, st, full, cut = truncated_model
    with pytest.raises(ValueError) as err:
        load_encoder(str(d))
    assert str(err.value) == (f"truncated or corrupt checkpoint file {st}: its header describes {full} bytes, "
                              f"the file has {cut}")
    st.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match=r"truncated or corrupt checkpoint file .*: shorter than the 8-byte header"):
        load_encoder(str(d))


@pytest.mark.parametrize("command", ["probe", "merge", "finetune"])
def test_commands_given_a_truncated_model_name_the_file_and_write_nothing(command, truncated_model, tiny_model_dir,
                                                                          tmp_path):
    d, st, _, _ = truncated_model
    out = tmp_path / "out"
    if command == "probe":
        args = ["probe", "--model", d, "--tasks", "lite-ks", "--out", out, "--quick", "--limit", "4"]
    elif command == "merge":
        args = ["merge", "--pretrained", tiny_model_dir, "--finetuned", d, "--out", out]
    else:
        from test_bad_input_commands import _good_manifest

        m = _good_manifest(tmp_path / "data", "train", 3)
        args = ["finetune", "--model", d, "--task-manifests", f"{m},{m},{m}", "--task-type", "classify",
                "--out", out, "--steps", "2"]
    res = _cli(args)
    assert res.exit_code == 2, res.output
    text = _error_text(res)
    assert str(st) in text and ("truncated" in text or "corrupt" in text), text
    assert not (out / "results.jsonl").exists() and not (out / "checkpoints").exists()
    assert not (out / "encoder").exists() and not (out / "model.safetensors").exists()
    if command == "merge":
        assert _leftovers(tmp_path, "out") == []


# -- merging models that do not fit together ----------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from speechft.models.io import save_encoder

    root = tmp_path_factory.mktemp("pair")
    for i in range(2):
        save_encoder(make_tiny_encoder(seed=i), root / f"m{i}", card={"name": f"m{i}"})
    return root


def _variant(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    sd, cfg = load_file(str(src / "model.safetensors")), json.loads((src / "config.json").read_text())
    edit(sd, cfg)
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _wider(sd, cfg):
    sd["encoder.layer_norm.weight"] = torch.ones(48)


def _fewer_keys(sd, cfg):
    del sd["encoder.layers.1.final_layer_norm.bias"]


def _other_arch(sd, cfg):
    cfg["hidden_act"] = "relu"


@pytest.mark.parametrize("edit,reason", [
    (_wider, r"shape mismatches (1): encoder.layer_norm.weight: F32[32] vs F32[48]"),
    (_fewer_keys, r"missing keys (1): encoder.layers.1.final_layer_norm.bias"),
    (_other_arch, r"hidden_act: 'gelu' vs 'relu'"),
], ids=["shape", "keys", "architecture"])
def test_merge_cli_refuses_models_that_do_not_fit(pair, tmp_path, edit, reason):
    bad = _variant(pair / "m1", tmp_path / "bad", edit)
    res = _cli(["merge", "--pretrained", pair / "m0", "--finetuned", bad, "--out", tmp_path / "out"])
    assert res.exit_code == 2, res.output
    text = _error_text(res)
    assert reason in text and str(bad) in text, text
    assert _leftovers(tmp_path, "out") == []


# -- outputs that cannot be written --------------------------------------------------------------
COMMANDS = ["finetune", "pretrain", "merge", "probe"]


@pytest.fixture
def data(tmp_path):
    from test_bad_input_commands import _good_manifest

    m = _good_manifest(tmp_path / "data", "train", 3)
    return m


def _args(command: str, out: Path, model: Path, pair_root: Path, manifest: Path) -> list:
    return {
        "finetune": ["finetune", "--model", model, "--task-manifests", f"{manifest},{manifest},{manifest}",
                     "--task-type", "classify", "--out", out, "--steps", "2"],
        "pretrain": ["pretrain", "--manifest", manifest, "--quick", "--steps", "2", "--out", out],
        "merge": ["merge", "--pretrained", pair_root / "m0", "--finetuned", pair_root / "m1", "--out", out],
        "probe": ["probe", "--model", model, "--task-manifests", f"{manifest},{manifest},{manifest}",
                  "--task-type", "classify", "--out", out, "--epochs", "1"],
    }[command]


def _forbid_work(monkeypatch):
    """Any of these running means the command started its long work before checking the output."""
    from speechft.finetune import loop
    from speechft.merge import stream
    from speechft.models import io as mio
    from speechft.pretrain import train as ptrain

    def boom(*a, **k):
        raise AssertionError("work started before the output location was checked")

    monkeypatch.setattr(loop, "train", boom)
    monkeypatch.setattr(ptrain, "fit_codebook", boom)
    monkeypatch.setattr(stream.StreamingSafetensorsWriter, "write", boom)
    monkeypatch.setattr(mio, "load_encoder", boom)


@pytest.mark.parametrize("command", COMMANDS)
def test_output_under_a_regular_file_fails_fast_with_a_clear_message(command, tmp_path, tiny_model_dir, pair, data,
                                                                      monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    out = blocker / "out"
    _forbid_work(monkeypatch)
    res = _cli(_args(command, out, tiny_model_dir, pair, data))
    assert res.exit_code == 2, res.output
    line = _error_line(res).lower()
    assert str(out).lower() in line, line
    assert "not a directory" in line or "not writable" in line, line
    assert blocker.read_text() == "a file, not a folder\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_read_only_output_fails_fast_with_a_clear_message(command, tmp_path, tiny_model_dir, pair, data, monkeypatch):
    """We run as root, where chmod does not stop writes: the read-only folder is simulated at the
    permission check every command shares (os.access), the way a read-only mount answers it."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access

    def access(path, mode, *a, **k):
        if mode & os.W_OK and Path(path).resolve() == ro.resolve():
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    _forbid_work(monkeypatch)
    out = ro / "out"
    res = _cli(_args(command, out, tiny_model_dir, pair, data))
    assert res.exit_code == 2, res.output
    assert _error_line(res) == f"error: output directory {out} is not writable ({ro} is read-only for this user)"
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_full_disk_fails_fast_with_a_clear_message(command, tmp_path, tiny_model_dir, pair, data, monkeypatch):
    """Disk full, simulated where every command asks for the free space (shutil.disk_usage)."""
    real = shutil.disk_usage

    def disk_usage(path):
        u = real(path)
        return type(u)(u.total, u.total - 2**20, 2**20)  # 1 MiB free

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    _forbid_work(monkeypatch)
    out = tmp_path / "full" / "out"
    res = _cli(_args(command, out, tiny_model_dir, pair, data))
    assert res.exit_code == 2, res.output
    line = _error_line(res)
    assert line.startswith(f"error: output directory {out}: only 1.0 MiB free on its disk, need at least "), line
    assert not (tmp_path / "full").exists() or list((tmp_path / "full").iterdir()) == []

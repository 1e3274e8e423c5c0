"""SIGINT / SIGTERM during fine-tuning and pre-training: the step is finished, a resumable
checkpoint saved, one line says how to resume, the exit code is 130 / 143; resuming gives exactly
the weights, head and metrics of a run that was never interrupted. ``finetune --out R --resume``
needs nothing but ``--out``, even when the run stopped before its first checkpoint.

Real ``speechft`` processes get the signal mid-run (after their first metrics record).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_bad_input_commands import _good_manifest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
# No periodic checkpoint before the end: the one the signal saves is the only one; log windows of 4
# steps, so a window cut by the interruption must continue on resume for equal metrics.
FT_CFG = dict(steps=40, lr=5e-4, beta=0.25, batch_seconds=2.0, log_every=4, eval_every=16, tensorboard=False,
              num_threads=1, checkpoint_every=1000)


def speechft(*args) -> list[str]:
    return [sys.executable, "-m", "speechft.cli", *map(str, args)]


def interrupt_mid_run(args: list, out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start ``speechft *args``, send ``sig`` once its first metrics record is written, wait for it."""
    p = subprocess.Popen(speechft(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = out / "metrics.jsonl", time.time() + 300
    while not (metrics.exists() and metrics.stat().st_size) and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert p.poll() is None, f"finished before the signal:\n{p.communicate()[1][-3000:]}"
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


def same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x and x.keys() == y.keys(), f"{a} and {b} hold different tensors"
    assert [k for k in x if not torch.equal(x[k], y[k])] == []


def records(path: Path) -> list[dict]:
    rows = [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in path.read_text().splitlines()]
    assert rows, f"{path} is empty"
    return rows


@pytest.fixture(scope="module")
def ft_setup(tmp_path_factory, tiny_model_dir):
    """A user classification task, a config, and the uninterrupted reference run."""
    from speechft.finetune import finetune
    from speechft.tasks import user_task

    root = tmp_path_factory.mktemp("interrupt-ft")
    train, dev = _good_manifest(root / "d", "train", 12), _good_manifest(root / "d", "dev", 3)
    cfg = root / "ft.yaml"
    cfg.write_text(yaml.safe_dump(FT_CFG))
    n = torch.get_num_threads()
    ref = finetune(str(tiny_model_dir), user_task("user", (train, dev, dev), "classify", "label"), root / "ref",
                   config=str(cfg), progress=False)
    torch.set_num_threads(n)
    args = ["finetune", "--model", tiny_model_dir, "--task-manifests", f"{train},{dev},{dev}", "--task-type",
            "classify", "--config", cfg]
    return root, args, ref


def check_same_run(ref: Path, out: Path) -> None:
    same_tensors(ref / "encoder" / "model.safetensors", out / "encoder" / "model.safetensors")
    same_tensors(ref / "head" / "head.safetensors", out / "head" / "head.safetensors")
    assert records(ref / "metrics.jsonl") == records(out / "metrics.jsonl")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_finetune_signal_saves_a_checkpoint_and_resume_equals_an_uninterrupted_run(ft_setup, sig):
    from speechft.finetune.checkpoint import list_checkpoints

    root, args, ref = ft_setup
    out = root / f"run-{sig.name}"
    res = interrupt_mid_run([*args, "--out", out], out, sig)
    assert res.returncode == 128 + sig, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert f"speechft finetune --out {out} --resume" in last and "Traceback" not in res.stderr, res.stderr[-3000:]
    ckpts = list_checkpoints(out)
    assert len(ckpts) == 1, "the signal's checkpoint is the only one (checkpoint_every 1000)"
    step = int(ckpts[0].name.split("-")[1])
    assert 4 <= step < FT_CFG["steps"] and f"at step {step} of {FT_CFG['steps']}" in last
    assert not (out / "encoder").exists()

    res = subprocess.run(speechft("finetune", "--out", out, "--resume"), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    check_same_run(ref, out)


def test_finetune_resume_needs_only_out_even_before_the_first_checkpoint(ft_setup):
    """Killed (SIGKILL: nothing saved) before its first checkpoint: ``--resume`` reads the model,
    task, recipe and settings from OUT/config.yaml and runs from step 0."""
    from speechft.finetune.checkpoint import list_checkpoints

    root, args, ref = ft_setup
    out = root / "no-ckpt"
    res = interrupt_mid_run([*args, "--out", out], out, signal.SIGKILL)
    assert res.returncode == -signal.SIGKILL and list_checkpoints(out) == [] and (out / "config.yaml").exists()

    res = subprocess.run(speechft("finetune", "--out", out, "--resume"), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "starting from step 0" in res.stderr
    check_same_run(ref, out)


def test_finetune_checkpoint_every_option(ft_setup):
    from speechft.finetune.checkpoint import list_checkpoints

    root, args, _ = ft_setup
    out = root / "every"
    res = subprocess.run(speechft(*args, "--out", out, "--checkpoint-every", 8, "--steps", 16), env=ENV,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [p.name for p in list_checkpoints(out)] == ["step-0000008", "step-0000016"]


# -- pre-training --------------------------------------------------------------------------------
PT_CFG = dict(model=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
              num_clusters=8, kmeans_max_frames=5000, proj_dim=16, steps=40, lr=1e-3, batch_seconds=4.0,
              max_seconds=1.0, checkpoint_every=1000, log_every=4, num_threads=1)


def test_pretrain_sigterm_saves_a_checkpoint_and_resume_equals_an_uninterrupted_run(tmp_path):
    from speechft.pretrain import PretrainConfig, pretrain
    from speechft.pretrain.data import generate_quick_audio

    audio = generate_quick_audio(tmp_path / "audio", num=12, seconds=1.5, seed=3)
    cfg = tmp_path / "pt.yaml"
    cfg.write_text(yaml.safe_dump(PretrainConfig(**PT_CFG).to_dict()))
    n = torch.get_num_threads()
    ref = tmp_path / "ref"
    pretrain(manifest=str(audio), out_dir=ref, config=str(cfg), dev=str(audio), progress=False)
    torch.set_num_threads(n)

    out = tmp_path / "run"
    res = interrupt_mid_run(["pretrain", "--manifest", audio, "--dev", audio, "--config", cfg, "--out", out,
                             "--checkpoint-every", 100], out, signal.SIGTERM)
    assert res.returncode == 143, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert f"speechft pretrain --out {out} --resume" in last and "Traceback" not in res.stderr, res.stderr[-3000:]
    step = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["step"]
    assert 4 <= step < PT_CFG["steps"] and f"at step {step} of" in last
    assert not (out / "encoder").exists()

    res = subprocess.run(speechft("pretrain", "--out", out, "--resume"), env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    for f in ("model.safetensors", "pretrain_head.safetensors"):
        same_tensors(ref / "encoder" / f, out / "encoder" / f)
    assert records(ref / "metrics.jsonl") == records(out / "metrics.jsonl")


def test_ctrl_c_outside_a_training_loop_exits_130_with_a_message(tmp_path):
    """Any other verb: a one-line message, no traceback, exit 130 (typer alone exits silently)."""
    from speechft.pretrain.data import generate_quick_audio

    audio = generate_quick_audio(tmp_path / "audio", num=4, seconds=1.0, seed=1)
    harness = ("import os, signal, sys\n"
               "from speechft.data import validate as v\n"
               "real = v.validate_manifests\n"
               "def slow(*a, **k):\n"
               "    os.kill(os.getpid(), signal.SIGINT)\n"
               "    return real(*a, **k)\n"
               "v.validate_manifests = slow\n"
               "from speechft import cli\n"
               "sys.argv = ['speechft', 'validate', sys.argv[1]]\n"
               "cli.main()\n")
    res = subprocess.run([sys.executable, "-c", harness, str(audio)], env=ENV, capture_output=True, text=True)
    assert res.returncode == 130, res.stderr[-3000:]
    assert res.stderr.strip().splitlines()[-1] == "speechft: interrupted (SIGINT)", res.stderr[-3000:]
    assert "Traceback" not in res.stderr

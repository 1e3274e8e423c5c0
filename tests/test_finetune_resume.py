"""Resume after a real SIGKILL: the resumed run ends with exactly the weights of an uninterrupted one."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

CONFIG = """\
steps: 10
lr: 1.0e-3
beta: 0.25
batch_seconds: 4.0
checkpoint_every: 2
keep_checkpoints: 3
eval_every: 0
log_every: 1
tensorboard: false
head: {hidden: 16, proj: 16, layers: 1}
"""


def _cmd(*args):
    return [sys.executable, "-m", "speechft.cli", "finetune", *args]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tiny_model_dir, lite_quick, tmp_path):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(CONFIG)
    env = {**os.environ, "SPEECHFT_LOG": "WARNING"}
    common = ["--model", str(tiny_model_dir), "--task", "lite-asr", "--quick", "--config", str(cfg)]
    full, killed = tmp_path / "full", tmp_path / "killed"
    ref = subprocess.Popen(_cmd(*common, "--out", str(full)), env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_cmd(*common, "--out", str(killed)), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    # Kill it for good (no cleanup possible) once a few checkpoints exist, well before the end.
    mark = killed / "checkpoints" / "step-0000004" / "state.pt"
    deadline = time.time() + 600
    while not mark.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (killed / "encoder").exists()
    done = sorted(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("step-*"))
    assert done and 4 <= done[-1] < 10

    res = subprocess.run(_cmd("--out", str(killed), "--resume"), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert ref.wait() == 0, ref.stderr.read()[-3000:]

    a, b = _weights(full / "encoder" / "model.safetensors"), _weights(killed / "encoder" / "model.safetensors")
    assert a and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ha, hb = _weights(full / "head" / "head.safetensors"), _weights(killed / "head" / "head.safetensors")
    assert ha and ha.keys() == hb.keys()  # the same head tensors on both sides, then the same values
    assert [k for k in ha if not torch.equal(ha[k], hb[k])] == []
    # and it did fine-tune: the transformer moved away from theta0
    theta0 = _weights(tiny_model_dir / "model.safetensors")
    layers = [k for k in a if k.startswith("encoder.layers.")]
    assert layers and any(not torch.equal(a[k], theta0[k]) for k in layers)

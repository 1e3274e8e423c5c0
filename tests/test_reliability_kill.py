"""SIGKILL at the worst moments: resume must give the bit-identical result, and an interrupted save
must never leave anything at the output path that loads as a model.

Kill points (real ``speechft`` processes, killed with SIGKILL):

* inside a checkpoint write, after the data is written but before it is renamed into place
  (fine-tuning: the checkpoint folder; pre-training: checkpoint.pt);
* inside the final save, before the finished encoder folder is renamed into place;
* merging: half-way through writing the merged weights, just before the output folder is renamed
  into place, and at a random (seeded) moment while the output is being written.

Precise kill points are reached by running the real command under a tiny harness that sends
SIGKILL to its own process when the Nth ``os.replace`` onto a matching destination (or the Nth
merged tensor write) is about to happen: nothing is flushed or cleaned up, exactly as with an
external ``kill -9``. The fine-tuning and pre-training owners' tests cover a kill between
checkpoints; these cover the other points. References are uninterrupted runs on CPU.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow

# Runs `speechft <args>`; SIGKILLs itself at the KILL_NTH os.replace whose destination matches
# KILL_DST, or at the KILL_WRITE_NTH tensor the streaming merge writer is asked to write.
HARNESS = r"""
import os, re, signal, sys
dst_pat, nth = os.environ.get("KILL_DST"), int(os.environ.get("KILL_NTH", "0"))
write_nth = int(os.environ.get("KILL_WRITE_NTH", "0"))
seen = {"replace": 0, "write": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if dst_pat:
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if re.search(dst_pat, os.fspath(dst)):
            seen["replace"] += 1
            if seen["replace"] == nth:
                die()
        return real_replace(src, dst, *a, **k)
    os.replace = replace
if write_nth:
    from speechft.merge import stream
    real_write = stream.StreamingSafetensorsWriter.write
    def write(self, key, tensor):
        seen["write"] += 1
        if seen["write"] == write_nth:
            die()
        return real_write(self, key, tensor)
    stream.StreamingSafetensorsWriter.write = write
from speechft.cli import main
sys.argv = ["speechft", *sys.argv[1:]]
main()
"""
ENV = {**os.environ, "SPEECHFT_LOG": "WARNING", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def run_killed(args: list, log: Path, **kill) -> subprocess.CompletedProcess:
    """Run ``speechft *args`` under the harness; it must die by SIGKILL at the requested point."""
    env = {**ENV, **{k: str(v) for k, v in kill.items()}}
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, "-c", HARNESS, *map(str, args)], env=env, stdout=f, stderr=subprocess.STDOUT,
                           timeout=600)
    assert p.returncode == -signal.SIGKILL, f"not killed at {kill} (exit {p.returncode}):\n{log.read_text()[-3000:]}"
    return p


def same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys(), f"{a} and {b} hold different tensors"
    diff = [k for k in x if not torch.equal(x[k], y[k])]
    assert not diff, f"{len(diff)} tensors differ between {a} and {b}, e.g. {diff[:3]}"


def does_not_load(path: Path) -> None:
    from speechft.models.io import load_encoder

    with pytest.raises(Exception):
        load_encoder(str(path))


def strip_times(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in ("elapsed_s", "time")}
            for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# -- fine-tuning ---------------------------------------------------------------------------------
def test_finetune_killed_inside_a_checkpoint_write_and_the_final_save_resumes_bit_identical(
        tmp_path, tiny_model_dir, restore_threads):
    from speechft.finetune import finetune
    from speechft.finetune.checkpoint import latest_checkpoint, list_checkpoints
    from speechft.tasks import user_task

    from test_bad_input_commands import _good_manifest

    train, dev = _good_manifest(tmp_path / "d", "train", 12), _good_manifest(tmp_path / "d", "dev", 3)
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump(dict(steps=8, checkpoint_every=2, keep_checkpoints=2, eval_every=4, log_every=1,
                                       batch_seconds=2.0, tensorboard=False, num_threads=1, lr=5e-4)))
    task = user_task("user", (train, dev, dev), "classify", "label")
    ref = finetune(str(tiny_model_dir), task, tmp_path / "ref", config=str(cfg), progress=False)

    out = tmp_path / "run"
    args = ["finetune", "--model", tiny_model_dir, "--task-manifests", f"{train},{dev},{dev}", "--task-type",
            "classify", "--out", out, "--config", cfg]
    # 1. killed while the second checkpoint (step 4) is being put in place
    run_killed(args, tmp_path / "kill1.log", KILL_DST=r"/checkpoints/step-\d+$", KILL_NTH=2)
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002"]
    partial = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert partial and all((p / "state.pt").exists() for p in partial), "the interrupted checkpoint was not written"
    assert not (out / "encoder").exists()
    # 2. resumed, then killed just before the finished encoder is put in place
    run_killed(["finetune", "--out", out, "--resume"], tmp_path / "kill2.log", KILL_DST=r"/encoder$", KILL_NTH=1)
    assert latest_checkpoint(out).name == "step-0000008"
    assert not (out / "encoder").exists(), "an interrupted save left an encoder folder"
    does_not_load(out / "encoder")
    # 3. resumed to the end: the same weights, head and metrics as the run that was never interrupted
    finetune(None, None, out, resume=True, progress=False)
    same_tensors(ref / "encoder" / "model.safetensors", out / "encoder" / "model.safetensors")
    heads = sorted(p.name for p in (ref / "head").glob("*.safetensors"))
    assert heads, "no head weights found"
    for name in heads:
        same_tensors(ref / "head" / name, out / "head" / name)
    assert strip_times(ref / "metrics.jsonl") == strip_times(out / "metrics.jsonl")


# -- pre-training --------------------------------------------------------------------------------
PT_CFG = dict(model=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
              num_clusters=8, kmeans_max_frames=5000, proj_dim=16, steps=12, lr=1e-3, batch_seconds=4.0,
              max_seconds=1.0, checkpoint_every=3, log_every=2, num_threads=1)


def test_pretrain_killed_inside_a_checkpoint_write_and_the_final_save_resumes_bit_identical(tmp_path,
                                                                                           restore_threads):
    from speechft.pretrain import PretrainConfig, pretrain
    from speechft.pretrain.data import generate_quick_audio

    audio = generate_quick_audio(tmp_path / "audio", num=12, seconds=1.5, seed=3)
    cfg = tmp_path / "pt.yaml"
    cfg.write_text(yaml.safe_dump(PretrainConfig(**PT_CFG).to_dict()))
    ref = tmp_path / "ref"
    pretrain(manifest=str(audio), out_dir=ref, config=str(cfg), progress=False)

    out = tmp_path / "run"
    # 1. killed while the second checkpoint (step 6) is being put in place: the first one survives
    run_killed(["pretrain", "--manifest", audio, "--config", cfg, "--out", out], tmp_path / "kill1.log",
               KILL_DST=r"/checkpoint\.pt$", KILL_NTH=2)
    assert torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 3
    assert [p.name for p in out.iterdir() if p.name.startswith(".checkpoint.pt.")], "no interrupted write to see"
    assert not (out / "encoder").exists()
    # 2. resumed, then killed just before the finished encoder folder is put in place
    run_killed(["pretrain", "--out", out, "--resume"], tmp_path / "kill2.log", KILL_DST=r"/encoder$", KILL_NTH=1)
    assert torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 12
    assert not (out / "encoder").exists(), "an interrupted save left an encoder folder"
    does_not_load(out / "encoder")
    # 3. resumed to the end: bit-identical to the uninterrupted run
    res = pretrain(out_dir=out, resume=True, progress=False)
    assert res["finished"]
    for f in ("model.safetensors", "pretrain_head.safetensors"):
        same_tensors(ref / "encoder" / f, out / "encoder" / f)
    assert strip_times(ref / "metrics.jsonl") == strip_times(out / "metrics.jsonl")


# -- merging -------------------------------------------------------------------------------------
MERGE_ARCH = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
                  conv_dim=(256,) * 7, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16)


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    """θ₀ and θ′ of a ~15 M-parameter HuBERT (~60 MB each): writing the merge takes a moment."""
    from transformers import AutoModel, HubertConfig

    root = tmp_path_factory.mktemp("big-pair")
    config = HubertConfig(**MERGE_ARCH)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in AutoModel.from_config(config).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    for name, sd in (("m0", base), ("m1", {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()})):
        d = root / name
        d.mkdir()
        config.save_pretrained(d)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return root, len(shapes)


def _check_merge_output(out: Path, ref: Path) -> str:
    """The output path holds nothing, or the complete merged model; temporary folders are hidden."""
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert all(p.name.endswith(".tmp") for p in leftovers), leftovers
    if not out.exists():
        return "absent"
    same_tensors(ref / "model.safetensors", out / "model.safetensors")
    assert json.loads((out / "config.json").read_text()) == json.loads((ref / "config.json").read_text())
    return "complete"


def test_merge_killed_while_writing_never_leaves_a_loadable_partial_output(tmp_path, big_pair):
    from speechft.merge import merge_models

    root, n_tensors = big_pair
    m0, m1 = root / "m0", root / "m1"
    ref = merge_models(str(m0), [str(m1)], tmp_path / "ref", alpha=0.25, progress=False)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "merged"
    args = ["merge", "--pretrained", m0, "--finetuned", m1, "--out", out, "--alpha", "0.25"]

    # 1. half-way through the merged weights
    run_killed(args, tmp_path / "kill1.log", KILL_WRITE_NTH=n_tensors // 2)
    assert _check_merge_output(out, ref) == "absent"
    partial = [p for p in work.iterdir() if p.name.startswith(".merged.")]
    assert len(partial) == 1 and (partial[0] / "model.safetensors").exists()
    does_not_load(partial[0])  # half a safetensors file and no config: never usable
    # 2. everything written, killed just before the folder is renamed into place
    run_killed(args, tmp_path / "kill2.log", KILL_DST=r"/merged$", KILL_NTH=1)
    assert _check_merge_output(out, ref) == "absent"
    # 3. external SIGKILLs at seeded random moments while the output is being written
    rng = np.random.default_rng(1234)
    outcomes = []
    for trial in range(2):
        before = {p.name for p in work.iterdir()}
        p = subprocess.Popen([sys.executable, "-m", "speechft.cli", *map(str, args)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while p.poll() is None and time.time() < deadline:  # wait for the output to start appearing
            if any(n.startswith(".merged.") for n in {q.name for q in work.iterdir()} - before):
                break
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        killed = p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.wait()
        state = _check_merge_output(out, ref)  # killed or not: nothing, or the whole reference
        outcomes.append((killed, state))
        if not killed:
            assert p.returncode == 0 and state == "complete", (p.returncode, state)
        if state == "complete":
            break  # the output is in place: a later run would (rightly) refuse to overwrite it
    # 4. a fresh merge into the same place succeeds despite the leftovers and gives the reference
    if not out.exists():
        merge_models(str(m0), [str(m1)], out, alpha=0.25, progress=False)
    assert _check_merge_output(out, ref) == "complete"

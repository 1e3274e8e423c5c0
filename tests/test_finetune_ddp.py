"""Two real processes (torchrun, gloo on CPU) drive the same loop; the result matches one process
that sees the same global batches (grad_accum=2) within float tolerance."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

OPTS = dict(recipe="stable", steps=4, size="quick", progress=False, beta=0.25, lr=1e-3, batch_seconds=4.0,
            eval_every=0, checkpoint_every=1, keep_checkpoints=10, log_every=1, tensorboard=False,
            head={"hidden": 16, "proj": 16, "layers": 1})

SCRIPT = """\
import json, sys
from speechft.finetune import finetune
finetune(sys.argv[1], "lite-asr", sys.argv[2], **json.loads(sys.argv[3]))
"""


def _torchrun() -> str:
    exe = Path(sys.executable).with_name("torchrun")
    if not exe.exists():
        pytest.skip("torchrun not found beside the Python interpreter")
    return str(exe)


def _state(out: Path, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"step-{step:07d}" / "state.pt", weights_only=False)


@pytest.mark.slow
def test_two_processes_match_one_process(tiny_model_dir, lite_quick, tmp_path):
    from speechft.finetune import finetune

    script = tmp_path / "ddp_ft.py"
    script.write_text(SCRIPT)
    two = tmp_path / "two"
    env = {**os.environ, "SPEECHFT_LOG": "WARNING", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([_torchrun(), "--standalone", "--nproc_per_node", "2", str(script), str(tiny_model_dir),
                          str(two), json.dumps({**OPTS, "grad_accum": 1})], env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    one = finetune(str(tiny_model_dir), "lite-asr", tmp_path / "one", **{**OPTS, "grad_accum": 2})

    assert "world_size: 2" in (two / "config.yaml").read_text()
    assert _state(two, 4)["world_size"] == 2 and len(torch.load(two / "checkpoints" / "step-0000004" / "rng.pt",
                                                                weights_only=False)) == 2
    # the head-only step leaves the encoder bit-identical under DDP too
    s1 = _state(two, 1)["model"]
    from safetensors.torch import load_file

    theta0 = load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(torch.equal(s1["encoder.model." + k], v) for k, v in theta0.items())

    # same global batches, same units, same loss; weights equal within float tolerance
    recs = [[r for r in map(json.loads, (o / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
            for o in (two, one)]
    assert len(recs[0]) == len(recs[1]) == 4
    assert [r["units"] for r in recs[0]] == [r["units"] for r in recs[1]]
    for r2, r1 in zip(*recs):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
    a, b = _state(two, 4)["model"], _state(one, 4)["model"]
    assert a and a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"largest weight difference 2 processes vs 1: {worst:.2e}")
    assert worst < 1e-4, f"largest weight difference {worst}"
    moved = max(float((a[k].float() - theta0[k[len("encoder.model."):]].float()).abs().max())
                for k in a if k.startswith("encoder.model.encoder.layers."))
    assert moved > 100 * worst  # the comparison is not vacuous: training moved the weights far more

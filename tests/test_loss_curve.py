"""A pinned loss curve: 4 steps of stable fine-tuning (2 head-only, 2 full) of the tiny test HuBERT.

The data are generated tones (no espeak, no corpus), the seeds are fixed, it runs on the CPU on one
thread, so the training losses are a pure function of the code and of torch's numerics. A change in
them means the training numerics changed (data order, masking, head, loss normalisation, optimizer,
schedule, initialisation...): if that change is intended, regenerate the values and say why in the
commit. To regenerate, run in a fresh process, twice, and check that both print the same numbers:

    SPEECHFT_PRINT_LOSSES=1 OMP_NUM_THREADS=1 .venv/bin/pytest -q -s tests/test_loss_curve.py

then paste the printed list into EXPECTED.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import sine

# Training loss of steps 1..4 (metrics.jsonl "loss"). Regenerate with SPEECHFT_PRINT_LOSSES=1 (see the
# docstring) only for an intended change: different values mean the training numerics changed.
EXPECTED = [28.586887, 17.972992, 12.805394, 11.969395]

WORDS = ["ab", "ba", "abc", "cab", "bca", "ca"]


def tone_task(root):
    """A CTC user task of short tones whose text is a few letters (train 12, dev 3, test 3)."""
    from speechft.tasks import user_task

    wav = root / "wav"
    wav.mkdir(parents=True)
    paths = []
    for split, n in (("train", 12), ("dev", 3), ("test", 3)):
        rows = []
        for i in range(n):
            k = len(rows) + {"train": 0, "dev": 100, "test": 200}[split]
            seconds = 0.5 + 0.05 * (k % 7)
            f = wav / f"{split}-{i}.wav"
            sf.write(f, sine(seconds, freq=150.0 + 37.0 * (k % 11), seed=k), 16000, subtype="PCM_16")
            rows.append({"id": f"{split}-{i}", "audio": str(f), "text": WORDS[k % len(WORDS)],
                         "duration": seconds})
        p = root / f"{split}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(p))
    return user_task("tones", tuple(paths), "ctc", "text")


def test_stable_finetuning_loss_curve_is_pinned(tiny_model_dir, tmp_path):
    from speechft.finetune import finetune

    task = tone_task(tmp_path / "data")
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        finetune(str(tiny_model_dir), task, out, recipe="stable", steps=4, beta=0.5, lr=1e-3, head_lr=1e-3,
                 seed=0, num_threads=1, batch_seconds=2.0, eval_every=0, checkpoint_every=4, log_every=1,
                 tensorboard=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r["phase"] for r in train] == ["head-only"] * 2 + ["full"] * 2
    losses = [r["loss"] for r in train]
    if os.environ.get("SPEECHFT_PRINT_LOSSES"):
        print("\nEXPECTED =", [float(f"{x:.8g}") for x in losses])
    assert len(EXPECTED) == 4, "EXPECTED is not filled in (see the module docstring)"
    np.testing.assert_allclose(losses, EXPECTED, rtol=1e-4, atol=0,
                               err_msg="the fine-tuning loss curve changed: the training numerics changed")

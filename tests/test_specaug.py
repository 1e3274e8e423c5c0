"""Paper-exact fine-tuning options: SpecAugment on the representations and long-utterance handling."""
import numpy as np
import pytest
import torch

from speechft.finetune import finetune, load_config
from speechft.finetune.data import load_task_data
from speechft.finetune.specaug import S3PRL_ASR, SpecAugment, SpecAugmentConfig
from test_probe import make_tone_task


def test_s3prl_values_are_the_cited_config():
    # s3prl downstream/asr/config.yaml: time_warp_window 5, time_mask_width_range [0, 40],
    # num_time_mask 2, freq_mask_width_range [0, 50], num_freq_mask 4
    assert SpecAugmentConfig.from_option("s3prl") == SpecAugmentConfig(5, 2, 40, 4, 50)
    assert S3PRL_ASR == dict(time_warp=5, time_masks=2, time_mask_width=40, freq_masks=4, freq_mask_width=50)
    assert SpecAugmentConfig.from_option(None) is None and SpecAugmentConfig.from_option({}) is None
    with pytest.raises(ValueError, match="specaugment key"):
        load_config(specaugment={"time_mask": 2})
    with pytest.raises(ValueError, match="specaugment.freq_masks"):
        load_config(specaugment={"freq_masks": -1})
    with pytest.raises(ValueError, match="long_utterances"):
        load_config(long_utterances="trim")


def test_masks_are_shared_by_every_state_stay_inside_the_frames_and_only_in_training():
    torch.manual_seed(0)
    B, T, F, L = 3, 60, 64, 4
    base = torch.randn(B, T, F) + 5.0  # no exact zeros before masking
    states = [base * (k + 1) for k in range(L)]
    lens = torch.tensor([60, 45, 20])
    aug = SpecAugment(SpecAugmentConfig(time_warp=0, time_masks=2, time_mask_width=10, freq_masks=2,
                                        freq_mask_width=8))
    aug.eval()
    assert all(a is b for a, b in zip(aug(states, lens), states))  # eval: untouched
    aug.train()
    out = aug(states, lens)
    zero = [o == 0 for o in out]
    assert zero[0].any() and all(torch.equal(zero[0], z) for z in zero)  # one mask for every state
    for b, n in enumerate(lens.tolist()):
        time_masked = zero[0][b].all(dim=1)  # frames masked across all features
        assert not time_masked[n:].any()  # padding frames are never chosen for time masks
        assert torch.equal(out[0][b][~zero[0][b]], states[0][b][~zero[0][b]])  # the rest unchanged (no warp)
    # a warp keeps the shape and the padding, and moves frames inside the real ones
    warp = SpecAugment(SpecAugmentConfig(time_warp=5)).train()
    w = warp(states, lens)
    assert all(o.shape == s.shape for o, s in zip(w, states))
    assert torch.equal(w[0][2, 20:], states[0][2, 20:])


def test_finetune_with_specaugment_runs_and_differs(tiny_model_dir, tmp_path):
    opts = dict(size="quick", progress=False, batch_seconds=4.0, head={"hidden": 16, "proj": 16, "layers": 1},
                eval_every=0, checkpoint_every=4, log_every=1, tensorboard=False, steps=4, recipe="regular")
    plain = finetune(str(tiny_model_dir), "lite-asr", tmp_path / "a", **opts)
    aug = finetune(str(tiny_model_dir), "lite-asr", tmp_path / "b", specaugment="s3prl", **opts)
    import json

    losses = [[json.loads(l)["loss"] for l in (p / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
              for p in (plain, aug)]
    assert losses[0][0] != losses[1][0]  # the first batch already sees masks
    assert "specaugment: s3prl" in (aug / "config.yaml").read_text()


def test_long_utterances_are_dropped_for_ctc_and_cropped_for_labels(tmp_path):
    ctc = make_tone_task(tmp_path / "ctc", kind="ctc", n=(30, 8, 8))
    cls = make_tone_task(tmp_path / "cls", n=(24, 8, 8))
    cfg = load_config(max_seconds=0.8)
    full = load_task_data(ctc, "default", None, False, load_config(max_seconds=None))
    data = load_task_data(ctc, "default", None, False, cfg)
    assert 0 < len(data.train) < len(full.train) and max(data.train.durations()) <= 0.8
    assert len(data.dev) == len(full.dev)
    longest = int(np.argmax(data.dev.durations()))
    assert data.dev.durations()[longest] > 0.8 and len(data.dev[longest]["wav"]) > 0.8 * 16000  # dev is whole
    crop = load_task_data(ctc, "default", None, False, load_config(max_seconds=0.8, long_utterances="crop"))
    assert len(crop.train) == len(full.train)
    lab = load_task_data(cls, "default", None, False, load_config(max_seconds=0.4, min_seconds=0.1))
    assert len(lab.train) == 24 and max(len(lab.train[i]["wav"]) for i in range(24)) <= int(0.4 * 16000)
    with pytest.raises(ValueError, match="every utterance is longer than max_seconds=0.2"):
        load_task_data(ctc, "default", None, False, load_config(max_seconds=0.2, min_seconds=0.1))


def test_paper_config_has_the_official_values():
    """configs/finetune-paper.yaml = the official code's TED-LIUM recipe (docs/finetune.md's table)."""
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "configs" / "finetune-paper.yaml")
    assert (cfg.steps, cfg.lr, cfg.effective_head_lr, cfg.max_batch_size) == (50000, 1e-4, 1e-4, 16)
    assert cfg.select == "best" and cfg.freeze_cnn is True and cfg.long_utterances == "drop"
    assert cfg.head == {"proj": 256, "hidden": 256, "layers": 3, "dropout": 0.2}
    assert SpecAugmentConfig.from_option(cfg.specaugment) == SpecAugmentConfig(**S3PRL_ASR)
    assert cfg.max_seconds == 60.0


def test_reproduce_and_study_pass_the_head_lr_or_the_single_lr():
    from speechft.pipeline import recipe_options
    from speechft.pipeline_config import ReproduceConfig
    from speechft.study_config import StudyConfig

    for cls in (ReproduceConfig, StudyConfig):
        assert recipe_options(cls(), "stable")["head_lr"] == 1e-3
        one = recipe_options(cls(ft_head_lr=None, ft_lr=2e-4), "regular")
        assert one["head_lr"] == one["lr"] == 2e-4

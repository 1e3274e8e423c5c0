"""HuBERT-style pre-training: features, targets, masking, loss, saving, exact resume, CLI."""
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

from speechft.pretrain import PretrainConfig, load_config, mfcc, pretrain, span_mask
from speechft.pretrain.data import AudioStore, crop_plan, epoch_batches, generate_quick_audio
from speechft.pretrain.kmeans import Codebook, FeatureSource, compute_targets, fit_codebook
from speechft.pretrain.mfcc import num_frames
from speechft.pretrain.model import PretrainHead

SMALL_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def small_cfg(**kw) -> PretrainConfig:
    base = dict(model=SMALL_MODEL, num_clusters=8, kmeans_max_frames=5000, proj_dim=16, steps=8, lr=1e-3,
                batch_seconds=4.0, max_seconds=1.0, checkpoint_every=4, log_every=2)
    base.update(kw)
    return PretrainConfig(**base)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    return generate_quick_audio(tmp_path_factory.mktemp("pt-audio"), num=12, seconds=1.5, seed=3)


@pytest.fixture(scope="module")
def trained(audio, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pt-run") / "run"
    return pretrain(manifest=str(audio), dev=str(audio), out_dir=out, config=small_cfg(), progress=False)


# -- features and targets -----------------------------------------------------------------------
@pytest.mark.parametrize("samples", [400, 719, 720, 16000, 23999, 32000])
def test_mfcc_frames_match_the_cnn(samples):
    from speechft.models.io import build_model_from_config, tiny_config

    model = build_model_from_config(tiny_config(**SMALL_MODEL))
    cnn = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
    feats = mfcc(np.random.default_rng(0).standard_normal(samples).astype(np.float32) * 0.1)
    assert feats.shape == (cnn, 39) == (num_frames(samples), 39)
    assert np.isfinite(feats).all()


def test_mfcc_rejects_bad_input_and_handles_short():
    with pytest.raises(ValueError, match="mono"):
        mfcc(np.zeros((2, 1000)))
    assert mfcc(np.zeros(100)).shape == (0, 39)


def test_crop_is_frame_aligned():
    wav = np.random.default_rng(1).standard_normal(16000 * 3).astype(np.float32) * 0.1
    full = mfcc(wav)
    start, length = crop_plan(wav.shape[0], 16000, np.random.default_rng(5))
    assert start % 320 == 0 and start > 0 or start == 0
    crop = mfcc(wav[start:start + length])
    ref = full[start // 320: start // 320 + crop.shape[0]]
    assert crop.shape == (49, 39)
    # static coefficients match everywhere; deltas only away from the crop's edges (edge replication)
    np.testing.assert_allclose(crop[:, :13], ref[:, :13], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(crop[4:-4], ref[4:-4], rtol=1e-4, atol=1e-3)


def test_epoch_batches_cover_every_utterance_once_and_are_deterministic():
    secs = np.random.default_rng(0).uniform(0.5, 6.0, size=203)
    b = epoch_batches(secs, 16.0, 4.0, seed=7, epoch=2)
    flat = sorted(i for batch in b for i in batch)
    assert flat == list(range(203))
    for batch in b:
        assert len(batch) * max(min(secs[i], 4.0) for i in batch) <= 16.0 + 1e-9
    assert b == epoch_batches(secs, 16.0, 4.0, seed=7, epoch=2)
    assert b != epoch_batches(secs, 16.0, 4.0, seed=7, epoch=3)


def test_codebook_roundtrip_and_targets_cache(audio, tmp_path):
    store = AudioStore.load(audio, min_seconds=0.5)
    cb = fit_codebook(store, FeatureSource(), k=8, max_frames=2000, batch_size=1000, seed=0)
    cb.save(tmp_path / "km.npz")
    cb2 = Codebook.load(tmp_path / "km.npz")
    assert cb2.hash() == cb.hash() and cb2.k == 8
    labels = compute_targets(store, cb2, FeatureSource(), cache_dir=tmp_path / "cache")
    assert [len(x) for x in labels] == [num_frames(a.shape[0]) for a in store.audio]
    assert len(np.unique(np.concatenate(labels))) > 2  # not a degenerate clustering
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = compute_targets(store, cb2, FeatureSource(), cache_dir=tmp_path / "cache")
    assert len(again) == len(labels) and all(np.array_equal(a, b) for a, b in zip(labels, again))
    with pytest.raises(ValueError, match="not a speechft k-means"):
        (tmp_path / "bad.npz").write_bytes(b"nope")
        Codebook.load(tmp_path / "bad.npz")


# -- masking, head, loss ------------------------------------------------------------------------
def test_span_mask_fraction_bounds_and_determinism():
    lens = [200, 150, 40]
    m = span_mask(lens, 200, 0.08, 10, 2, np.random.default_rng(0))
    assert m.shape == (3, 200) and m.dtype == torch.bool
    assert not m[1, 150:].any() and not m[2, 40:].any()
    assert torch.equal(m, span_mask(lens, 200, 0.08, 10, 2, np.random.default_rng(0)))
    big = span_mask([5000] * 4, 5000, 0.08, 10, 2, np.random.default_rng(1)).float().mean().item()
    expected = 1 - (1 - 0.08) ** 10  # each frame is covered unless none of the 10 starts before it hit
    assert abs(big - expected) < 0.05


def test_head_logits_are_scaled_cosines():
    head = PretrainHead(32, 16, 8, temperature=0.1)
    logits = head(torch.randn(50, 32))
    assert logits.shape == (50, 8)
    assert logits.abs().max() <= 10.0 + 1e-4


def test_prepare_encoder_adds_mask_embedding_on_a_copied_config():
    from speechft.models.io import build_model_from_config, tiny_config
    from speechft.pretrain.model import prepare_encoder

    cfg = tiny_config(**SMALL_MODEL)  # mask_time_prob = 0: transformers creates no masked_spec_embed
    model = build_model_from_config(cfg)
    assert getattr(model, "masked_spec_embed", None) is None
    prepare_encoder(model, seed=0)
    assert model.masked_spec_embed.shape == (32,) and model.config.mask_time_prob > 0
    assert cfg.mask_time_prob == 0.0  # the caller's config object is untouched


# -- end to end ---------------------------------------------------------------------------------
def test_pretrain_learns_and_saves_a_clean_encoder(trained):
    from safetensors import safe_open
    from transformers import AutoModel

    from speechft.models.io import load_encoder

    enc_dir = Path(trained["encoder"])
    recs = [json.loads(x) for x in (Path(trained["out"]) / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in recs if r["split"] == "dev"]
    train = [r for r in recs if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert {"loss", "acc", "lr", "grad_norm"} <= set(train[0])
    assert dev[-1]["loss"] < dev[0]["loss"]  # the masked-prediction loss goes down on held-out masks
    keys = set(safe_open(str(enc_dir / "model.safetensors"), "pt").keys())
    assert "masked_spec_embed" in keys
    assert not any("final_proj" in k or "label_embs" in k for k in keys)
    head_keys = set(safe_open(str(enc_dir / "pretrain_head.safetensors"), "pt").keys())
    assert head_keys == {"final_proj.weight", "final_proj.bias", "label_embs_concat"}
    model, info = AutoModel.from_pretrained(enc_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    enc = load_encoder(str(enc_dir))
    assert enc.normalize_input
    states, lens = enc(torch.randn(2, 16000) * 0.1, torch.tensor([16000, 8000]))
    assert len(states) == 3 and states[-1].shape[-1] == 32 and lens.tolist() == [49, 24]
    card = json.loads((enc_dir / "speechft_card.json").read_text())
    assert card["steps"] == 8 and card["final_train_loss"] == pytest.approx(train[-1]["loss"], abs=1e-4)
    for f in ("training_curve.png", "kmeans.npz", "pretrain_config.yaml", "README.md"):
        assert (enc_dir / f).exists(), f
    umask = os.umask(0)
    os.umask(umask)
    assert (enc_dir / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # shareable, not 0600
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in enc_dir.iterdir()), \
        {f.name: oct(f.stat().st_mode & 0o777) for f in enc_dir.iterdir()}
    assert enc_dir.stat().st_mode & 0o777 == 0o777 & ~umask


def test_resume_is_bit_identical(audio, tmp_path):
    cfg = small_cfg(steps=10, checkpoint_every=3)
    straight = pretrain(manifest=str(audio), out_dir=tmp_path / "a", config=cfg, progress=False)
    part = pretrain(manifest=str(audio), out_dir=tmp_path / "b", config=cfg, stop_after=5, progress=False)
    assert part["step"] == 5 and not part["finished"] and "encoder" not in part
    resumed = pretrain(out_dir=tmp_path / "b", resume=True, progress=False)
    assert resumed["finished"]
    from safetensors.torch import load_file

    for f in ("model.safetensors", "pretrain_head.safetensors"):
        a, b = load_file(str(tmp_path / "a/encoder" / f)), load_file(str(tmp_path / "b/encoder" / f))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{f}:{k} differs after resume"
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in p.read_text().splitlines()]
    assert strip(tmp_path / "a/metrics.jsonl") == strip(tmp_path / "b/metrics.jsonl")


def test_resume_with_augmentation_is_bit_identical_and_augmentation_changes_the_run(audio, tmp_path):
    from safetensors.torch import load_file

    cfg = small_cfg(steps=6, checkpoint_every=2, noise_prob=0.5, mix_prob=0.5)
    pretrain(manifest=str(audio), out_dir=tmp_path / "a", config=cfg, progress=False)
    pretrain(manifest=str(audio), out_dir=tmp_path / "b", config=cfg, stop_after=3, progress=False)
    pretrain(out_dir=tmp_path / "b", resume=True, progress=False)
    pretrain(manifest=str(audio), out_dir=tmp_path / "c", config=small_cfg(steps=6, checkpoint_every=2), progress=False)
    a, b, c = (load_file(str(tmp_path / x / "encoder" / "model.safetensors")) for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the input was augmented: another run than without
    assert yaml.safe_load((tmp_path / "b" / "pretrain_config.yaml").read_text())["noise_prob"] == 0.5


def _batch(lens, seed=0):
    from speechft.pretrain.data import AudioStore, make_batch

    rng = np.random.default_rng(seed)
    audio = [np.round(rng.uniform(-0.5, 0.5, n) * 32767).astype(np.int16) for n in lens]
    store = AudioStore(ids=[str(i) for i in range(len(lens))], audio=audio, manifest="m")
    labels = [np.zeros(n // 320 + 1, dtype=np.int64) for n in lens]
    return make_batch(store, labels, list(range(len(lens))), 10.0, None)


def test_augmentation_keeps_padding_targets_and_hits_its_snr():
    from types import SimpleNamespace

    from speechft.pretrain.augment import augment_batch

    batch = _batch([16000, 8000, 12000])
    off = augment_batch(batch, np.random.default_rng(0), SimpleNamespace(noise_prob=0.0, noise_snr=(5, 20),
                                                                         mix_prob=0.0, mix_snr=(0, 10)))
    assert torch.equal(off["wav"], batch["wav"])
    noisy = augment_batch(batch, np.random.default_rng(0), SimpleNamespace(noise_prob=1.0, noise_snr=(10.0, 10.0),
                                                                           mix_prob=0.0, mix_snr=(0, 10)))
    assert noisy["targets"] is batch["targets"] and noisy["wav_lens"] is batch["wav_lens"]
    for b, n in enumerate(batch["wav_lens"].tolist()):
        clean, added = batch["wav"][b, :n].double(), (noisy["wav"][b, :n] - batch["wav"][b, :n]).double()
        assert 10 * torch.log10(clean.pow(2).mean() / added.pow(2).mean()).item() == pytest.approx(10.0, abs=0.01)
        assert not noisy["wav"][b, n:].any()  # padding stays zero
    again = augment_batch(batch, np.random.default_rng(0), SimpleNamespace(noise_prob=1.0, noise_snr=(10.0, 10.0),
                                                                           mix_prob=0.0, mix_snr=(0, 10)))
    assert torch.equal(again["wav"], noisy["wav"])  # a pure function of the generator's state


def test_mixing_adds_at_most_half_an_utterance_of_another_row():
    from types import SimpleNamespace

    from speechft.pretrain.augment import augment_batch

    batch = _batch([16000, 16000])
    mixed = augment_batch(batch, np.random.default_rng(1), SimpleNamespace(noise_prob=0.0, noise_snr=(5, 20),
                                                                           mix_prob=1.0, mix_snr=(0.0, 0.0)))
    for b in range(2):
        changed = (mixed["wav"][b] != batch["wav"][b]).nonzero().flatten()
        assert 0 < changed.numel() <= 8000 and changed.max() - changed.min() < 8000  # one contiguous segment


@pytest.mark.parametrize("kw, message", [(dict(noise_prob=1.5), "noise_prob must be in"),
                                         (dict(mix_snr=[10, 0]), "mix_snr must be"),
                                         (dict(noise_snr=[5]), "noise_snr must be")])
def test_augmentation_config_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        small_cfg(**kw)


def test_continued_pretraining_reuses_codebook_and_head(trained, audio, tmp_path):
    enc_dir = Path(trained["encoder"])
    res = pretrain(manifest=str(audio), out_dir=tmp_path / "c", init=str(enc_dir), config=small_cfg(steps=2),
                   progress=False)
    assert Codebook.load(tmp_path / "c/kmeans.npz").hash() == Codebook.load(enc_dir / "kmeans.npz").hash()
    assert res["card"]["init"] == str(enc_dir)
    # iteration 2: cluster a layer of the pre-trained model
    res2 = pretrain(manifest=str(audio), out_dir=tmp_path / "d", config=small_cfg(steps=2, num_clusters=6),
                    kmeans_from=str(enc_dir), kmeans_layer=1, progress=False)
    cb = Codebook.load(tmp_path / "d/kmeans.npz")
    assert cb.source["type"] == "layer" and cb.source["layer"] == 1 and cb.centers.shape == (6, 32)
    assert "iteration 2" in res2["card"]["recipe"]


def test_continue_from_the_shipped_model(audio, tmp_path):
    """Unsupervised fine-tuning of `speechft-tiny`: its own codebook and head are picked up."""
    from speechft.models.io import TINY_NAME
    from speechft.paths import ASSETS_DIR

    shipped = ASSETS_DIR / TINY_NAME
    if not (shipped / "kmeans.npz").exists():
        pytest.skip("shipped model not built")
    res = pretrain(manifest=str(audio), out_dir=tmp_path / "t", init=TINY_NAME,
                   config=small_cfg(model={}, steps=1, proj_dim=128, batch_seconds=2.0), progress=False)
    assert Codebook.load(tmp_path / "t/kmeans.npz").hash() == Codebook.load(shipped / "kmeans.npz").hash()
    assert res["card"]["init"] == TINY_NAME and res["card"]["num_clusters"] == 100


def test_bad_inputs_give_clear_errors(audio, tmp_path):
    (tmp_path / "bad.yaml").write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown key.*stepz"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="mask_prob"):
        PretrainConfig(mask_prob=1.5)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        pretrain(out_dir=tmp_path / "none", resume=True, progress=False)
    with pytest.raises(ValueError, match="--manifest is required"):
        pretrain(out_dir=tmp_path / "e", progress=False)
    with pytest.raises(ValueError, match="kmeans-layer"):
        pretrain(manifest=str(audio), out_dir=tmp_path / "f", config=small_cfg(), kmeans_from="speechft-tiny-random",
                 kmeans_layer=9, progress=False)
    missing = tmp_path / "m.jsonl"
    missing.write_text(json.dumps({"id": "x", "audio": "nowhere.wav"}) + "\n")
    with pytest.raises(Exception, match="nowhere.wav"):
        pretrain(manifest=str(missing), out_dir=tmp_path / "g", config=small_cfg(), progress=False)


def test_cli_quick(tmp_path):
    from typer.testing import CliRunner

    from speechft.cli import app

    r = CliRunner().invoke(app, ["pretrain", "--quick", "--steps", "6", "--out", str(tmp_path / "q")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "q/encoder/model.safetensors").exists()
    r = CliRunner().invoke(app, ["pretrain", "--quick", "--out", str(tmp_path / "q")])
    assert r.exit_code == 2 and "--resume" in r.output


@pytest.mark.slow
def test_sigkill_then_resume_matches_straight_run(audio, tmp_path):
    """Kill a real process mid-run (after a checkpoint), resume it, compare with an uninterrupted run."""
    from safetensors.torch import load_file

    cfgf = tmp_path / "cfg.yaml"
    import yaml

    yaml.safe_dump(small_cfg(steps=40, checkpoint_every=5, num_threads=1).to_dict(), cfgf.open("w"))
    exe = [sys.executable, "-m", "speechft.cli", "pretrain", "--manifest", str(audio), "--config", str(cfgf)]
    env = {**os.environ, "SPEECHFT_LOG": "WARNING"}
    subprocess.run(exe + ["--out", str(tmp_path / "a")], check=True, env=env, capture_output=True)
    p = subprocess.Popen(exe + ["--out", str(tmp_path / "b")], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        ck = tmp_path / "b/checkpoint.pt"
        if ck.exists() and torch.load(ck, weights_only=False)["step"] >= 10:
            break
        time.sleep(0.2)
    assert p.poll() is None, "run finished before it could be killed; make it longer"
    p.send_signal(signal.SIGKILL)
    p.wait()
    subprocess.run(exe[:4] + ["--out", str(tmp_path / "b"), "--resume"], check=True, env=env, capture_output=True)
    a, b = load_file(str(tmp_path / "a/encoder/model.safetensors")), load_file(str(tmp_path / "b/encoder/model.safetensors"))
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

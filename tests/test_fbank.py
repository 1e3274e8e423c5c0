"""The FBANK baseline encoder and the built-in model references."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import sine
from speechft.models.fbank import FbankEncoder
from speechft.models.io import load_encoder


def batch(*clips):
    lens = torch.tensor([len(c) for c in clips])
    wav = torch.zeros(len(clips), int(lens.max()))
    for i, c in enumerate(clips):
        wav[i, : len(c)] = torch.from_numpy(c)
    return wav, lens


def test_matches_kaldi_compatible_reference():
    """Same numbers as transformers' numpy emulation of Kaldi fbank (before normalisation)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    x = sine(0.73, freq=310.0, seed=3)
    mel = mel_filter_bank(num_frequency_bins=257, num_mel_filters=80, min_frequency=20, max_frequency=8000,
                          sampling_rate=16000, norm=None, mel_scale="kaldi", triangularize_in_mel_space=True)
    ref = spectrogram(x, window_function(400, "povey", periodic=False), frame_length=400, hop_length=160,
                      fft_length=512, power=2.0, center=False, preemphasis=0.97, mel_filters=mel, log_mel="log",
                      mel_floor=float(np.finfo(np.float32).eps), remove_dc_offset=True).T
    (feats,), lens = FbankEncoder(cmvn=False)(torch.from_numpy(x)[None])
    assert int(lens[0]) == ref.shape[0] == 1 + (len(x) - 400) // 160
    np.testing.assert_allclose(feats[0].numpy(), ref, atol=2e-4, rtol=1e-4)


def test_interface_and_normalisation():
    enc = FbankEncoder()
    assert enc.num_layers == 0 and enc.hidden_size == 80 and enc.frame_rate == 100.0
    assert list(enc.parameters()) == [] and enc.state_dict() == {}
    enc.freeze_feature_extractor(True)  # a no-op, but part of the interface
    states, lens = enc(*batch(sine(1.0), sine(0.5, freq=500.0)))
    assert len(states) == 1 and states[0].shape == (2, 98, 80)
    assert lens.tolist() == [98, 48]
    real = states[0][1, :48]
    assert real.mean(0).abs().max() < 1e-4
    assert (real.std(0, unbiased=False) - 1).abs().max() < 1e-3
    assert torch.count_nonzero(states[0][1, 48:]) == 0
    with pytest.raises(ValueError, match="expected wav"):
        enc(torch.zeros(16000))


@pytest.mark.parametrize("deltas", [0, 2])
def test_padding_does_not_change_frames(deltas):
    enc = FbankEncoder(deltas=deltas)
    clips = [sine(1.0, seed=1), sine(0.42, freq=700.0, seed=2), sine(0.01, seed=4)]  # last: shorter than 25 ms
    wav, lens = batch(*clips)
    wav[1, len(clips[1]):] = 5.0  # garbage beyond the length must be ignored
    (feats,), flens = enc(wav, lens)
    assert feats.shape[-1] == 80 * (1 + deltas)
    for i, c in enumerate(clips):
        (alone,), n = enc(torch.from_numpy(c)[None])
        assert int(n[0]) == int(flens[i])
        torch.testing.assert_close(feats[i, : int(n[0])], alone[0], atol=1e-5, rtol=1e-5)
    assert int(flens[2]) == 1


def test_fingerprint_is_stable_and_config_dependent():
    a, b = FbankEncoder(), FbankEncoder()
    assert a.fingerprint() == b.fingerprint() and a.fingerprint().startswith("fbank-v1-")
    assert FbankEncoder(num_mel_bins=40).fingerprint() != a.fingerprint()
    assert FbankEncoder(deltas=2).hidden_size == 240


def test_builtin_references_load():
    fb = load_encoder("fbank")
    assert isinstance(fb, FbankEncoder)
    rnd = load_encoder("speechft-tiny-random")
    assert rnd.fingerprint() == load_encoder("speechft-tiny-random").fingerprint()  # fixed seed
    wav, lens = batch(sine(0.5), sine(0.3))
    with torch.no_grad():
        states, flens = rnd(wav, lens)
    assert len(states) == rnd.num_layers + 1
    assert all(s.shape[-1] == rnd.hidden_size and torch.isfinite(s).all() for s in states)
    assert flens.tolist()[0] > flens.tolist()[1]


def test_shipped_versions_load_and_differ():
    """speechft-tiny (v3) is the default; v1 and v2 stay loadable under their own names for comparisons."""
    from speechft.paths import SHIPPED_NAMES, shipped_dir

    names = ("speechft-tiny", "speechft-tiny-v1", "speechft-tiny-v2")
    assert set(names) <= set(SHIPPED_NAMES)
    encoders = [load_encoder(n) for n in names]
    assert len({(e.num_layers, e.hidden_size) for e in encoders}) == 1
    assert len({e.fingerprint() for e in encoders}) == len(names)
    for name in names:
        card = json.loads((shipped_dir(name) / "speechft_card.json").read_text())
        assert card["name"] == name

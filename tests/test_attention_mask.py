"""Padding masks: batched features equal single-utterance features for layer-norm models; group-norm
models get no mask, as the transformers documentation advises (they were trained on unpadded audio)."""
import pytest
import torch

from conftest import sine
from speechft.models.encoder import HFEncoder
from speechft.models.io import build_model_from_config

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
             hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)
TOLERANCE = 1e-4  # max |batched - single| on the real frames, float32


def _config(family: str, norm: str):
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    cls = {"hubert": HubertConfig, "wav2vec2": Wav2Vec2Config, "wavlm": WavLMConfig}[family]
    kw = dict(SMALL, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer")
    if family == "wavlm":
        kw["num_buckets"], kw["max_bucket_distance"] = 32, 100
    return cls(**kw)


def _single_vs_batched(enc):
    wavs = [torch.from_numpy(sine(s, freq=f, seed=i)) for i, (s, f) in enumerate([(1.0, 220), (0.45, 330), (0.7, 180)])]
    lens = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    with torch.no_grad():
        states, frames = enc(batch, lens)
        worst = 0.0
        for i, w in enumerate(wavs):
            alone, n = enc(w[None], lens[i: i + 1])
            n = int(n[0])
            assert int(frames[i]) == n
            for a, b in zip(states, alone):
                worst = max(worst, float((a[i, :n] - b[0, :n]).abs().max()))
    return worst


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm", "hubert"])
def test_layer_norm_models_batched_equal_single_with_the_mask(family):
    enc = HFEncoder(build_model_from_config(_config(family, "layer")), name=family).eval()
    assert enc._use_mask
    assert _single_vs_batched(enc) <= TOLERANCE
    # without the mask the padding leaks into the real frames (what the mask is for)
    enc._use_mask = False
    assert _single_vs_batched(enc) > 100 * TOLERANCE


def test_group_norm_models_get_no_mask(monkeypatch):
    enc = HFEncoder(build_model_from_config(_config("hubert", "group")), name="group").eval()
    assert not enc._use_mask
    seen = {}
    forward = enc.model.forward

    def spy(*a, **kw):
        seen["mask"] = kw.get("attention_mask")
        return forward(*a, **kw)

    monkeypatch.setattr(enc.model, "forward", spy)
    with torch.no_grad():
        enc(torch.zeros(2, 8000), torch.tensor([8000, 4000]))
    assert seen["mask"] is None

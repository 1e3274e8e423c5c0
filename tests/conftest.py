"""Shared fixtures: an isolated data home, tiny models built from configs, generated audio.

Tests never touch the network: models are built from configs, audio is generated (or read from the
FSDD copy shipped beside the project), lite data is synthesised with espeak-ng.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# One data home per test session, so nothing leaks into ~/.cache and lite data is made once.
os.environ.setdefault("SPEECHFT_HOME", tempfile.mkdtemp(prefix="speechft-test-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

PROJECT = Path(__file__).resolve().parents[1]


def tiny_test_config(**overrides):
    """A very small HuBERT (2 layers x 32 hidden) for fast tests."""
    from speechft.models.io import tiny_config

    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
              hidden_dropout=0.0, attention_dropout=0.0)
    kw.update(overrides)
    return tiny_config(**kw)


def make_tiny_encoder(seed: int = 0, **overrides):
    from speechft.models.encoder import HFEncoder
    from speechft.models.io import build_model_from_config

    enc = HFEncoder(build_model_from_config(tiny_test_config(**overrides), seed=seed), name="tiny-test")
    enc.normalize_input = True
    return enc.eval()


def sine(seconds: float, sr: int = 16000, freq: float = 220.0, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random HuBERT saved as an HF dir (the stand-in for a pre-trained θ₀)."""
    from speechft.models.io import save_encoder

    out = tmp_path_factory.mktemp("models") / "tiny"
    save_encoder(make_tiny_encoder(), out, card={"name": "tiny-test"})
    return out


@pytest.fixture(scope="session")
def lite_quick() -> Path:
    """Quick-size lite data in the session's data home (synthesised once)."""
    from speechft.corpora.registry import default_out_dir, get_corpus

    out = default_out_dir("lite", "quick")
    get_corpus("lite").prepare(None, out, size="quick")
    return out


@pytest.fixture(scope="session")
def fsdd_root() -> Path:
    root = PROJECT.parent / "shared" / "data" / "fsdd"
    if not (root / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {root}")
    return root

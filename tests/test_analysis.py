"""Analyses on tiny models: similarity invariants, CKA against a brute-force Gram computation, LLFC."""
import pytest
import torch

from conftest import make_tiny_encoder, sine
from speechft.analysis.similarity import R2, LinearCKA, MeanCosine


def brute_unbiased_cka(x, y):
    def hsic(K, L):
        n = K.shape[0]
        K, L = K.clone(), L.clone()
        K.fill_diagonal_(0)
        L.fill_diagonal_(0)
        one = torch.ones(n, 1, dtype=K.dtype)
        t1 = torch.trace(K @ L)
        t2 = (one.T @ K @ one) * (one.T @ L @ one) / ((n - 1) * (n - 2))
        t3 = 2.0 / (n - 2) * (one.T @ K @ L @ one)
        return float((t1 + t2 - t3) / (n * (n - 3)))

    x, y = x.double(), y.double()
    K, L = x @ x.T, y @ y.T
    return hsic(K, L) / (hsic(K, K) * hsic(L, L)) ** 0.5


def _stream(x, y, chunks=3):
    c = LinearCKA(x.shape[1], y.shape[1])
    for xs, ys in zip(torch.chunk(x, chunks), torch.chunk(y, chunks)):
        c.update(xs, ys)
    return c.value()


def test_streaming_cka_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    y = x @ torch.randn(5, 7, generator=g) + 0.5 * torch.randn(60, 7, generator=g)
    assert _stream(x, y) == pytest.approx(brute_unbiased_cka(x, y), rel=1e-9, abs=1e-12)


def test_cka_identity_orthogonal_and_scale_invariance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 6, generator=g, dtype=torch.float64) + 0.3
    assert _stream(x, x) == pytest.approx(1.0, abs=1e-10)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    y = torch.randn(80, 6, generator=g, dtype=torch.float64)
    base = _stream(x, y)
    assert _stream(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert _stream(3.7 * x, y) == pytest.approx(base, abs=1e-10)
    assert abs(base) < 0.5  # unrelated random features are far from 1


def test_cosine_and_r2_streaming():
    x = torch.randn(20, 4)
    c = MeanCosine()
    c.update(x[:10], x[:10])
    c.update(x[10:], x[10:])
    assert c.value() == pytest.approx(1.0)
    r = R2(4)
    r.update(x, x)
    assert r.value() == pytest.approx(1.0)
    r = R2(4)
    r.update(x, torch.zeros_like(x) + x.mean(0))
    assert r.value() == pytest.approx(0.0, abs=1e-9)


def test_analyze_end_to_end(tmp_path):
    from speechft.analysis.run import analyze
    from speechft.data import Utterance, write_audio, write_manifest

    rows = []
    for i in range(6):
        write_audio(tmp_path / f"{i}.wav", sine(0.6 + 0.1 * i, freq=200 + 50 * i, seed=i))
        rows.append(Utterance(id=str(i), audio=str(tmp_path / f"{i}.wav"), duration=0.6 + 0.1 * i))
    m = write_manifest(tmp_path / "a.jsonl", rows)
    e0 = make_tiny_encoder(seed=0)
    e1 = make_tiny_encoder(seed=0)
    with torch.no_grad():
        for p in e1.model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    recs = analyze(["m0", "m0-copy", "m1"], m, tmp_path / "out", encoders=[e0, make_tiny_encoder(seed=0), e1],
                   alphas=(0.0, 0.5, 1.0))
    layers = list(range(e0.num_layers + 1))  # hidden states 0 (CNN projection) .. num_layers
    sim_same = [r for r in recs if r["kind"] == "similarity" and r["model"] == "m0-copy"]
    assert [r["layer"] for r in sim_same] == layers
    assert all(r["cosine"] == pytest.approx(1.0, abs=1e-6) and r["cka"] == pytest.approx(1.0, abs=1e-6) for r in sim_same)
    sim_ft = [r for r in recs if r["kind"] == "similarity" and r["model"] == "m1"]
    assert [r["layer"] for r in sim_ft] == layers
    assert sim_ft[-1]["cosine"] < 0.9999  # perturbed encoder layers really differ
    ll = [r for r in recs if r["kind"] == "llfc" and r["model"] == "m1"]
    assert sorted((r["alpha"], r["layer"]) for r in ll) == [(a, lay) for a in (0.0, 0.5, 1.0) for lay in layers]
    ends = [r for r in ll if r["alpha"] in (0.0, 1.0)]  # the interpolation's end points are the models themselves
    assert len(ends) == 2 * len(layers)
    for r in ends:
        assert r["r2"] == pytest.approx(1.0, abs=1e-6)
    wd = {r["group"]: r["relative"] for r in recs if r["kind"] == "weight_distance" and r["model"] == "m1"}
    assert wd["cnn"] == 0.0 and wd["layer1"] > 0
    for png in ("similarity.png", "llfc.png", "weight_distance.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000

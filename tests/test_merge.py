"""Merging: exact ends, linearity in α, hand-worked multi-model/TIES/DARE examples, key handling, refusals."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import make_tiny_encoder
from speechft.merge import MergeParams, get_method, merge_alphas, merge_models
from speechft.merge import methods as M
from speechft.merge.merge import merge_tensor
from speechft.models.io import read_card, save_encoder

T = torch.tensor


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """θ₀ and three 'fine-tuned' models of the same tiny architecture (different seeds)."""
    root = tmp_path_factory.mktemp("merge-models")
    for i in range(4):
        save_encoder(make_tiny_encoder(seed=i), root / f"m{i}", card={"name": f"m{i}"})
    return root


def weights(d):
    return load_file(str(d / "model.safetensors"))


def write_variant(src, dst, edit):
    """Copy an HF dir, letting ``edit(state_dict, config)`` change tensors/config before saving."""
    shutil.copytree(src, dst)
    sd, cfg = weights(src), json.loads((src / "config.json").read_text())
    edit(sd, cfg)
    (dst / "model.safetensors").unlink()
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def no_leftovers(parent, name):
    return not (parent / name).exists() and not any(p.name.startswith(f".{name}.") for p in parent.iterdir())


# ---- pure methods: hand-worked examples ----------------------------------------------------------

def test_linear_multi_model_hand_computation():
    base, t1, t2 = T([1.0, 2.0]), T([3.0, 2.0]), T([1.0, 6.0])
    out = M.linear(base, [t1, t2], MergeParams(alpha=0.5))
    assert out.tolist() == [1.5, 3.0]  # mean θ′ = [2, 4]; 0.5·[1, 2] + 0.5·[2, 4]
    out = M.linear(base, [t1, t2], MergeParams(alpha=0.5, weights=(3.0, 1.0)))
    assert out.tolist() == [1.75, 2.5]  # weighted mean θ′ = [2.5, 3]


def test_task_arithmetic_hand_computation():
    base, t1, t2 = T([1.0, 1.0]), T([2.0, 0.0]), T([0.0, 3.0])
    out = M.task_arithmetic(base, [t1, t2], MergeParams(alpha=0.5, weights=(1.0, 2.0)))
    assert out.tolist() == [0.5, 2.5]  # τ = [1,-1], [-1,2]; Σwτ = [-1, 3]


def test_ties_hand_example_and_sign_rules():
    base = torch.zeros(4)
    tuned = [T([3.0, -1.0, 0.5, -2.0]), T([-1.0, -2.0, 1.0, 10.0]), T([2.0, 1.0, -0.1, -3.0])]
    # trim to the top 2 magnitudes: [3,0,0,-2], [0,-2,0,10], [2,0,0,-3]
    total = M.ties(base, tuned, MergeParams(alpha=1.0, density=0.5, majority_sign="total"))
    assert total.tolist() == [2.5, -2.0, 0.0, 10.0]  # last: Σ = 5 > 0, only +10 agrees
    freq = M.ties(base, tuned, MergeParams(alpha=1.0, density=0.5, majority_sign="frequency"))
    assert freq.tolist() == [2.5, -2.0, 0.0, -2.5]  # last: two of three negative
    half = M.ties(base + 1, [t + 1 for t in tuned], MergeParams(alpha=0.5, density=0.5))
    assert half.tolist() == [2.25, 0.0, 1.0, 6.0]  # θ₀ + 0.5·merged


def test_ties_matches_peft_reference():
    from peft.utils.merge_utils import ties as peft_ties

    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 7, generator=g, dtype=torch.float64)
    tuned = [base + torch.randn(6, 7, generator=g, dtype=torch.float64) for _ in range(3)]
    p = MergeParams(alpha=1.0, weights=(0.5, 1.0, 2.0), density=0.4)
    ref = base + peft_ties([t - base for t in tuned], torch.tensor(p.weights, dtype=torch.float64), 0.4)
    assert torch.allclose(M.ties(base, tuned, p), ref, atol=1e-12)


def test_dare_hand_example_and_determinism():
    base, tau = torch.zeros(1000), torch.arange(1, 1001, dtype=torch.float32)
    p = MergeParams(alpha=1.0, density=0.25, seed=3)
    out = merge_tensor(get_method("dare"), p, "enc.w", base, [tau], torch.float32)
    kept = out != 0
    assert torch.equal(out[kept], tau[kept] * 4)  # kept entries rescaled by 1/density, others dropped
    assert 180 < int(kept.sum()) < 320  # ~250 of 1000 kept
    again = merge_tensor(get_method("dare"), p, "enc.w", base, [tau], torch.float32)
    assert torch.equal(out, again)
    other_key = merge_tensor(get_method("dare"), p, "enc.v", base, [tau], torch.float32)
    assert not torch.equal(out, other_key)
    full = M.dare(base, [tau], MergeParams(alpha=0.5, density=1.0))
    assert torch.equal(full, M.task_arithmetic(base, [tau], MergeParams(alpha=0.5)))
    two = M.dare(base, [tau, 2 * tau], MergeParams(alpha=1.0, density=1.0, weights=(1.0, -0.5)))
    assert torch.equal(two, torch.zeros(1000, dtype=torch.float64))


def test_registry_unknown_and_duplicate():
    with pytest.raises(KeyError, match="did you mean ties"):
        get_method("tie")
    with pytest.raises(ValueError, match="duplicate merge method 'linear'"):
        M._build([M.METHODS["linear"], M.METHODS["linear"]])
    with pytest.raises(ValueError, match="density"):
        M.check_params(get_method("ties"), MergeParams(density=0.0), 2)
    with pytest.raises(ValueError, match="2 values but 3"):
        M.check_params(get_method("linear"), MergeParams(weights=(1.0, 1.0)), 3)


# ---- merging model directories ------------------------------------------------------------------

def test_alpha_ends_are_bit_exact(models, tmp_path):
    m0, m1 = models / "m0", models / "m1"
    # a -0.0 where θ₀ is positive catches (1−α)θ₀ + αθ′ evaluated naively at α=1
    v = write_variant(m1, tmp_path / "v", lambda sd, cfg: sd["encoder.layer_norm.weight"].__setitem__(0, -0.0))
    w0, w1 = weights(m0), weights(v)
    assert w0["encoder.layer_norm.weight"][0].item() == 1.0
    a0, a1 = merge_alphas(str(m0), [str(v)], [0.0, 1.0], [tmp_path / "a0", tmp_path / "a1"], progress=False)
    o0, o1 = weights(a0), weights(a1)
    assert set(o0) == set(w0) == set(o1)
    for k in w0:
        assert w0[k].dtype == torch.float32
        assert torch.equal(o0[k].view(torch.int32), w0[k].view(torch.int32)), k
        assert torch.equal(o1[k].view(torch.int32), w1[k].view(torch.int32)), k


def test_linear_in_alpha(models, tmp_path):
    m0, m1 = models / "m0", models / "m1"
    alphas = [0.25, 0.5, 0.75]
    outs = merge_alphas(str(m0), [str(m1)], alphas, [tmp_path / f"a{i}" for i in range(3)], progress=False)
    w0, w1 = weights(m0), weights(m1)
    got = [weights(o) for o in outs]
    for k in w0:
        for a, g in zip(alphas, got):
            expect = (w0[k].double() + a * (w1[k].double() - w0[k].double())).float()
            assert torch.allclose(g[k], expect, atol=1e-7, rtol=0), k
        assert torch.allclose(got[1][k], (got[0][k] + got[2][k]) / 2, atol=1e-6), k


def test_multi_model_merge_matches_formula_and_card(models, tmp_path):
    fts = [str(models / f"m{i}") for i in (1, 2, 3)]
    out = merge_models(str(models / "m0"), fts, tmp_path / "mt", alpha=0.4, progress=False)
    w0, ws, got = weights(models / "m0"), [weights(models / f"m{i}") for i in (1, 2, 3)], weights(out)
    for k in w0:
        tau = sum(w[k].double() - w0[k].double() for w in ws) / 3
        assert torch.allclose(got[k].double(), w0[k].double() + 0.4 * tau, atol=1e-6), k
    card = read_card(out)
    assert card["method"] == "linear" and card["alpha"] == 0.4 and len(card["finetuned"]) == 3
    assert card["pretrained"]["path"] == str(models / "m0")
    assert "linear" in (out / "README.md").read_text()
    assert (out / "preprocessor_config.json").exists()


def test_excluded_keys_keep_pretrained_and_heads_are_dropped(models, tmp_path):
    from transformers import AutoModel

    def add_pretrain_only(sd, cfg):
        sd["final_proj.weight"] = torch.randn(8, 32)
        sd["label_embs_concat"] = torch.randn(16, 8)

    def as_ctc_model(sd, cfg):  # a fine-tuned model saved with its head: 'hubert.' prefix + lm_head
        for k in list(sd):
            sd["hubert." + k] = sd.pop(k)
        sd["lm_head.weight"], sd["lm_head.bias"] = torch.randn(5, 32), torch.randn(5)
        sd["final_proj.weight"] = torch.full((8, 32), 7.0)

    m0 = write_variant(models / "m0", tmp_path / "p0", add_pretrain_only)
    m1 = write_variant(models / "m1", tmp_path / "f1", as_ctc_model)
    out = merge_models(str(m0), [str(m1)], tmp_path / "out", alpha=0.5, progress=False)
    w0, got = weights(m0), weights(out)
    assert torch.equal(got["final_proj.weight"], w0["final_proj.weight"])
    assert torch.equal(got["label_embs_concat"], w0["label_embs_concat"])
    assert "lm_head.weight" not in got and not any(k.startswith("hubert.") for k in got)
    w1 = weights(models / "m1")
    k = "encoder.layers.0.attention.q_proj.weight"
    assert torch.allclose(got[k], (w0[k] + w1[k]) / 2, atol=1e-7)
    card = read_card(out)
    assert set(card["kept_from_pretrained"]) == {"final_proj.weight", "label_embs_concat"}
    assert any("lm_head.weight" in d for d in card["dropped"])
    AutoModel.from_pretrained(out)  # still a plain transformers model
    dropped = merge_models(str(m0), [str(m1)], tmp_path / "drop", excluded="drop", progress=False)
    assert "final_proj.weight" not in weights(dropped) and "final_proj.weight" in read_card(dropped)["dropped"]


@pytest.mark.parametrize("case", ["shape", "keys", "architecture"])
def test_mismatched_inputs_refused_without_output(models, tmp_path, case):
    def edit(sd, cfg):
        if case == "shape":
            sd["encoder.layer_norm.weight"] = torch.ones(16)
        elif case == "keys":
            del sd["encoder.layers.1.final_layer_norm.bias"]
        else:
            cfg["hidden_act"] = "relu"

    bad = write_variant(models / "m1", tmp_path / "bad", edit)
    expect = {"shape": r"shape mismatches \(1\): encoder.layer_norm.weight: F32\[32\] vs F32\[16\]",
              "keys": r"missing keys \(1\): encoder.layers.1.final_layer_norm.bias",
              "architecture": r"hidden_act: 'gelu' vs 'relu'"}[case]
    with pytest.raises(ValueError, match=expect):
        merge_models(str(models / "m0"), [str(models / "m2"), str(bad)], tmp_path / "out", progress=False)
    assert no_leftovers(tmp_path, "out")


def test_output_location_checks(models, tmp_path):
    m0, m1 = str(models / "m0"), str(models / "m1")
    with pytest.raises(ValueError, match="--out .*m1 is the input .*m1"):
        merge_models(m0, [m1], models / "m1", progress=False)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_models(m0, [m1], tmp_path / "taken", progress=False)
    merge_models(m0, [m1], tmp_path / "taken", overwrite=True, progress=False)
    assert (tmp_path / "taken" / "model.safetensors").exists()


def test_output_dtype_option(models, tmp_path):
    out = merge_models(str(models / "m0"), [str(models / "m1")], tmp_path / "h", dtype="float16", progress=False)
    got = weights(out)
    assert all(v.dtype == torch.float16 for v in got.values())
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"


def test_cli_merge_success_and_user_error(models, tmp_path):
    from speechft.cli import app

    runner = CliRunner()
    args = ["merge", "--pretrained", str(models / "m0"), "--finetuned", str(models / "m1"), str(models / "m2"),
            "--alpha", "0.25", "--method", "ties", "--density", "0.3", "--out", str(tmp_path / "cli")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    card = read_card(tmp_path / "cli")
    assert card["method"] == "ties" and card["density"] == 0.3 and len(card["finetuned"]) == 2
    res = runner.invoke(app, args[:-1] + [str(tmp_path / "cli2"), "--method", "tie"])
    assert res.exit_code == 2 and "did you mean ties" in res.output
    assert no_leftovers(tmp_path, "cli2")


def test_float64_inputs_several_alphas_in_one_pass(models, tmp_path):
    """One pass over the inputs for several α must equal separate merges (inputs are never modified)."""
    def to_f64(sd, cfg):
        for k in sd:
            sd[k] = sd[k].double()

    m0 = write_variant(models / "m0", tmp_path / "d0", to_f64)
    fts = [str(write_variant(models / f"m{i}", tmp_path / f"d{i}", to_f64)) for i in (1, 2)]
    for method in ("linear", "ties"):
        outs = merge_alphas(str(m0), fts, [0.0, 0.3, 0.7], [tmp_path / f"{method}{i}" for i in range(3)],
                            method=method, progress=False)
        for a, out in zip([0.0, 0.3, 0.7], outs):
            alone = merge_models(str(m0), fts, tmp_path / f"{method}-alone", alpha=a, method=method,
                                 overwrite=True, progress=False)
            got, ref = weights(out), weights(alone)
            assert ref and got.keys() == ref.keys()
            assert all(got[k].dtype == torch.float64 and torch.equal(got[k], ref[k]) for k in ref), (method, a)
        w0, first = weights(m0), weights(outs[0])
        assert w0 and first.keys() == w0.keys() and all(torch.equal(first[k], w0[k]) for k in w0)


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_several_alphas_share_the_task_sum_and_equal_separate_merges(method):
    """merge_tensors computes Σ cᵢ·τᵢ once for several α; each result equals merge_tensor and ``fn`` bit for bit,
    with the blocks shared out between threads or not."""
    from speechft.merge.merge import TASK_BLOCK, MathPool, merge_tensors

    g = torch.Generator().manual_seed(2)
    base = torch.randn(5, TASK_BLOCK // 4 + 3, generator=g)  # > TASK_BLOCK elements, not a multiple of it
    tuned = [base + 0.01 * torch.randn(base.shape, generator=g) for _ in range(2)]
    m = get_method(method)
    params = [MergeParams(alpha=a, weights=(1.0, 0.5)) for a in (0.0, 0.3, 1.0, 0.7, -0.2)]
    for out_dtype in (torch.float32, torch.float16):
        together = list(merge_tensors(m, params, "k", base, tuned, out_dtype))
        for p, got in zip(params, together):
            assert got.dtype == out_dtype and got.shape == base.shape
            assert torch.equal(got, merge_tensor(m, p, "k", base, tuned, out_dtype)), (out_dtype, p.alpha)
            assert torch.equal(got, m.fn(base, tuned, p).to(out_dtype)), (out_dtype, p.alpha)
        math = MathPool(3)  # 2 blocks: this thread and one helper
        try:
            threaded = list(merge_tensors(m, params, "k", base, tuned, out_dtype, math))
            assert len(threaded) == len(together) == len(params)
            assert all(torch.equal(a, b) for a, b in zip(threaded, together)), out_dtype
            one = list(merge_tensors(m, params[1:2], "k", base, tuned, out_dtype, math))[0]  # Σ not shared
            assert torch.equal(one, together[1])
        finally:
            math.close()
    assert torch.equal(together[0], base.half())  # α=0 is θ₀ exactly


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties"])
def test_blockwise_merge_equals_whole_tensor(method):
    """Large tensors are merged in blocks; for deterministic methods that must not change the result."""
    from speechft.merge.merge import BLOCK

    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, BLOCK // 2 + 7, generator=g)  # > BLOCK elements, not a multiple of it
    tuned = [base + torch.randn(base.shape, generator=g) for _ in range(3)]
    p = MergeParams(alpha=0.6, density=0.3 if method != "dare_ties" else 1.0, weights=(1.0, 0.5, 2.0))
    m = get_method(method)
    whole = m.fn(base, tuned, p, None, m.prepare(base, tuned, p) if m.prepare else None).float()
    assert torch.equal(merge_tensor(m, p, "k", base, tuned, torch.float32), whole)


def test_builtin_reference_resolves_through_assets_dir(models, tmp_path, monkeypatch):
    import speechft.paths

    shutil.copytree(models / "m0", tmp_path / "assets" / "speechft-tiny")
    monkeypatch.setattr(speechft.paths, "ASSETS_DIR", tmp_path / "assets")
    out = merge_models("speechft-tiny", [str(models / "m1")], tmp_path / "o", alpha=0.0, progress=False)
    assert read_card(out)["pretrained"] == {"ref": "speechft-tiny", "path": str(tmp_path / "assets" / "speechft-tiny")}
    got, w0 = weights(out), weights(models / "m0")
    assert w0 and got.keys() == w0.keys() and all(torch.equal(got[k], v) for k, v in w0.items())
    with pytest.raises(ValueError, match="'fbank' is a feature baseline"):
        merge_models("fbank", [str(models / "m1")], tmp_path / "f", progress=False)

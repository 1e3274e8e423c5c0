"""Base-size encoders (94-95 M parameters) through the whole loop on the CPU: HuBERT Base, wav2vec 2.0
Base and WavLM Base+ built from transformers' default configs (the hub checkpoints' architectures, random
weights, no network) go through finetune (stable, regular, LoRA) -> merge -> probe -> analyze at a few
steps on quick lite data. What users bring is this size; the tiny test models cannot show a shape,
memory or key-name problem that only the real architectures have.
"""
import json

import pytest
import torch

pytestmark = pytest.mark.slow

CNN = "feature_extractor."
HEAD = {"hidden": 16, "proj": 16, "layers": 1}
ALPHA = 0.25


def base_config(family: str):
    """transformers' defaults are the base architectures: HubertConfig() = hubert-base-ls960,
    Wav2Vec2Config() = wav2vec2-base, WavLMConfig() = wavlm-base(-plus) (same architecture; Base+
    differs in its pre-training data)."""
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    return {"hubert": HubertConfig, "wav2vec2": Wav2Vec2Config, "wavlm": WavLMConfig}[family]()


def weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module", params=["hubert", "wav2vec2", "wavlm"])
def base_dir(request, tmp_path_factory, lite_quick):
    from speechft.models.encoder import HFEncoder
    from speechft.models.io import build_model_from_config, save_encoder

    enc = HFEncoder(build_model_from_config(base_config(request.param), seed=0), name=f"{request.param}-base")
    enc.normalize_input = True
    n = sum(p.numel() for p in enc.model.parameters())
    assert 90e6 < n < 100e6, f"{request.param}: {n} parameters is not base size"
    out = tmp_path_factory.mktemp(f"base-{request.param}") / "theta0"
    save_encoder(enc, out, card={"name": f"{request.param}-base"})
    return request.param, out


@pytest.fixture(scope="module")
def small_asr(tmp_path_factory, lite_quick):
    """lite-asr quick cut to 8 train / 2 dev / 2 test utterances as a user task: at base size on a CPU the
    end-of-run dev evaluation of the full quick dev split (15 utterances) was most of each run's time."""
    from speechft.data.manifest import read_manifest, write_manifest
    from speechft.tasks import get_task, user_task

    src = get_task("lite-asr").resolve_manifests(size="quick")
    d = tmp_path_factory.mktemp("small-asr")
    paths = [write_manifest(d / f"{split}.jsonl", read_manifest(src[split])[:n])
             for split, n in (("train", 8), ("dev", 2), ("test", 2))]
    return user_task("asr-small", tuple(str(p) for p in paths), "ctc", "text", metric="cer")


def run_ft(model_dir, out, recipe, steps, task):
    from speechft.finetune import finetune

    extra = {"beta": 0.5} if recipe == "stable" else {}  # stable: 1 head-only step, then 1 full step
    return finetune(str(model_dir), task, out, recipe=recipe, steps=steps, progress=False, **extra,
                    batch_seconds=2.0, head=HEAD, eval_every=0, checkpoint_every=steps, keep_checkpoints=1,
                    log_every=1, tensorboard=False, lr=1e-4, lora_rank=4)


def test_base_size_loop(base_dir, small_asr, tmp_path):
    from speechft.analysis.run import analyze
    from speechft.merge import merge_models
    from speechft.probe import run_probe
    family, theta0_dir = base_dir
    theta0 = weights(theta0_dir)
    model_type = json.loads((theta0_dir / "config.json").read_text())["model_type"]

    # finetune: stable keeps the CNN and moves the transformer; regular trains the CNN too;
    # LoRA writes a plain directory of the same architecture whose projections moved
    runs = {r: run_ft(theta0_dir, tmp_path / r, r, steps, small_asr)
            for r, steps in (("stable", 2), ("regular", 1), ("lora", 1))}
    tuned = {r: weights(out / "encoder") for r, out in runs.items()}
    for r, w in tuned.items():
        assert set(w) == set(theta0), f"{family} {r}: the encoder's keys changed"
        assert json.loads((runs[r] / "encoder" / "config.json").read_text())["model_type"] == model_type
        losses = [json.loads(x)["loss"] for x in (runs[r] / "metrics.jsonl").read_text().splitlines()
                  if json.loads(x)["split"] == "train"]
        assert losses and all(torch.isfinite(torch.tensor(losses))), f"{family} {r}: non-finite loss"
    changed = {r: {k for k in theta0 if not torch.equal(tuned[r][k], theta0[k])} for r in tuned}
    assert not [k for k in changed["stable"] if k.startswith(CNN)] and changed["stable"]
    assert [k for k in changed["regular"] if k.startswith(CNN)]
    if family == "wavlm":  # its attention never calls q/k/v/out_proj: LoRA adapts the feed-forward only
        assert any(".feed_forward." in k for k in changed["lora"])
        assert not any(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")) for k in changed["lora"])
    else:
        assert any(k.endswith("q_proj.weight") for k in changed["lora"])

    # merge: θ̂ = (1 - α) θ₀ + α θ′, key by key
    merged_dir = merge_models(str(theta0_dir), [str(runs["stable"] / "encoder")], tmp_path / "speech-ft",
                              alpha=ALPHA, progress=False)
    merged = weights(merged_dir)
    for k in sorted(changed["stable"])[:20]:
        want = (1 - ALPHA) * theta0[k].double() + ALPHA * tuned["stable"][k].double()
        assert torch.allclose(merged[k].double(), want, atol=1e-6), k

    # probe: a pooled task on the merged model (one seed, one epoch, few utterances)
    recs = run_probe(str(merged_dir), ["lite-ks"], tmp_path / "probe", seeds=(0,), size="quick", limit=6,
                     epochs=1, model_name=f"{family}-speech-ft")
    assert len(recs) == 1 and recs[0]["task"] == "lite-ks" and recs[0]["metric"] == "accuracy"
    assert 0.0 <= recs[0]["value"] <= 1.0

    # analyze: similarity per layer (13 hidden states at base size) and LLFC against θ₀
    manifest = small_asr.manifests[2]
    out = analyze([str(theta0_dir), str(runs["regular"] / "encoder"), str(merged_dir)], manifest,
                  tmp_path / "analysis", alphas=(0.5,), limit=2, names=["θ0", "regular", "speech-ft"])
    assert (tmp_path / "analysis" / "analysis.jsonl").exists()
    sim = [r for r in out if r["kind"] == "similarity" and r["model"] == "speech-ft"]
    assert sorted(r["layer"] for r in sim) == list(range(13))
    assert all(0.0 <= r["cka"] <= 1.0 + 1e-6 for r in sim)
    assert {r["model"] for r in out if r["kind"] == "llfc"} == {"regular", "speech-ft"}

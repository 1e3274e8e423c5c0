"""Fine-tuning: the stable recipe's warm-up and freezing, the tri-stage lr, the baselines, outputs.

Tiny HuBERT (2 x 32) on quick lite data, a handful of steps each."""
import json
import logging

import pytest
import torch

from speechft.finetune import FinetuneConfig, TrainingDiverged, finetune, head_only_steps, load_config, load_head
from speechft.finetune.schedule import stage_lengths, tri_stage

CNN = "feature_extractor."
CTC_HEAD = {"hidden": 16, "proj": 16, "layers": 1}


def run_ft(model_dir, out, recipe="stable", task="lite-asr", steps=8, **kw):
    opts = dict(size="quick", progress=False, batch_seconds=4.0, head=CTC_HEAD, eval_every=0,
                checkpoint_every=steps, log_every=1, tensorboard=False)
    opts.update(kw)
    return finetune(str(model_dir), task, out, recipe=recipe, steps=steps, **opts)


def hf_weights(path) -> dict:
    from transformers import AutoModel

    return {k: v.detach().clone() for k, v in AutoModel.from_pretrained(str(path)).state_dict().items()}


def ckpt_state(out, step) -> dict:
    return torch.load(out / "checkpoints" / f"step-{step:07d}" / "state.pt", weights_only=False)


def encoder_part(state: dict) -> dict:
    return {k[len("encoder.model."):]: v for k, v in state["model"].items() if k.startswith("encoder.model.")}


def head_part(state: dict) -> dict:
    return {k: v for k, v in state["model"].items() if k.startswith("head.")}


def distance(a: dict, b: dict, skip: str = "") -> float:
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a if not (skip and k.startswith(skip))) ** 0.5


def records(out, split="train") -> list:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


# -- schedule -----------------------------------------------------------------------------------
def test_tri_stage_shape():
    T = 100
    m = [tri_stage(s, T) for s in range(T)]
    assert stage_lengths(T, 0.1, 0.4) == (10, 40, 50)
    assert m[0] == pytest.approx(0.1) and m[9] == 1.0  # linear warm-up over the first 10 %
    assert all(b > a for a, b in zip(m[:9], m[1:10]))
    assert all(v == 1.0 for v in m[10:50])  # constant for 40 %
    assert all(b < a for a, b in zip(m[50:-1], m[51:]))  # linear decay over the last 50 % ...
    assert m[-1] == pytest.approx(1 / 50) and tri_stage(T, T) == 0.0  # ... reaching 0 just after the end
    assert head_only_steps(100, 0.1) == 10 and head_only_steps(7, 0.0) == 0


# -- stable fine-tuning --------------------------------------------------------------------------
def test_head_only_forward_leaves_encoder_grads_none_even_with_weight_decay():
    from conftest import make_tiny_encoder, sine
    from speechft.finetune.model import SpeechFTModel
    from speechft.models.heads import PoolClassifier

    enc = make_tiny_encoder()
    net = SpeechFTModel(enc, PoolClassifier(32, 3)).train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=0.1)
    wav = torch.from_numpy(sine(0.5)).repeat(2, 1)
    for _ in range(2):
        logits, lens = net(wav, torch.tensor([8000, 6000]), train_encoder=False)
        net.head.loss(logits, lens, [0, 2]).backward()
        assert all(p.grad is None for p in enc.parameters())
        assert all(p.grad is not None for p in net.head.parameters())
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    logits, lens = net(wav, torch.tensor([8000, 6000]), train_encoder=True)
    net.head.loss(logits, lens, [0, 2]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.model.encoder.parameters())


@pytest.fixture(scope="module")
def stable_run(tmp_path_factory, tiny_model_dir, lite_quick):
    """Stable FT, 10 steps with beta 0.3 (3 head-only steps), a checkpoint after every step."""
    out = tmp_path_factory.mktemp("ft") / "stable"
    run_ft(tiny_model_dir, out, steps=10, beta=0.3, checkpoint_every=1, keep_checkpoints=20, lr=1e-3)
    return out


def test_stable_warmup_encoder_bit_identical_then_trains(stable_run, tiny_model_dir):
    theta0 = hf_weights(tiny_model_dir)
    heads = []
    for step in (1, 2, 3):  # the head-only phase: round(0.3 * 10) = 3 steps
        st = ckpt_state(stable_run, step)
        enc = encoder_part(st)
        assert set(enc) == set(theta0)
        changed = [k for k in theta0 if not torch.equal(enc[k], theta0[k])]
        assert changed == [], f"encoder moved during the head-only phase at step {step}: {changed[:3]}"
        heads.append(head_part(st))
    assert distance(heads[0], heads[2]) > 0  # the head does learn meanwhile

    after = encoder_part(ckpt_state(stable_run, 4))
    moved = {k for k in theta0 if not torch.equal(after[k], theta0[k])}
    assert any(k.startswith("encoder.layers.") for k in moved)  # the first full step moves the transformer

    final = hf_weights(stable_run / "encoder")
    cnn = [k for k in theta0 if k.startswith(CNN)]
    assert cnn and all(torch.equal(final[k], theta0[k]) for k in cnn)  # the CNN never changes
    non_cnn = [k for k in theta0 if not k.startswith(CNN)]
    assert sum(not torch.equal(final[k], theta0[k]) for k in non_cnn) >= len(non_cnn) - 2


def test_stable_lr_follows_tri_stage_and_phases(stable_run):
    recs = records(stable_run)
    assert [r["step"] for r in recs] == list(range(1, 11))
    for r in recs:
        mult = tri_stage(r["step"] - 1, 10)
        assert r["lr"] == pytest.approx(1e-3 * mult) and r["head_lr"] == pytest.approx(1e-3 * mult)
    assert [r["phase"] for r in recs] == ["head-only"] * 3 + ["full"] * 7
    assert all(r["units"] > 0 and r["grad_norm"] > 0 for r in recs)
    dev = records(stable_run, "dev")
    assert len(dev) == 1 and dev[0]["step"] == 10 and 0 <= dev[0]["cer"] and dev[0]["utterances"] == 15


def test_outputs_config_head_and_card(stable_run):
    saved = (stable_run / "config.yaml").read_text()
    cfg = load_config(stable_run / "config.yaml")  # a saved config can be passed back as --config
    assert cfg.steps == 10 and cfg.beta == 0.3 and "recipe: stable" in saved and "head_only_steps: 3" in saved
    card = json.loads((stable_run / "encoder" / "speechft_card.json").read_text())
    assert card["recipe"] == "stable" and card["task"] == "lite-asr" and card["steps"] == 10
    assert card["head_only_steps"] == 3 and "dev_cer" in card
    head, vocab, meta = load_head(stable_run / "head")
    assert meta["kind"] == "ctc" and meta["options"]["hidden"] == 16 and len(vocab) == head.out.out_features
    steps = sorted(p.name for p in (stable_run / "checkpoints").iterdir())
    assert len(steps) == 10 and not [p for p in (stable_run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resume_after_stop_matches_uninterrupted(stable_run, tmp_path, tiny_model_dir):
    out = tmp_path / "resumed"
    run_ft(tiny_model_dir, out, steps=10, beta=0.3, checkpoint_every=4, lr=1e-3, stop_after=6)
    assert not (out / "encoder").exists() and (out / "checkpoints" / "step-0000006").is_dir()
    with pytest.raises(FileExistsError, match="--resume"):
        run_ft(tiny_model_dir, out, steps=10, beta=0.3)
    with pytest.raises(ValueError, match="steps=10"):
        finetune(str(tiny_model_dir), "lite-asr", out, steps=12, resume=True, progress=False)
    with pytest.raises(ValueError, match="lr"):
        finetune(None, None, out, resume=True, progress=False, lr=5e-4)
    finetune(None, None, out, resume=True, progress=False)  # model/task/recipe come from config.yaml
    a, b = hf_weights(stable_run / "encoder"), hf_weights(out / "encoder")
    assert a and a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    ha, hb = load_head(stable_run / "head")[0].state_dict(), load_head(out / "head")[0].state_dict()
    assert ha and ha.keys() == hb.keys() and [k for k in ha if not torch.equal(ha[k], hb[k])] == []
    assert [r["step"] for r in records(out)] == list(range(1, 11))  # no duplicate records after the resume
    assert len(list((out / "checkpoints").iterdir())) == 2  # keep_checkpoints


# -- baselines ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regular_run(tmp_path_factory, tiny_model_dir, lite_quick):
    out = tmp_path_factory.mktemp("ft") / "regular"
    run_ft(tiny_model_dir, out, recipe="regular", steps=6, lr=1e-3, save_every=3)
    return out


def test_regular_trains_cnn_and_keeps_early_checkpoints(regular_run, tiny_model_dir):
    theta0, final = hf_weights(tiny_model_dir), hf_weights(regular_run / "encoder")
    cnn = [k for k in theta0 if k.startswith(CNN)]
    assert cnn and any(not torch.equal(final[k], theta0[k]) for k in cnn)
    assert [r["phase"] for r in records(regular_run)] == ["full"] * 6  # no head-only warm-up
    early = sorted(p.name for p in (regular_run / "early").iterdir())
    assert early == ["step-3", "step-6"]
    e3 = hf_weights(regular_run / "early" / "step-3")
    assert 0 < distance(e3, theta0) < distance(final, theta0)
    assert json.loads((regular_run / "early" / "step-3" / "speechft_card.json").read_text())["steps"] == 3


def test_l2sp_large_lambda_stays_closer_than_regular(regular_run, tiny_model_dir, tmp_path):
    out = run_ft(tiny_model_dir, tmp_path / "l2sp", recipe="l2sp", steps=6, lr=1e-3, l2sp_lambda=1e4)
    theta0 = hf_weights(tiny_model_dir)
    d_l2sp = distance(hf_weights(out / "encoder"), theta0)
    d_reg = distance(hf_weights(regular_run / "encoder"), theta0)
    assert 0 < d_l2sp < 0.5 * d_reg
    assert all(r["l2sp_penalty"] >= 0 for r in records(out)) and records(out)[-1]["l2sp_penalty"] > 0


@pytest.mark.parametrize("recipe", ["lora", "dora"])
def test_lora_dora_write_plain_hf_dirs(recipe, tiny_model_dir, tmp_path, lite_quick):
    from safetensors import safe_open
    from transformers import AutoModel

    out = run_ft(tiny_model_dir, tmp_path / recipe, recipe=recipe, steps=4, lr=1e-2, lora_rank=2)
    model = AutoModel.from_pretrained(str(out / "encoder"))
    assert type(model).__name__ == "HubertModel"
    with safe_open(str(out / "encoder" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not [k for k in keys if "lora" in k or "base_model" in k]
    theta0, final = hf_weights(tiny_model_dir), hf_weights(out / "encoder")
    assert set(final) == set(theta0)
    changed = {k for k in theta0 if not torch.equal(final[k], theta0[k])}
    assert any(k.endswith("q_proj.weight") for k in changed)  # the merged adapters moved the projections
    assert not [k for k in changed if k.startswith(CNN) or "layer_norm" in k]  # nothing else trained
    card = json.loads((out / "encoder" / "speechft_card.json").read_text())
    assert card["merged"] is True and card["lora_rank"] == 2


def _small_wavlm():
    from transformers import WavLMConfig

    from speechft.models.encoder import HFEncoder
    from speechft.models.io import build_model_from_config

    cfg = WavLMConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    return HFEncoder(build_model_from_config(cfg, seed=0), name="wavlm-test")


def test_lora_on_wavlm_skips_the_attention_projections_it_never_calls(caplog):
    """transformers' WavLM attention reads q/k/v/out_proj.weight directly: adapters there never train."""
    from speechft.finetune.recipes import bypassed_adapters, get_recipe, prepare_encoder

    with caplog.at_level(logging.WARNING):
        enc = prepare_encoder(_small_wavlm(), get_recipe("lora"), FinetuneConfig(), freeze_cnn=True)
    assert "never calls its k_proj, out_proj, q_proj, v_proj" in caplog.text
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in enc.model.named_parameters() if ".lora_A." in n}
    assert adapted == {"intermediate_dense", "output_dense"} and bypassed_adapters(enc.model) == []
    with pytest.raises(ValueError, match=r"never calls its q_proj.*lora_targets without them \(e.g. \['output_dense'\]\)"):
        prepare_encoder(_small_wavlm(), get_recipe("dora"), FinetuneConfig(lora_targets=("q_proj", "output_dense")),
                        freeze_cnn=True)


def test_lora_on_hubert_adapts_every_default_target(tiny_model_dir):
    from speechft.finetune.recipes import bypassed_adapters, get_recipe, prepare_encoder
    from speechft.models.io import load_encoder

    enc = prepare_encoder(load_encoder(str(tiny_model_dir)), get_recipe("lora"), FinetuneConfig(), freeze_cnn=True)
    assert bypassed_adapters(enc.model) == []
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in enc.model.named_parameters() if ".lora_A." in n}
    assert {"q_proj", "k_proj", "v_proj", "out_proj"} <= adapted


# -- failures -------------------------------------------------------------------------------------
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model_dir, tmp_path, lite_quick, monkeypatch):
    from speechft.models.heads import CTCHead

    calls = {"n": 0}
    real = CTCHead.loss

    def flaky(self, *a, **kw):
        calls["n"] += 1
        loss = real(self, *a, **kw)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(CTCHead, "loss", flaky)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"non-finite loss .* at step 3.*step-0000002"):
        run_ft(tiny_model_dir, out, steps=6, checkpoint_every=1)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
    assert not (out / "encoder").exists()


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'head_lr'"):
        load_config(None, head_rl=1e-3)
    p = tmp_path / "c.yaml"
    p.write_text("lr: 2e-4\nbeta: 0.2\nsteps: 50\n")
    cfg = load_config(p, steps=60)
    assert (cfg.lr, cfg.beta, cfg.steps) == (2e-4, 0.2, 60)
    p.write_text("lr: 2e-4\nwarmup_fracs: 0.1\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown .* 'warmup_fracs'.*did you mean 'warmup_frac'"):
        load_config(p)
    with pytest.raises(ValueError, match="must sum|must be 1"):
        FinetuneConfig(warmup_frac=0.5, hold_frac=0.5, decay_frac=0.5)
    with pytest.raises(ValueError, match="beta"):
        FinetuneConfig(beta=1.5)
    from conftest import PROJECT

    assert load_config(PROJECT / "configs" / "finetune-stable.yaml") == FinetuneConfig()  # the file documents the defaults


def test_bad_recipe_and_fbank_are_clear_errors(tmp_path, tiny_model_dir, lite_quick):
    with pytest.raises(KeyError, match="did you mean stable"):
        finetune(str(tiny_model_dir), "lite-asr", tmp_path / "x", recipe="stabel")
    with pytest.raises(ValueError, match="only transformers encoders can be fine-tuned"):
        finetune("fbank", "lite-asr", tmp_path / "y", size="quick", progress=False)


def test_cli_user_classify_task(tiny_model_dir, tmp_path, lite_quick, caplog):
    from typer.testing import CliRunner

    from speechft.cli import app

    ks = lite_quick / "lite-ks"
    manifests = ",".join(str(ks / f"{s}.jsonl") for s in ("train", "dev", "test"))
    out = tmp_path / "cli"
    with caplog.at_level(logging.DEBUG):  # the TensorBoard note is a detail (-v)
        res = CliRunner().invoke(app, ["finetune", "--model", str(tiny_model_dir), "--task", "my-ks",
                                       "--task-manifests", manifests, "--task-type", "classify", "--out", str(out),
                                       "--steps", "3", "--batch-seconds", "8", "--recipe", "stable",
                                       "--select", "best"])
    assert res.exit_code == 0, res.output
    assert "encoder:" in res.output and (out / "encoder" / "config.json").exists()
    dev = records(out, "dev")
    assert 0.0 <= dev[-1]["accuracy"] <= 1.0
    saved = (out / "config.yaml").read_text()
    assert "task_def" in saved and "my-ks" in saved
    assert (out / "best" / "encoder" / "config.json").exists()  # select=best keeps the best dev pair
    assert json.loads((out / "encoder" / "speechft_card.json").read_text())["selected"] == "best"
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "TensorBoard log skipped" in caplog.text
    res = CliRunner().invoke(app, ["finetune", "--model", str(tiny_model_dir), "--task", "lite-asr",
                                   "--out", str(tmp_path / "bad"), "--lr", "-1"])
    assert res.exit_code == 2 and "lr and head_lr must be > 0" in res.output

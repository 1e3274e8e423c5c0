"""--alpha auto: the selection rules on curves whose answer is known, the signals on models whose answer
is known (θ′ = θ₀; an unrelated θ′), and the merge command merging at the chosen α."""
import json
import os

import pytest
import torch
from typer.testing import CliRunner

from speechft.merge.auto import GRID, choose_by_gain, choose_by_similarity, parse_rule

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# -- the rules (pure) ----------------------------------------------------------------------------------
def test_gain_rule_picks_the_smallest_alpha_keeping_the_share():
    acc = {0.0: 0.50, 0.2: 0.70, 0.4: 0.86, 0.6: 0.92, 0.8: 0.94, 1.0: 0.95}  # gain of α=1: 0.45
    assert choose_by_gain(acc, True, 0.9) == 0.6  # needs ≥ 0.405: 0.36 at 0.4, 0.42 at 0.6
    assert choose_by_gain(acc, True, 0.8) == 0.4  # needs ≥ 0.36
    assert choose_by_gain(acc, True, 1.0) == 1.0
    cer = {a: 1.0 - v for a, v in acc.items()}  # an error rate: lower is better, same answer
    assert choose_by_gain(cer, False, 0.9) == 0.6


def test_gain_rule_without_a_gain_returns_the_best_dev_alpha():
    hurt = {0.0: 0.80, 0.5: 0.82, 1.0: 0.70}  # fine-tuning made dev worse: keep the best α on dev
    assert choose_by_gain(hurt, True, 0.9) == 0.5
    flat = {a: 0.6 for a in (0.0, 0.5, 1.0)}
    assert choose_by_gain(flat, True, 0.9) == 0.0  # ties go to θ₀
    with pytest.raises(ValueError, match="α = 0 and α = 1"):
        choose_by_gain({0.0: 1.0, 0.5: 1.0}, True, 0.9)


def test_similarity_rule_picks_the_largest_alpha_above_the_threshold():
    cka = {0.0: 1.0, 0.25: 0.97, 0.5: 0.91, 0.75: 0.85, 1.0: 0.80}
    assert choose_by_similarity(cka, 0.9) == 0.5
    assert choose_by_similarity(cka, 0.99) == 0.0
    assert choose_by_similarity(cka, 0.5) == 1.0


def test_rule_specs():
    assert parse_rule("auto")[0].name == "cka" and parse_rule("auto")[1] == 0.9  # the measured best (docs/alpha)
    assert parse_rule("auto:cka:0.8")[0].name == "cka" and parse_rule("auto:cka:0.8")[1] == 0.8
    with pytest.raises(ValueError, match="did you mean cka"):
        parse_rule("auto:ckaa")
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        parse_rule("auto:ft-dev:2")
    with pytest.raises(ValueError, match="not a number"):
        parse_rule("auto:cka:x")


# -- the signals on models whose answer is known --------------------------------------------------------
@pytest.fixture(scope="module")
def ft_run(tiny_model_dir, lite_quick, tmp_path_factory):
    from speechft.finetune import finetune

    out = tmp_path_factory.mktemp("auto") / "stable"
    return finetune(str(tiny_model_dir), "lite-ks", out, recipe="stable", steps=20, size="quick", progress=False,
                    batch_seconds=4.0, eval_every=20, checkpoint_every=20, log_every=5, tensorboard=False, lr=5e-3)


def test_cka_curve_is_one_for_theta0_and_falls_for_an_unrelated_model(tiny_model_dir, tmp_path, lite_quick):
    from conftest import make_tiny_encoder
    from speechft.merge.auto import cka_curve
    from speechft.models.io import save_encoder
    from speechft.tasks import get_task

    dev = get_task("lite-ks").resolve_manifests(size="quick")["dev"]
    same = cka_curve(str(tiny_model_dir), tiny_model_dir, dev, grid=(0.0, 0.5, 1.0), limit=8)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in same.values())
    assert choose_by_similarity(same, 0.9) == 1.0  # nothing moved: every α is as close as θ₀
    other = save_encoder(make_tiny_encoder(seed=7), tmp_path / "other", card={"name": "other"})
    far = cka_curve(str(tiny_model_dir), other, dev, grid=(0.0, 0.5, 1.0), limit=8)
    assert far[0.0] == pytest.approx(1.0, abs=1e-6) and far[1.0] < far[0.0]
    assert choose_by_similarity(far, (far[1.0] + 1.0) / 2) < 1.0


def test_ft_dev_curve_ends_at_the_runs_own_model(ft_run, tiny_model_dir):
    from speechft.merge.auto import ft_dev_curve

    curve, metric, hib = ft_dev_curve(str(tiny_model_dir), ft_run, grid=(0.0, 1.0), limit=None)
    assert metric == "accuracy" and hib
    last_dev = [json.loads(x) for x in (ft_run / "metrics.jsonl").read_text().splitlines()
                if json.loads(x)["split"] == "dev"][-1]
    assert curve[1.0] == pytest.approx(last_dev["accuracy"])  # α = 1 is the run's final model, same dev set


def test_ft_dev_with_theta_prime_equal_theta0_keeps_theta0(ft_run, tiny_model_dir, tmp_path):
    import shutil

    from speechft.merge.auto import choose_alpha

    run = tmp_path / "run"
    shutil.copytree(ft_run, run)
    shutil.rmtree(run / "encoder")
    shutil.copytree(tiny_model_dir, run / "encoder")  # θ′ = θ₀: no α changes anything
    choice = choose_alpha(str(tiny_model_dir), run, "auto:ft-dev", grid=(0.0, 0.5, 1.0), limit=None)
    assert len(set(choice.curve.values())) == 1 and choice.alpha == 0.0


# -- the command -------------------------------------------------------------------------------------------
def test_merge_alpha_auto_merges_at_the_chosen_alpha(ft_run, tiny_model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import speechft.merge.auto as auto
    from speechft.cli import app

    known = {a: min(1.0, 0.5 + a) for a in GRID}  # saturates at α = 0.5: 90 % of the gain at α = 0.5
    monkeypatch.setattr(auto, "ft_dev_curve", lambda *a, **k: (dict(known), "accuracy", True))
    res = CliRunner().invoke(app, ["merge", "--pretrained", str(tiny_model_dir), "--finetuned",
                                   str(ft_run / "encoder"), "--alpha", "auto:ft-dev", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "m" / "speechft_card.json").read_text())
    assert card["alpha"] == 0.5 and card["alpha_auto"]["rule"] == "ft-dev" and card["alpha_auto"]["alpha"] == 0.5
    w0, w1 = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(ft_run / "encoder" / "model.safetensors"))
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    k = next(k for k in w0 if not torch.equal(w0[k], w1[k]))
    assert torch.allclose(got[k], 0.5 * w0[k] + 0.5 * w1[k], atol=1e-6)


def test_merge_alpha_auto_errors_are_one_line_exit_2(ft_run, tiny_model_dir, tmp_path):
    from speechft.cli import app

    def run(*args):
        return CliRunner().invoke(app, ["merge", "--pretrained", str(tiny_model_dir), *map(str, args)])

    res = run("--finetuned", tiny_model_dir, "--alpha", "auto", "--out", tmp_path / "a")
    assert res.exit_code == 2 and "needs a fine-tuning run folder" in res.output
    res = run("--finetuned", ft_run, "--finetuned", ft_run, "--alpha", "auto", "--out", tmp_path / "b")
    assert res.exit_code == 2 and "one fine-tuning run" in res.output
    res = run("--finetuned", ft_run, "--alpha", "auto:ckaa", "--out", tmp_path / "c")
    assert res.exit_code == 2 and "did you mean cka" in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_sweep_alphas_auto_entry_adds_the_chosen_alpha_and_records_its_choice(ft_run, tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    import speechft.merge.auto as auto
    from speechft.cli import app

    known = {a: min(1.0, 0.3 + a) for a in GRID}  # 90 % of the gain (0.63 of 0.7) first at α = 0.7
    monkeypatch.setattr(auto, "ft_dev_curve", lambda *a, **k: (dict(known), "accuracy", True))
    out = tmp_path / "sweep"
    res = CliRunner().invoke(app, ["sweep", "--pretrained", str(tiny_model_dir), "--finetuned", str(ft_run),
                                   "--alphas", "0,auto:ft-dev,1", "--tasks", "lite-ks", "--quick", "--epochs", "1",
                                   "--limit", "8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in (out / "sweep.jsonl").read_text().splitlines()]
    assert sorted(r["alpha"] for r in recs) == [0.0, 0.7, 1.0]
    choice = json.loads((out / "alpha_auto.jsonl").read_text().splitlines()[0])
    assert choice["spec"] == "auto:ft-dev" and choice["alpha"] == 0.7 and choice["rule"] == "ft-dev"


def test_choice_on_a_coarser_grid_applies_the_same_rule_to_the_restricted_curve():
    from speechft.merge.auto import AutoChoice

    gain = AutoChoice(0.6, "ft-dev", 0.9, {a: min(1.0, 0.3 + a) for a in GRID} | {0.25: 0.55, 0.75: 1.0})
    assert gain.on((0.0, 0.25, 0.5, 0.75, 1.0)) == 0.75  # 0.5 keeps only 71 % of the gain
    cka = AutoChoice(0.3, "cka", 0.9, {a: 1.0 - a / 3 for a in GRID})
    assert cka.on((0.0, 0.2, 0.5, 1.0)) == 0.2


def test_choose_by_drop_keeps_the_largest_alpha_within_the_allowed_loss():
    from speechft.merge.auto import choose_by_drop

    acc = {0.0: 0.80, 0.25: 0.79, 0.5: 0.785, 0.75: 0.70, 1.0: 0.60}
    assert choose_by_drop(acc, True, 0.02) == 0.5  # 0.785 >= 0.98 * 0.80 = 0.784
    assert choose_by_drop(acc, True, 0.001) == 0.0
    err = {0.0: 0.40, 0.5: 0.404, 1.0: 0.50}  # an error rate: lower is better
    assert choose_by_drop(err, False, 0.02) == 0.5 and choose_by_drop(err, False, 0.5) == 1.0


def test_held_out_rule_probes_the_held_out_task_at_every_alpha(ft_run, tiny_model_dir):
    from speechft.merge.auto import choose_alpha, held_out_task

    assert held_out_task("lite-asr") == "lite-sid" and held_out_task("lite-sid") == "lite-ks"
    assert held_out_task("fsdd-sid") == "lite-ks"
    choice = choose_alpha(str(tiny_model_dir), ft_run, "auto:held-out:0.5", grid=(0.0, 1.0), limit=8)
    assert choice.rule == "held-out" and choice.metric == "lite-sid accuracy" and set(choice.curve) == {0.0, 1.0}
    assert all(0.0 <= v <= 1.0 for v in choice.curve.values()) and choice.alpha in (0.0, 1.0)


# -- per-layer α from each layer's drift (auto:drift) -----------------------------------------------------------
def test_drift_rule_caps_every_layers_drift_at_the_budget_times_the_mean_drift():
    from speechft.merge.auto import alphas_from_drift

    assert alphas_from_drift({"layer1": 0.2, "layer2": 0.2, "proj": 0.2}, 0.25) == pytest.approx(
        {"layer1": 0.25, "layer2": 0.25, "proj": 0.25})  # equal drifts: the uniform merge
    got = alphas_from_drift({"layer1": 0.1, "layer2": 0.2, "layer3": 0.3, "cnn": 0.0}, 0.25)
    assert got == pytest.approx({"layer1": 0.5, "layer2": 0.25, "layer3": 0.05 / 0.3})  # d̄ = 0.2, cap 0.05
    assert "cnn" not in got  # did not move: any α gives θ₀ there
    assert alphas_from_drift({"layer1": 0.01, "layer2": 1.0}, 0.5)["layer1"] == 1.0  # α never exceeds 1
    assert alphas_from_drift({"cnn": 0.0}, 0.25) == {}


def _drifted_copy(src, out, scales: dict):
    """A copy of the model dir ``src`` whose parameters of layer group g are θ₀·(1 + scales[g])."""
    import shutil

    from safetensors.torch import load_file, save_file

    from speechft.merge.keys import layer_group

    shutil.copytree(src, out)
    w = load_file(str(out / "model.safetensors"))
    save_file({k: v * (1 + scales.get(layer_group(k), 0.0)) for k, v in w.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def test_merge_alpha_auto_drift_pulls_each_layer_back_to_the_same_drift(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from speechft.cli import app
    from speechft.merge.keys import layer_group

    ft = _drifted_copy(tiny_model_dir, tmp_path / "ft", {"layer1": 0.3, "layer2": 0.1})  # d̄ = 0.2
    res = CliRunner().invoke(app, ["merge", "--pretrained", str(tiny_model_dir), "--finetuned", str(ft),
                                   "--alpha", "auto:drift:0.25", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "m" / "speechft_card.json").read_text())
    assert card["layer_alphas"] == pytest.approx({"layer1": 0.05 / 0.3, "layer2": 0.5}, abs=1e-4)
    drift = card["alpha_auto"]["drift"]  # every group's drift, 0 for those that did not move
    assert {g: d for g, d in drift.items() if d > 0} == pytest.approx({"layer1": 0.3, "layer2": 0.1}, abs=1e-5)
    assert {"cnn", "proj"} <= set(drift) and drift["cnn"] == 0.0
    w0, got = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(tmp_path / "m" / "model.safetensors"))
    for k, v in w0.items():
        want = 1.05 if layer_group(k) in ("layer1", "layer2") else 1.0  # each moved layer keeps drift 0.25·d̄ = 0.05
        assert torch.allclose(got[k], v * want, atol=1e-6), k


def test_layer_alphas_are_checked_and_a_per_layer_rule_is_not_a_sweep_point(tiny_model_dir, tmp_path):
    from speechft.cli import app
    from speechft.merge import merge_models

    ft = _drifted_copy(tiny_model_dir, tmp_path / "ft", {"layer1": 0.1})
    with pytest.raises(ValueError, match="layer9 is not a layer group"):
        merge_models(str(tiny_model_dir), [str(ft)], tmp_path / "m", layer_alphas={"layer9": 0.5})
    assert not (tmp_path / "m").exists()
    res = CliRunner().invoke(app, ["sweep", "--pretrained", str(tiny_model_dir), "--finetuned", str(ft),
                                   "--alphas", "0,auto:drift", "--tasks", "lite-ks", "--quick", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "α per layer" in res.output and "speechft merge --alpha auto:drift" in res.output


def test_layer_alphas_are_shown_in_layer_order():
    from speechft.report.markdown import layer_alpha_text

    assert layer_alpha_text({"layer10": 0.25, "other": 1.0, "layer2": 0.5, "proj": 1.0}) == \
        "proj 1, layer2 0.5, layer10 0.25, other 1"

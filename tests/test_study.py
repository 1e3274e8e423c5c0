"""`speechft study`: config validation, the plan's structure, and a tiny end-to-end run."""
import dataclasses

import pytest

from speechft.study import plan_study
from speechft.study_config import Multitask, Scenario, StudyConfig
from speechft.utils.io import read_jsonl
from test_reproduce import _done


def test_shipped_config_is_the_built_in_study():
    assert StudyConfig.load("configs/study.yaml") == StudyConfig.default()


@pytest.mark.parametrize("text, message", [
    ("ft_seedz: 2\nscenarios: [{name: a, task: lite-ks}]\n", "did you mean 'ft_seeds'"),
    ("scenarios: [{name: a, task: lite-ks, baselines: [l2s]}]\n", "unknown baseline"),
    ("scenarios: [{name: a, task: lite-kz}]\n", "lite-ks"),
    ("scenarios: [{name: a, task: lite-ks}]\nmultitask: {scenarios: [b]}\n", "unknown scenario"),
    ("scenarios: []\n", "at least one scenario"),
    ("scenarios: [{name: u, kind: unsupervised, languages: [xx]}]\n", "languages must be codes"),
    ("scenarios: [{name: a, task: lite-ks}, {name: u, kind: unsupervised, languages: [sw]}]\n"
     "multitask: {scenarios: [u]}\n", "known supervised ones: a"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path, text, message):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises((ValueError, KeyError), match=message):
        StudyConfig.load(p)


def test_plan_pools_fine_tuning_seeds_and_merges_stable_models_for_multitask(tmp_path):
    cfg = StudyConfig(scenarios=(Scenario("a", "lite-ks", ("l2sp", "early")), Scenario("b", "lite-style")),
                      multitask=Multitask(scenarios=("a", "b"), methods=("linear", "ties")), ft_seeds=2,
                      baseline_ft_seeds=1, tasks=("lite-ks", "lite-style"), sweep_alphas=(0.0, 0.25, 0.5, 1.0))
    plan = plan_study(cfg, tmp_path, ["lite-ks", "lite-style"])
    by = {j.name: j for j in plan.jobs}
    rows = {r.label: r for r in plan.rows}
    assert [n for n, _ in rows["a / regular FT"].models] == ["a / regular FT / ft0", "a / regular FT / ft1"]
    assert len(rows["a / L2-SP"].models) == 1 and len(rows["a / Speech-FT (α=0.25)"].models) == 2
    assert by["a: finetune-stable ft1"].kwargs["options"]["seed"] == 1
    assert by["a: finetune-stable ft0"].kwargs["options"]["save_every"] == cfg.early_step
    assert set(by["multitask: merge ties ft1"].deps) == {"a: finetune-stable ft1", "b: finetune-stable ft1"}
    # θ₀ and FBANK are probed once for every scenario
    assert sum(1 for n in by if n.startswith("probe pre-trained / ")) == 2
    # the sweep of a scenario uses θ₀, Stable-FT ft0, Speech-FT ft0 and the one new α
    assert plan.sweeps["a"] == {0.0: "pre-trained", 0.25: "a / Speech-FT (α=0.25) / ft0", 0.5: "a / sweep α=0.5 / ft0",
                                1.0: "a / Stable-FT / ft0"}
    assert not rows["a / sweep α=0.5"].in_table


def test_multitask_and_unsupervised_blocks_take_their_own_seed_counts(tmp_path):
    cfg = StudyConfig(scenarios=(Scenario("a", "lite-ks", ("lora", "l2sp")), Scenario("b", "lite-style"),
                                 Scenario("x", kind="unsupervised", languages=("hu",), ft_seeds=1)),
                      multitask=Multitask(scenarios=("a", "b"), methods=("linear",), ft_seeds=1), ft_seeds=2,
                      tasks=("lite-ks",), freeze_cnn=False)
    plan = plan_study(cfg, tmp_path, ["lite-ks"])
    rows = {r.label: r for r in plan.rows}
    assert len(rows["multitask / multitask mean τ"].models) == 1
    assert len(rows["x / continued (α=1)"].models) == 1 and len(rows["a / Stable-FT"].models) == 2
    shared = plan.jobs[[j.name for j in plan.jobs].index("extract / lite-ks")].kwargs["refs"]
    # LoRA keeps θ₀'s CNN frozen: its features come from the shared pass; L2-SP and regular FT train it
    assert any("lora-ft0" in r for r in shared) and not any("l2sp" in r or "regular" in r for r in shared)
    assert "freeze_cnn" not in {j.name: j for j in plan.jobs}["a: finetune-regular ft0"].kwargs["options"]


def test_freeze_cnn_keeps_thetas_cnn_in_every_recipe_and_shares_its_features(tmp_path):
    cfg = StudyConfig(scenarios=(Scenario("a", "lite-ks", ("l2sp",)),), tasks=("lite-ks",))
    assert cfg.freeze_cnn  # the official code path: the CNN never receives gradients
    plan = plan_study(cfg, tmp_path, ["lite-ks"])
    by = {j.name: j for j in plan.jobs}
    assert by["a: finetune-regular ft1"].kwargs["options"]["freeze_cnn"] is True
    assert by["a: finetune-l2sp ft0"].kwargs["options"]["freeze_cnn"] is True
    shared = by["extract / lite-ks"].kwargs["refs"]
    assert any("regular-ft1" in r for r in shared) and any("l2sp-ft0" in r for r in shared)


def test_multitask_seeds_cannot_exceed_the_studys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("ft_seeds: 2\nscenarios: [{name: a, task: lite-ks}]\n"
                    "multitask: {scenarios: [a], ft_seeds: 3}\n")
    with pytest.raises(ValueError, match="multitask: ft_seeds"):
        StudyConfig.load(path)


@pytest.mark.slow
def test_tiny_study_end_to_end_every_section_and_resume(tmp_path, lite_quick, monkeypatch):
    from conftest import make_tiny_encoder
    from speechft.models.io import save_encoder
    from speechft.study import study

    theta0 = tmp_path / "theta0"  # with masked_spec_embed, as pre-trained HuBERTs (and continued pre-training) have
    save_encoder(make_tiny_encoder(mask_time_prob=0.05), theta0)
    cfg = StudyConfig(model=str(theta0), tasks=("lite-ks", "lite-style"),
                      scenarios=(Scenario("a", "lite-ks", ("l2sp",)), Scenario("b", "lite-style"),
                                 Scenario("u", kind="unsupervised", languages=("sw", "vi"), hours=0.01, steps=3)),
                      multitask=Multitask(scenarios=("a", "b"), methods=("linear", "ties")), ft_seeds=2, probe_seeds=2,
                      ft_steps=4, ft_batch_seconds=6.0, size="quick", probe_epochs=1, analysis_limit=6,
                      sweep_alphas=(0.0, 1.0))
    out = tmp_path / "study"
    text = study(cfg, out, workers=1).read_text()
    for section in ("## Summary", "### The paper's figures", "## Scenario a", "## Scenario b",
                    "## Scenario u: continued pre-training on sw, vi", "| u / continued (α=1) |", "## Multitask",
                    "## Interval widths", "## Timings", "| a (lite-ks) | Speech-FT (α=0.25) |", "| b / Stable-FT |"):
        assert section in text, section
    recs = read_jsonl(out / "probe" / "results.jsonl")
    assert {r["seed"] for r in recs} == {0, 1}
    assert sum(r["model"] == "pre-trained" for r in recs) == 4  # 2 tasks x 2 probe seeds, shared by both scenarios
    assert not (out / "features").exists()  # the features of the models the study made went after their probes
    done, lines = _done(out), len(read_jsonl(out / "stages.jsonl"))
    calls = []
    monkeypatch.setattr("speechft.finetune.finetune", lambda *a, **k: calls.append(a))
    study(dataclasses.replace(cfg), out, workers=1)
    # the cheap always-run jobs (data preparation, the unsupervised audio, the drops of scratch features) ran
    # again with the same results: nothing recorded
    assert calls == [] and _done(out) == done and len(read_jsonl(out / "stages.jsonl")) == lines


# -- continual scenarios ------------------------------------------------------------------------------------
def _continual_cfg(**kw):
    base = dict(scenarios=(Scenario("c", kind="continual", order=("lite-ks", "lite-style", "lite-sid"), ft_seeds=1),),
                tasks=("lite-ks", "lite-style", "lite-sid", "lite-ic"))
    base.update(kw)
    return StudyConfig(**base)


def test_continual_plan_chains_the_stages_and_probes_intermediate_stages_on_the_order_only(tmp_path):
    cfg = _continual_cfg()
    plan = plan_study(cfg, tmp_path, list(cfg.tasks))
    by = {j.name: j for j in plan.jobs}
    rows = {r.label: r for r in plan.rows}
    # each stage fine-tunes the previous stage's model; Speech-FT merges with the previous stage or with θ₀
    reg3 = by["c: finetune regular stage 3 ft0"]
    assert reg3.deps == ("prepare", "c: finetune regular stage 2 ft0") and reg3.kwargs["task"] == "lite-sid"
    assert reg3.kwargs["model"].endswith("regular-stage2-lite-style-ft0/encoder")
    prev3, zero3 = by["c: merge sft-prev stage 3 ft0"], by["c: merge sft-theta0 stage 3 ft0"]
    assert prev3.kwargs["model"].endswith("models/sft-prev-stage2-ft0") and zero3.kwargs["model"] == cfg.model
    assert by["c: finetune sft-prev stage 3 ft0"].kwargs["model"].endswith("models/sft-prev-stage2-ft0")
    assert by["c: finetune sft-theta0 stage 3 ft0"].kwargs["model"].endswith("models/sft-theta0-stage2-ft0")
    # stage 1 is one Stable-FT and one merge, shared by the stable-recipe methods
    assert sum(n.startswith("c: finetune") and "stage 1" in n for n in by) == 2  # stable and regular
    assert rows["c / Speech-FT, merged with θ₀ after lite-ks"].models == \
        rows["c / Speech-FT, merged with the previous stage after lite-ks"].models
    # the multitask merge takes independent Stable-FTs of θ₀ on each task
    mt = by["c: merge multitask stage 3 ft0"]
    assert len(mt.kwargs["finetuned"]) == 3 and mt.kwargs["model"] == cfg.model
    assert by["c: finetune independent stage 2 ft0"].kwargs["model"] == cfg.model
    # intermediate stages: the order's tasks only; the last stage: the whole suite
    probes = {n for n in by if n.startswith("probe c / ")}
    assert "probe c / sequential regular FT stage 1 / ft0 / lite-ks" in probes
    assert "probe c / sequential regular FT stage 1 / ft0 / lite-ic" not in probes
    assert "probe c / sequential regular FT stage 3 / ft0 / lite-ic" in probes
    assert not rows["c / sequential Stable-FT after lite-style"].in_table
    assert rows["c / sequential Stable-FT after lite-sid"].in_table
    # every continual model shares θ₀'s CNN (freeze_cnn): one feature pass per task
    shared = by["extract / lite-sid"].kwargs["refs"]
    assert any("regular-stage3" in r for r in shared) and any("multitask-stage3" in r for r in shared)


@pytest.mark.parametrize("text, message", [
    ("scenarios: [{name: c, kind: continual, order: [lite-ks]}]\n", "at least two different tasks"),
    ("scenarios: [{name: c, kind: continual, order: [lite-ks, lite-ks]}]\n", "at least two different tasks"),
    ("scenarios: [{name: c, kind: continual, order: [lite-ks, lite-kz]}]\n", "lite-ks"),
    ("scenarios: [{name: c, kind: continual, task: lite-ks, order: [lite-ks, lite-sid]}]\n", "do not apply"),
])
def test_continual_config_errors(tmp_path, text, message):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises((ValueError, KeyError), match=message):
        StudyConfig.load(p)


def test_continual_needs_a_frozen_cnn(tmp_path):
    with pytest.raises(ValueError, match="freeze_cnn: true"):
        plan_study(_continual_cfg(freeze_cnn=False), tmp_path, ["lite-ks", "lite-style", "lite-sid"])


def test_shipped_continual_config_loads():
    cfg = StudyConfig.load("configs/continual.yaml")
    assert [s.kind for s in cfg.scenarios] == ["continual", "continual"]
    assert cfg.scenarios[1].order[0].startswith("fsdd-")  # one order starts on real speech


@pytest.mark.slow
def test_tiny_continual_study_end_to_end(tmp_path, lite_quick):
    from conftest import make_tiny_encoder
    from speechft.models.io import save_encoder
    from speechft.study import study

    theta0 = tmp_path / "theta0"
    save_encoder(make_tiny_encoder(), theta0)
    cfg = StudyConfig(model=str(theta0), tasks=("lite-ks", "lite-style", "lite-ic"),
                      scenarios=(Scenario("c", kind="continual", order=("lite-ks", "lite-style"), ft_seeds=1),),
                      probe_seeds=2, ft_steps=4, ft_batch_seconds=6.0, size="quick", probe_epochs=1)
    out = tmp_path / "study"
    text = study(cfg, out, workers=1).read_text()
    for section in ("## Scenario c: continual fine-tuning lite-ks → lite-style", "### Forgetting matrix",
                    "| sequential regular FT | 1: lite-ks |", "| Speech-FT, merged with θ₀ | 2: lite-style |",
                    "| c (continual: lite-ks → lite-style) | multitask merge of independent Stable-FT |",
                    "forgetting.png"):
        assert section in text, section
    assert (out / "scenarios" / "c" / "forgetting.png").stat().st_size > 0
    recs = read_jsonl(out / "probe" / "results.jsonl")
    first = [r for r in recs if r["model"] == "c / sequential regular FT stage 1 / ft0"]
    assert {r["task"] for r in first} == {"lite-ks", "lite-style"}  # intermediate: the order's tasks only
    last = [r for r in recs if r["model"] == "c / sequential regular FT stage 2 / ft0"]
    assert {r["task"] for r in last} == {"lite-ks", "lite-style", "lite-ic"}


# -- choosing α automatically (alpha_choice) -----------------------------------------------------------------
def test_alpha_choice_plan_probes_the_grid_on_every_task_and_runs_each_rule_on_stable_ft0(tmp_path):
    from speechft.study_config import AlphaChoice

    cfg = StudyConfig(scenarios=(Scenario("a", "lite-ks"), Scenario("b", "lite-style")), tasks=("lite-ks", "lite-style"),
                      alpha_choice=AlphaChoice(rules=("ft-dev", "cka:0.8"), grid=(0.0, 0.1, 0.25, 0.5, 1.0),
                                               scenarios=("a",)), sweep_alphas=(0.0, 0.25, 0.5, 1.0))
    plan = plan_study(cfg, tmp_path, ["lite-ks", "lite-style"])
    by = {j.name: j for j in plan.jobs}
    assert plan.alpha_grid["a"] == {0.0: "pre-trained", 0.1: "a / sweep α=0.1 / ft0", 0.25: "a / Speech-FT (α=0.25) / ft0",
                                    0.5: "a / sweep α=0.5 / ft0", 1.0: "a / Stable-FT / ft0"}
    assert "b" not in plan.alpha_grid and set(plan.alpha_rules["a"]) == {"ft-dev", "cka:0.8"}
    # the grid's new α are sweep models probed on every task; b's sweep stays on its own task
    assert "probe a / sweep α=0.1 / ft0 / lite-style" in by and "probe a / sweep α=0.5 / ft0 / lite-style" in by
    assert "probe b / sweep α=0.5 / ft0 / lite-ks" not in by and "probe b / sweep α=0.5 / ft0 / lite-style" in by
    job = by[plan.alpha_rules["a"]["cka:0.8"]]
    assert job.kwargs["spec"] == "auto:cka:0.8" and job.kwargs["run_dir"].endswith("finetune/stable-ft0")
    assert "a: finetune-stable ft0" in job.deps and job.kwargs["grid"] == [0.0, 0.1, 0.25, 0.5, 1.0]


def test_a_per_layer_rule_is_merged_on_its_own_and_probed_on_every_task(tmp_path):
    from speechft.study_config import AlphaChoice

    cfg = StudyConfig(scenarios=(Scenario("a", "lite-ks"),), tasks=("lite-ks", "lite-style"),
                      alpha_choice=AlphaChoice(rules=("cka", "drift:0.5"), grid=(0.0, 0.5, 1.0)))
    plan = plan_study(cfg, tmp_path, ["lite-ks", "lite-style"])
    by = {j.name: j for j in plan.jobs}
    assert plan.alpha_rules["a"] == {"cka": "a: alpha auto:cka ft0", "drift:0.5": "a: merge auto:drift:0.5 ft0"}
    assert plan.alpha_models["a"] == {"drift:0.5": "a / auto:drift:0.5 / ft0"}
    job = by["a: merge auto:drift:0.5 ft0"]
    assert job.kwargs["spec"] == "auto:drift:0.5" and job.kwargs["run_dir"].endswith("finetune/stable-ft0")
    assert job.kwargs["out"].endswith("models/auto/drift-0.5") and "a: finetune-stable ft0" in job.deps
    for task in ("lite-ks", "lite-style"):
        assert "a: merge auto:drift:0.5 ft0" in by[f"probe a / auto:drift:0.5 / ft0 / {task}"].deps
    assert "a / auto:drift:0.5" not in [r.label for r in plan.rows if r.in_table]


@pytest.mark.parametrize("block, message", [
    ("{rules: [ft-dv]}", "did you mean ft-dev"),
    ("{grid: [0.0, 0.5]}", "including 0 and 1"),
    ("{scenarios: [zz]}", "known supervised ones: a"),
    ("{limit: 0}", "limit"),
    ("{rulez: [cka]}", "did you mean 'rules'"),
])
def test_alpha_choice_config_errors(tmp_path, block, message):
    p = tmp_path / "s.yaml"
    p.write_text(f"scenarios: [{{name: a, task: lite-ks}}]\nalpha_choice: {block}\n")
    with pytest.raises(ValueError, match=message):
        StudyConfig.load(p)


def test_shipped_alpha_config_evaluates_every_supervised_scenario_of_the_study():
    cfg, study_cfg = StudyConfig.load("configs/alpha.yaml"), StudyConfig.default()
    supervised = [s for s in study_cfg.scenarios if s.kind == "supervised"]
    assert [s.name for s in cfg.scenarios] == [s.name for s in supervised]
    assert [s.task for s in cfg.scenarios] == [s.task for s in supervised]
    assert cfg.alpha_scenarios() == tuple(s.name for s in supervised) and len(cfg.alpha_choice.grid) == 6
    # the same θ₀, data and fine-tuning as the study, so its Stable-FT seed-0 models are the study's
    for key in ("model", "tasks", "size", "ft_steps", "ft_lr", "ft_head_lr", "ft_batch_seconds", "beta", "alpha",
                "probe_seeds", "freeze_cnn"):
        assert getattr(cfg, key) == getattr(study_cfg, key), key


@pytest.mark.slow
def test_tiny_alpha_choice_study_end_to_end(tmp_path, lite_quick):
    from conftest import make_tiny_encoder
    from speechft.models.io import save_encoder
    from speechft.study import study
    from speechft.study_config import AlphaChoice

    theta0 = tmp_path / "theta0"
    save_encoder(make_tiny_encoder(), theta0)
    cfg = StudyConfig(model=str(theta0), tasks=("lite-ks", "lite-style"), scenarios=(Scenario("a", "lite-ks"),),
                      alpha_choice=AlphaChoice(rules=("ft-dev", "cka", "drift"), grid=(0.0, 0.5, 1.0), limit=6),
                      ft_seeds=1, probe_seeds=2, ft_steps=4,
                      ft_batch_seconds=6.0, size="quick", probe_epochs=1, sweep_alphas=(0.0, 1.0))
    out = tmp_path / "study"
    text = study(cfg, out, workers=1).read_text()
    for section in ("## Choosing α automatically", "| a (lite-ks) | fixed α=0.25 | – |", "| a (lite-ks) | auto:ft-dev |",
                    "| a (lite-ks) | auto:cka |", "| a (lite-ks) | oracle (best on test) |", "### Cost",
                    "| a | auto:ft-dev |", "| a (lite-ks) | auto:drift | "):
        assert section in text, section
    drift_row = next(x for x in text.splitlines() if x.startswith("| a (lite-ks) | auto:drift | "))
    assert "per layer" in drift_row and drift_row.count("| – ") < 3  # its own probed model, with results
    done = {r["stage"]: r for r in read_jsonl(out / "stages.jsonl") if r["status"] == "done"}
    choice = done["a: alpha auto:cka ft0"]["result"]
    assert choice["alpha_on_grid"] in (0.0, 0.5, 1.0) and set(choice["curve"]) >= {"0", "0.1", "0.5", "1"}
    recs = read_jsonl(out / "probe" / "results.jsonl")
    assert {r["task"] for r in recs if r["model"] == "a / sweep α=0.5 / ft0"} == {"lite-ks", "lite-style"}

"""`speechft reproduce` on a tiny model: every stage runs, the report is built from records, resume skips."""
import dataclasses
import json

import pytest

from speechft.pipeline_config import ReproduceConfig
from speechft.report.markdown import Results, render_table
from speechft.utils.io import read_jsonl


def test_table_bolds_the_best_mean_and_gives_intervals():
    from test_provenance import _rec

    recs = [_rec("FBANK", "t1", 0.2), _rec("pre-trained", "t1", 0.6), _rec("regular FT", "t1", 0.5),
            _rec("FBANK", "asr", 0.8, "cer", False), _rec("pre-trained", "asr", 0.5, "cer", False),
            _rec("regular FT", "asr", 0.3, "cer", False)]
    models = ["FBANK", "pre-trained", "regular FT"]
    res = Results(recs, models, ["t1", "asr"])
    # hand-computed: 1000 (s - s_fbank) / (s_ref - s_fbank), mean over tasks
    assert res.score("pre-trained", ["t1"]).mean == pytest.approx(1000 * (0.6 - 0.2) / 0.8)
    assert res.score("regular FT", ["asr"]).mean == pytest.approx(1000 * (0.3 - 0.8) / (0.0 - 0.8))
    md = render_table(res, models, ["t1", "asr"])
    assert "| **60.0 [" in md and "| **30.0 [" in md  # best accuracy / lowest CER in bold, with intervals


def test_config_rejects_unknown_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("ft_stepz: 3\n")
    with pytest.raises(ValueError, match="did you mean 'ft_steps'"):
        ReproduceConfig.load(p)


@pytest.mark.slow
def test_reproduce_tiny_end_to_end_and_resume(tmp_path, tiny_model_dir, lite_quick, monkeypatch):
    from speechft import pipeline

    cfg = ReproduceConfig(model=str(tiny_model_dir), ft_task="lite-ks", tasks=("lite-ks", "lite-style"),
                          baselines=(), ft_steps=4, ft_batch_seconds=6.0, sweep_alphas=(0.0, 1.0),
                          sweep_tasks=("lite-ks",), size="quick", probe_epochs=1, analysis_limit=6)
    out = tmp_path / "run"
    report = pipeline.reproduce(cfg, out)
    text = report.read_text()
    for row in ("| FBANK |", "| pre-trained |", "| regular FT |", "| Stable-FT |", "| Speech-FT (α=0.25) |"):
        assert row in text
    assert "## What the numbers show" in text and "![" in text
    assert (out / "analysis" / "analysis.jsonl").exists() and (out / "sweep" / "sweep.png").exists()
    # the features of the models the run made are gone once probed: nowhere in the run, nowhere in the shared cache
    from speechft.models.io import load_encoder
    from speechft.probe.cache import cache_root

    assert not (out / "features").exists()
    made = {load_encoder(str(p)).fingerprint() for p in (out / "finetune" / "stable" / "encoder",
                                                          out / "finetune" / "regular" / "encoder", out / "models" / "speech-ft")}
    assert {p.name for p in cache_root().iterdir()} & made == set()
    assert load_encoder(str(tiny_model_dir)).fingerprint() in {p.name for p in cache_root().iterdir()}  # θ₀'s stay
    done, lines = _done(out), len(read_jsonl(out / "stages.jsonl"))
    # the sweep's α=0 and α=1 are θ₀ and Stable-FT bit for bit: the sweep uses their rows, not new probes
    sweep = read_jsonl(out / "sweep" / "sweep.jsonl")
    assert {r["alpha"]: r["model"] for r in sweep} == {0.0: "pre-trained", 1.0: "Stable-FT"}

    # a rerun finds every stage done with the same inputs and redoes nothing
    calls = []
    monkeypatch.setattr("speechft.finetune.finetune", lambda *a, **k: calls.append(a))
    pipeline.reproduce(dataclasses.replace(cfg), out)
    # the always-run jobs (preparation, drops of scratch features) ran again with the same results: nothing recorded
    assert calls == [] and _done(out) == done and len(read_jsonl(out / "stages.jsonl")) == lines
    monkeypatch.undo()

    # one config key changed (α): every number of the report belongs to the new config
    new = dataclasses.replace(cfg, alpha=0.5)
    text = pipeline.reproduce(new, out).read_text()
    assert "| Speech-FT (α=0.5) |" in text and "α=0.25" not in text.split("## Config")[0]
    merged_fp = load_encoder(str(out / "models" / "speech-ft")).fingerprint()
    recs = read_jsonl(out / "probe" / "results.jsonl")
    assert {r["model"] for r in recs} == {"FBANK", "pre-trained", "regular FT", "Stable-FT", "Speech-FT (α=0.5)"}
    sft = [r for r in recs if r["model"] == "Speech-FT (α=0.5)"]
    assert sft and all(r["fingerprint"] == merged_fp for r in sft)
    # ... and the fine-tunings, which α does not feed, were not redone
    stages = read_jsonl(out / "stages.jsonl")
    assert sum(r["stage"] == "finetune-stable" and r["status"] == "done" for r in stages) == 1

    # a changed fine-tuning setting reruns the fine-tuning from nothing (not from its old checkpoint)
    pipeline.reproduce(dataclasses.replace(new, ft_steps=5), out)
    stages = read_jsonl(out / "stages.jsonl")
    assert sum(r["stage"] == "finetune-stable" and r["status"] == "done" for r in stages) == 2
    assert json.loads((out / "finetune" / "stable" / "encoder" / "speechft_card.json").read_text())["steps"] == 5


def _done(out) -> int:
    """Jobs recorded as done in ``out/stages.jsonl``."""
    return sum(r["status"] == "done" for r in read_jsonl(out / "stages.jsonl"))


def test_job_graph_shares_extraction_and_feeds_the_sweep(tmp_path):
    from speechft.pipeline import plan_jobs

    cfg = ReproduceConfig(tasks=("lite-asr", "lite-ks"), baselines=("l2sp",), sweep_alphas=(0.0, 0.25, 0.5, 1.0),
                          sweep_tasks=("lite-asr",))
    jobs, rows = plan_jobs(cfg, tmp_path, ["lite-asr", "lite-ks"])
    by = {j.name: j for j in jobs}
    assert [r.name for r in rows if r.in_table] == ["FBANK", "pre-trained", "regular FT", "Stable-FT",
                                                     "Speech-FT (α=0.25)", "L2-SP"]
    assert [(r.role, r.alpha) for r in rows if not r.in_table] == [("sweep", 0.5)]
    # θ₀, Stable-FT and Speech-FT wait for the shared extraction (and for the job that made them)
    for name in ("pre-trained", "Stable-FT", "Speech-FT (α=0.25)"):
        assert "extract / lite-ks" in by[f"probe {name} / lite-ks"].deps
    assert "merge" in by["probe Speech-FT (α=0.25) / lite-ks"].deps
    assert "finetune-regular" in by["probe regular FT / lite-ks"].deps
    assert "finetune-l2sp" in by["probe L2-SP / lite-ks"].deps
    assert by["probe FBANK / lite-ks"].deps == ("prepare tasks",)
    # only α=0.5 is new: merged once to disk, extracted with the shared CNN on the sweep task only
    assert by["merge sweep"].kwargs["alphas"] == [0.5]
    assert str(tmp_path / "models" / "sweep" / "alpha-0.5") in by["extract / lite-asr"].kwargs["refs"]
    assert not any("sweep" in r for r in by["extract / lite-ks"].kwargs["refs"])
    assert set(by["sweep"].deps) == {"probe pre-trained / lite-asr", "probe Stable-FT / lite-asr",
                                     "probe Speech-FT (α=0.25) / lite-asr", "probe sweep α=0.5 / lite-asr"}
    assert set(by["analyze"].deps) == {"prepare", "finetune-regular", "merge"}
    # jobs own what they write: a fine-tuning with other settings starts from an empty folder
    assert by["finetune-stable"].owns == (tmp_path / "finetune" / "stable",)


def test_models_the_run_makes_get_a_scratch_feature_cache_dropped_after_their_last_probe(tmp_path):
    from speechft.pipeline import plan_jobs
    from speechft.utils.jobs import job_key

    cfg = ReproduceConfig(tasks=("lite-ks", "fsdd-ks", "fsdd-sid"), baselines=(), sweep_alphas=(0.0, 0.25, 1.0),
                          sweep_tasks=("lite-ks",))
    jobs, rows = plan_jobs(cfg, tmp_path, ["lite-ks", "fsdd-ks", "fsdd-sid"])
    by = {j.name: j for j in jobs}
    scratch = tmp_path.resolve() / "features"
    # θ₀ and FBANK keep the shared cache; Stable-FT (and every model the run makes) reads its own scratch folder
    assert "cache_dir" not in by["probe pre-trained / lite-ks"].unkeyed
    assert "cache_dir" not in by["probe FBANK / lite-ks"].unkeyed
    stable = by["probe Stable-FT / lite-ks"].unkeyed["cache_dir"]
    assert stable == str(scratch / "finetune-stable-encoder")
    assert by["probe regular FT / fsdd-ks"].unkeyed["cache_dir"] == str(scratch / "finetune-regular-encoder")
    ext = by["extract / lite-ks"]
    assert [d is None for d in ext.unkeyed["cache_dirs"]] == [r == cfg.model for r in ext.kwargs["refs"]]
    # a model's features of a task go after its last reader: fsdd-ks and fsdd-sid share their audio's folders
    drop = by["drop features / finetune-stable-encoder / fsdd-ks"]
    assert drop.always and drop.kwargs["root"] == stable
    assert set(drop.deps) == {"probe Stable-FT / fsdd-ks", "probe Stable-FT / fsdd-sid", "extract / fsdd-ks",
                              "extract / fsdd-sid"}
    assert set(by["drop features / finetune-stable-encoder / lite-ks"].deps) == {"probe Stable-FT / lite-ks",
                                                                                 "extract / lite-ks"}
    assert not any(n.startswith("drop features / ") and "pre-trained" in n for n in by)
    dropped_roots = {j.kwargs["root"] for j in jobs if j.name.startswith("drop features / ")}
    assert dropped_roots == {j.unkeyed["cache_dir"] for j in jobs if "cache_dir" in j.unkeyed}
    # scratch folders of models no longer in the plan (an interrupted run, then another config) go before it runs
    from speechft.pipeline import prune_scratch

    for name in ("finetune-stable-encoder", "finetune-l2sp-encoder"):
        (scratch / name / "fp" / "lite-lite-ks-train-pooled").mkdir(parents=True)
    prune_scratch(tmp_path, jobs)
    assert sorted(p.name for p in scratch.iterdir()) == ["finetune-stable-encoder"]
    # where a cache lives is not part of any key: moving it reruns nothing
    j = by["probe Stable-FT / lite-ks"]
    before = job_key(j, {d: "x" for d in j.deps})
    j.unkeyed["cache_dir"] = "/elsewhere"
    assert job_key(j, {d: "x" for d in j.deps}) == before


def test_timing_section_sums_jobs_per_stage_and_gives_the_wall_clock():
    from speechft.report.markdown import timing_lines

    recs = {"prepare": {"seconds": 2.0, "started": 0.0, "finished": 2.0},
            "probe A / t1": {"seconds": 5.0, "started": 2.0, "finished": 7.0},
            "probe A / t2": {"seconds": 4.0, "started": 2.0, "finished": 6.0}}
    text = "\n".join(timing_lines(recs, {"jobs": 3, "workers": 2, "threads": 1}))
    assert "| probe A | 2 | 9 |" in text and "| **all jobs** | 3 | 11 |" in text
    assert "| **wall clock** (first start to last end) | | 7 (0.1 min) |" in text
    assert "3 jobs on 2 worker process(es) x 1 torch thread(s)" in text


def test_alpha_auto_plans_a_choosing_merge_and_sweeps_the_fixed_alpha_separately(tmp_path):
    from speechft import pipeline

    cfg = ReproduceConfig(tasks=("lite-ks",), alpha="auto:cka", sweep_alphas=(0.0, 0.25, 1.0), sweep_tasks=("lite-ks",))
    jobs, rows = pipeline.plan_jobs(cfg, tmp_path, ["lite-ks"])
    by = {j.name: j for j in jobs}
    assert by["merge"].fn is pipeline._merge_auto and by["merge"].kwargs["spec"] == "auto:cka"
    assert by["merge"].kwargs["run_dir"] == str(tmp_path / "finetune" / "stable")
    sft = next(r for r in rows if r.role == "speech-ft")
    assert sft.name == "Speech-FT (α=auto:cka)" and sft.alpha is None
    # α = 0.25 is no longer Speech-FT's model: the sweep merges it
    assert [(r.role, r.alpha) for r in rows if not r.in_table] == [("sweep", 0.25)]
    assert pipeline.sweep_models(cfg, rows) == {0.0: "pre-trained", 0.25: "sweep α=0.25", 1.0: "Stable-FT"}


@pytest.mark.parametrize("value, expect", [("auto", "auto"), ("auto:ft-dev:0.8", "auto:ft-dev:0.8"), ("0.5", 0.5),
                                           (0.4, 0.4)])
def test_alpha_values(value, expect):
    assert ReproduceConfig.load(alpha=value).alpha == expect


@pytest.mark.parametrize("text, message", [("alpha: auto:ckx\n", "did you mean cka"),
                                           ("alpha: 1.5\n", "alpha must be a number in"),
                                           ("alpha: half\n", "alpha must be a number in")])
def test_alpha_errors_name_the_file(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        ReproduceConfig.load(p)
    assert str(p) in str(e.value)


@pytest.mark.slow
def test_reproduce_with_alpha_auto_reports_the_chosen_alpha(tmp_path, tiny_model_dir, lite_quick):
    from speechft import pipeline

    cfg = ReproduceConfig(model=str(tiny_model_dir), ft_task="lite-ks", tasks=("lite-ks",), alpha="auto:cka",
                          ft_steps=4, ft_batch_seconds=6.0, sweep_alphas=(0.0, 1.0), sweep_tasks=("lite-ks",),
                          size="quick", probe_epochs=1, analysis_limit=6)
    out = tmp_path / "run"
    text = pipeline.reproduce(cfg, out).read_text()
    card = json.loads((out / "models" / "speech-ft" / "speechft_card.json").read_text())
    chosen = card["alpha_auto"]["alpha"]
    assert card["alpha"] == chosen and card["alpha_auto"]["rule"] == "cka"
    assert f"Speech-FT merges with α = {chosen:g}, chosen by `auto:cka`" in text
    assert "| Speech-FT (α=auto:cka) |" in text


def test_report_names_a_per_layer_choice_with_its_layers(tmp_path):
    from types import SimpleNamespace

    from speechft.report.markdown import _alpha_text

    (tmp_path / "speechft_card.json").write_text(json.dumps({"alpha_auto": {
        "alpha": 0.25, "rule": "drift", "value": 0.25, "layer_alphas": {"layer2": 0.5, "layer1": 0.125}}}))
    cfg = ReproduceConfig(alpha="auto:drift")
    text = _alpha_text(cfg, SimpleNamespace(speechft=tmp_path))
    assert text.startswith("per layer, chosen by `auto:drift` (drift 0.25): layer1 0.12, layer2 0.5")

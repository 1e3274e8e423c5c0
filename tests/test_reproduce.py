"""`speechft reproduce` on a tiny model: every stage runs, the report is built from records, resume skips."""
import dataclasses

import pytest

from speechft.pipeline_config import ReproduceConfig
from speechft.report.markdown import collect, render_table, summarize, task_scores
from speechft.utils.io import read_jsonl


def _rec(model, task, value, metric="accuracy", hib=True, seed=0):
    return {"model": model, "task": task, "metric": metric, "value": value, "higher_is_better": hib, "seed": seed}


def test_table_scores_and_summary_come_from_records():
    recs = [_rec("FBANK", "t1", 0.2), _rec("pre-trained", "t1", 0.6), _rec("regular FT", "t1", 0.5),
            _rec("Stable-FT", "t1", 0.55), _rec("Speech-FT (α=0.25)", "t1", 0.65),
            _rec("FBANK", "asr", 0.8, "cer", False), _rec("pre-trained", "asr", 0.5, "cer", False),
            _rec("regular FT", "asr", 0.3, "cer", False), _rec("Stable-FT", "asr", 0.25, "cer", False),
            _rec("Speech-FT (α=0.25)", "asr", 0.4, "cer", False)]
    models = ["FBANK", "pre-trained", "regular FT", "Stable-FT", "Speech-FT (α=0.25)"]
    table = collect(recs)
    scores = task_scores(table, models, ["t1", "asr"])
    # hand-computed: 1000 (s - s_fbank) / (s_ref - s_fbank)
    assert scores[("pre-trained", "t1")] == pytest.approx(1000 * (0.6 - 0.2) / 0.8)
    assert scores[("regular FT", "asr")] == pytest.approx(1000 * (0.3 - 0.8) / (0.0 - 0.8))
    md = render_table(table, scores, models, ["t1", "asr"])
    assert "**65.00**" in md and "**25.00**" in md  # best accuracy / lowest CER in bold
    names = {"pre": "pre-trained", "regular": "regular FT", "stable": "Stable-FT", "speechft": "Speech-FT (α=0.25)"}
    text = " ".join(summarize(table, scores, models, ["t1", "asr"], "asr", names))
    assert "Speech-FT (α=0.25) improves on the pre-trained model" in text
    assert "beats regular fine-tuning on the cross-task score" in text


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
    done = (out / "stages.jsonl").read_text().count('"done"')
    # the sweep's α=0 and α=1 are θ₀ and Stable-FT bit for bit: their probe records are reused, not retrained
    reused = {r["model"]: r.get("reused_from") for r in read_jsonl(out / "probe" / "results.jsonl")}
    assert reused["linear alpha=0"] == "pre-trained" and reused["linear alpha=1"] == "Stable-FT"

    # a rerun finds every stage done and redoes nothing
    calls = []
    monkeypatch.setattr("speechft.finetune.finetune", lambda *a, **k: calls.append(a))
    pipeline.reproduce(dataclasses.replace(cfg), out)
    assert calls == [] and (out / "stages.jsonl").read_text().count('"done"') == done


def test_job_graph_shares_extraction_and_feeds_the_sweep(tmp_path):
    from speechft.pipeline import plan_jobs

    cfg = ReproduceConfig(tasks=("lite-asr", "lite-ks"), baselines=("l2sp",), sweep_alphas=(0.0, 0.25, 0.5, 1.0),
                          sweep_tasks=("lite-asr",))
    jobs, models = plan_jobs(cfg, tmp_path, ["lite-asr", "lite-ks"])
    by = {j.name: j for j in jobs}
    assert list(models) == ["FBANK", "pre-trained", "regular FT", "Stable-FT", "Speech-FT (α=0.25)", "L2-SP"]
    # θ₀, Stable-FT and Speech-FT wait for the shared extraction; the others for their own fine-tune
    for name in ("pre-trained", "Stable-FT", "Speech-FT (α=0.25)"):
        assert by[f"probe {name} / lite-ks"].deps == ("extract / lite-ks",)
    assert "finetune-regular" in by["probe regular FT / lite-ks"].deps
    assert "finetune-l2sp" in by["probe L2-SP / lite-ks"].deps
    assert by["probe FBANK / lite-ks"].deps == ("prepare tasks",)
    # only α=0.5 is new: it is extracted with the shared CNN on the sweep task, and probed before the sweep
    assert by["extract / lite-asr"].kwargs["sweep_alphas"] == [0.5] and by["extract / lite-ks"].kwargs["sweep_alphas"] == []
    assert set(by["sweep"].deps) == {"probe pre-trained / lite-asr", "probe Stable-FT / lite-asr",
                                     "probe Speech-FT (α=0.25) / lite-asr", "probe sweep α=0.5 / lite-asr"}
    assert set(by["analyze"].deps) == {"finetune-regular", "merge"}


def test_timing_section_sums_jobs_per_stage_and_gives_the_wall_clock():
    from speechft.report.markdown import timing_lines

    recs = {"prepare": {"seconds": 2.0, "started": 0.0, "finished": 2.0},
            "probe A / t1": {"seconds": 5.0, "started": 2.0, "finished": 7.0},
            "probe A / t2": {"seconds": 4.0, "started": 2.0, "finished": 6.0}}
    text = "\n".join(timing_lines(recs, {"jobs": 3, "workers": 2, "threads": 1}))
    assert "| probe A | 2 | 9 |" in text and "| **all jobs** | 3 | 11 |" in text
    assert "| **wall clock** (first start to last end) | | 7 (0.1 min) |" in text
    assert "3 jobs on 2 worker process(es) x 1 torch thread(s)" in text

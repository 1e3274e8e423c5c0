"""Probe profiles: the superb profile follows s3prl's downstream recipes and is scored against the
published reference points; the fast profile never is; results of two profiles are never mixed."""
import dataclasses

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_encoder
from speechft.cli import app
from speechft.models.heads import CTCHead, PoolClassifier, SlotsClassifier
from speechft.probe import run_probe, score_table, superb_score
from speechft.probe.profiles import FAST, SUPERB, get_profile
from speechft.probe.report import write_summary
from speechft.probe.score import OFFICIAL, reference_point
from speechft.tasks import get_task
from speechft.utils.io import append_jsonl, read_jsonl
from test_probe import make_tone_task

# Transcribed by hand from s3prl/s3prl, s3prl/downstream/<file>: runner.total_steps, runner.eval_step,
# runner.gradient_accumulate_steps, runner.gradient_clipping, optimizer (Adam) lr, the train batch
# size, and the model block (projector / project_dim, RNN dims and dropout, specaug).
S3PRL = {
    "pr": ("ctc/libriphone.yaml", dict(lr=1e-2, batch_size=16, grad_accum=2, max_steps=100_000, eval_every=1000),
           dict(proj=256)),
    "asr": ("asr/config.yaml", dict(lr=1e-4, batch_size=32, grad_accum=1, max_steps=200_000, eval_every=2000),
            dict(proj=1024, hidden=1024, layers=2, dropout=0.2, final_dropout=0.2, specaugment="s3prl")),
    "ks": ("speech_commands/config.yaml", dict(lr=1e-4, batch_size=32, grad_accum=1, max_steps=200_000, eval_every=4000),
           dict(proj=256)),
    "sid": ("voxceleb1/config.yaml", dict(lr=1e-4, batch_size=8, grad_accum=4, max_steps=200_000, eval_every=4000),
            dict(proj=256)),
    "er": ("emotion/config.yaml", dict(lr=1e-4, batch_size=4, grad_accum=8, max_steps=30_000, eval_every=1000),
           dict(proj=256)),
    "ic": ("fluent_commands/config.yaml", dict(lr=1e-4, batch_size=32, grad_accum=1, max_steps=200_000, eval_every=4000),
           dict(proj=256)),
}


def test_superb_profile_settings_equal_the_cited_s3prl_configs():
    assert set(SUPERB.recipes) == set(S3PRL) == set(OFFICIAL)
    for task, (config_file, train, head) in S3PRL.items():
        cfg, opts = SUPERB.settings(get_task(task))
        assert SUPERB.source(task).endswith("s3prl/downstream/" + config_file)
        for k, v in train.items():
            assert getattr(cfg, k) == v, (task, k)
        assert cfg.grad_clip == 1.0 and cfg.epochs is None and cfg.batch_seconds is None  # batches of utterances
        assert opts == head, task
    # the ASR SpecAugment is s3prl's: time warp 5, 2 time masks <= 40 frames, 4 feature masks <= 50 dims
    from speechft.finetune.specaug import SpecAugmentConfig
    aug = SpecAugmentConfig.from_option("s3prl")
    assert (aug.time_warp, aug.time_masks, aug.time_mask_width, aug.freq_masks, aug.freq_mask_width) == (5, 2, 40, 4, 50)


def test_superb_heads_have_the_s3prl_architecture():
    asr = CTCHead(768, 30, num_states=13, layer_sum=True, **SUPERB.settings(get_task("asr"))[1])
    assert asr.proj.out_features == 1024 and asr.rnn.hidden_size == 1024 and asr.rnn.num_layers == 2
    assert asr.rnn.bidirectional and asr.rnn.dropout == 0.2 and asr.final_dropout == 0.2 and asr.augment is not None
    pr = CTCHead(768, 40, num_states=13, layer_sum=True, **SUPERB.settings(get_task("pr"))[1])
    assert pr.rnn is None and pr.proj.out_features == 256 and pr.out.in_features == 256
    ks = PoolClassifier(768, 12, **SUPERB.settings(get_task("ks"))[1])
    assert ks.proj.out_features == 256 and ks.out.in_features == 256


def test_projected_pool_head_reads_pooled_vectors_exactly():
    """The projector is linear, so projecting the mean equals the mean of projected frames (s3prl)."""
    torch.manual_seed(0)
    head = PoolClassifier(16, 5, num_states=3, layer_sum=True, proj=8)
    frames = [torch.randn(2, 7, 16) for _ in range(3)]
    lens = torch.tensor([7, 4])
    mixed = head.mix(frames)
    per_frame = torch.stack([head.proj(mixed[b, : int(lens[b])]).mean(0) for b in range(2)])
    assert torch.allclose(head.out(per_frame), head(frames, lens), atol=1e-5)
    slots = SlotsClassifier(16, [3, 4], num_states=3, layer_sum=True, proj=8)
    assert [t.shape for t in slots(frames, lens)] == [(2, 3), (2, 4)]


def test_superb_profile_refuses_tasks_without_a_published_recipe_and_quick():
    with pytest.raises(ValueError, match="not for task 'lite-pr': use --profile fast"):
        SUPERB.settings(get_task("lite-pr"))
    with pytest.raises(ValueError, match="--quick shortens the fast profile only"):
        SUPERB.settings(get_task("ks"), quick=True)
    assert FAST.settings(get_task("ks"))[1] == {}
    with pytest.raises(Exception, match="did you mean superb"):
        get_profile("superbb")


def test_only_the_superb_profile_uses_the_published_points():
    assert reference_point("ks", "accuracy", True, 0.2, "superb") is OFFICIAL["ks"]
    fast = reference_point("ks", "accuracy", True, 0.2, "fast")
    assert fast.fbank == 0.2 and fast.reference == 1.0 and "harness" in fast.source
    assert reference_point("lite-ks", "accuracy", True, 0.2, "superb").fbank == 0.2


@pytest.fixture(scope="module")
def real_named(tmp_path_factory):
    """Generated-tone tasks registered under the real SUPERB names ks and pr (their recipes apply)."""
    root = tmp_path_factory.mktemp("profiles")
    ks = dataclasses.replace(get_task("ks"), manifests=make_tone_task(root / "ks").manifests)
    pr = dataclasses.replace(get_task("pr"), manifests=make_tone_task(root / "pr", kind="ctc").manifests)
    return ks, pr


def test_superb_profile_probe_runs_the_step_schedule_and_scores_against_published_points(tmp_path, real_named):
    out, cache = tmp_path / "out", tmp_path / "cache"
    kw = dict(out_dir=out, cache_dir=cache, progress=False, profile="superb", max_steps=4, eval_every=2)
    recs = run_probe(make_tiny_encoder(), list(real_named), model_name="m", **kw)
    run_probe("fbank", list(real_named), **kw)
    for r in recs:
        assert r["profile"] == "superb" and r["steps_run"] == 4
        assert [h["step"] for h in r["history"]] == [2, 4]
        assert r["config"]["head_options"] == {"proj": 256} and r["provenance"]["train"]["profile"] == "superb"
    assert {r["task"]: r["config"]["grad_accum"] for r in recs} == {"ks": 1, "pr": 2}
    # pr: 24 train utterances = batches of 16 and 8, two of them per step: 4 steps take 4 epochs
    assert next(r for r in recs if r["task"] == "pr")["epochs_run"] == 4
    sc = superb_score(read_jsonl(out / "results.jsonl"), model="m")
    assert all(sc["tasks"][t]["source"] == OFFICIAL[t].source for t in ("ks", "pr"))
    assert sc["tasks"]["ks"]["fbank"] == OFFICIAL["ks"].fbank
    summary = write_summary(out).read_text()
    assert "Probe profile **superb**" in summary and "published SUPERB reference points for ks, pr" in summary

    # the same data probed with the fast profile: harness FBANK and a perfect score, labelled so
    fast_out = tmp_path / "fast"
    run_probe(make_tiny_encoder(), list(real_named), fast_out, model_name="m", cache_dir=cache, progress=False, epochs=2)
    run_probe("fbank", list(real_named), fast_out, cache_dir=cache, progress=False, epochs=2)
    fast = superb_score(read_jsonl(fast_out / "results.jsonl"), model="m")
    assert all("harness" in fast["tasks"][t]["source"] for t in ("ks", "pr"))
    assert "not comparable with published SUPERB scores" in write_summary(fast_out).read_text()

    # another profile under the same --out is refused, naming the change; a file mixing them never scores
    with pytest.raises(ValueError, match="was probed with other inputs"):
        run_probe(make_tiny_encoder(), [real_named[0]], out, model_name="m", cache_dir=cache, progress=False, epochs=2)
    for r in read_jsonl(fast_out / "results.jsonl"):
        append_jsonl(out / "results.jsonl", {**r, "model": r["model"] + "-fast"})
    with pytest.raises(ValueError, match="mix probe profiles"):
        score_table(read_jsonl(out / "results.jsonl"))


def test_cli_profile_errors_exit_2(tmp_path, real_named):
    r = CliRunner().invoke(app, ["probe", "--profile", "superbb", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "did you mean superb" in r.output
    r = CliRunner().invoke(app, ["probe", "--profile", "superb", "--tasks", "lite-ks", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "use --profile fast" in r.output

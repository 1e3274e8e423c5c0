"""`run_probe` / `speechft probe` on tiny models: every head type, user tasks, resume, determinism, CLI."""
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_tiny_encoder
from speechft.cli import app
from speechft.data import Utterance, read_manifest, write_audio, write_manifest
from speechft.probe import run_probe, score_table, write_reports
from speechft.tasks import user_task
from speechft.utils.io import read_jsonl

SR = 16000
FREQS = {"low": 250.0, "high": 1500.0, "a": 300.0, "b": 1400.0}


def _tone(freq, seconds, rng):
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * (1 + 0.03 * rng.standard_normal()) * t)
            + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def make_tone_task(root, kind="classify", n=(24, 8, 8), seed=0):
    """Generated audio task: low vs high tone (classify), or a CTC 'phone' sequence of tones a/b."""
    rng = np.random.default_rng(seed)
    paths = []
    for split, count in zip(("train", "dev", "test"), n):
        rows = []
        for i in range(count):
            if kind == "ctc":
                seq = [("a", "b")[int(k)] for k in rng.integers(0, 2, size=int(rng.integers(2, 4)))]
                gap = np.zeros(int(0.06 * SR), np.float32)
                wav = np.concatenate([np.concatenate([_tone(FREQS[p], 0.22, rng), gap]) for p in seq])
                fields = {"phones": " ".join(seq)}
            else:
                label = ("low", "high")[i % 2]
                wav = _tone(FREQS[label], float(rng.uniform(0.3, 0.6)), rng)
                fields = {"label": label}
            path = root / split / f"{split}{i}.wav"
            write_audio(path, wav)
            rows.append(Utterance(id=f"{split}{i}", audio=str(path), duration=len(wav) / SR, **fields))
        paths.append(write_manifest(root / f"{split}.jsonl", rows))
    field = "phones" if kind == "ctc" else "label"
    return user_task(f"tones-{kind}", tuple(paths), kind, field)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return make_tone_task(tmp_path_factory.mktemp("tones"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One feature cache for the module: the tone features are extracted once, not per test."""
    return tmp_path_factory.mktemp("feature-cache")


RECORD_KEYS = {"model", "task", "metric", "value", "dev_value", "higher_is_better", "seed", "layer_weights", "config",
               "task_version", "package_version", "git_hash", "fingerprint", "best_epoch", "num_utterances"}


def test_every_head_type_on_lite_quick(tmp_path, lite_quick):
    enc = make_tiny_encoder()
    tasks = ["lite-pr", "lite-asr", "lite-ks", "lite-ic"]  # linear CTC, BiLSTM CTC, pooled linear, slots
    recs = run_probe(enc, tasks, tmp_path, size="quick", limit=6, epochs=2, cache_dir=tmp_path / "cache",
                     model_name="tiny", progress=False)
    assert [r["task"] for r in recs] == tasks
    by = {r["task"]: r for r in recs}
    assert {by[t]["metric"] for t in tasks} == {"per", "cer", "accuracy"}
    assert by["lite-asr"]["config"]["head"] == "bilstm_ctc" and by["lite-pr"]["config"]["head"] == "linear_ctc"
    assert by["lite-ks"]["config"]["pooled_features"] and by["lite-ic"]["config"]["pooled_features"]
    assert not by["lite-pr"]["config"]["pooled_features"]
    for r in recs:
        assert RECORD_KEYS <= set(r)
        assert r["num_utterances"] == {"train": 6, "dev": 6, "test": 6}
        assert len(r["layer_weights"]) == enc.num_layers + 1 and sum(r["layer_weights"]) == pytest.approx(1.0)
        assert np.isfinite(r["value"]) and r["value"] >= 0 and 1 <= r["best_epoch"] <= 2
        assert r["higher_is_better"] == (r["metric"] == "accuracy")
        if r["metric"] == "accuracy":
            assert r["value"] <= 1.0
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 4
    rep = write_reports(tmp_path)
    assert rep["summary"].exists() and rep["plot"].exists() and "lite-asr" in rep["table"]


def test_user_task_is_learned(tmp_path, tones, cache):
    rec = run_probe(make_tiny_encoder(), [tones], tmp_path, epochs=30, lr=1e-2, batch_size=8, cache_dir=cache,
                    progress=False)[0]
    assert rec["task"] == "tones-classify" and rec["metric"] == "accuracy"
    assert rec["value"] >= 0.9 and rec["dev_value"] >= 0.9  # low vs high tone is easy even for random features
    losses = [h["train_loss"] for h in rec["history"]]
    assert losses[-1] < 0.5 * losses[0]


def test_ctc_user_task_trains(tmp_path):
    task = make_tone_task(tmp_path / "data", kind="ctc", n=(16, 6, 6))
    rec = run_probe(make_tiny_encoder(), [task], tmp_path / "out", epochs=6, cache_dir=tmp_path / "c",
                    progress=False, lr=5e-3)[0]
    assert rec["metric"] == "per" and rec["higher_is_better"] is False
    losses = [h["train_loss"] for h in rec["history"]]
    assert losses[-1] < losses[0]  # the CTC loss goes down


def test_deterministic_for_a_seed(tmp_path, tones, cache):
    kw = dict(epochs=5, cache_dir=cache, progress=False)
    a = run_probe(make_tiny_encoder(), [tones], tmp_path / "a", seeds=(0, 1), **kw)
    b = run_probe(make_tiny_encoder(), [tones], tmp_path / "b", seeds=(0, 1), **kw)
    for x, y in zip(a, b):
        assert (x["value"], x["dev_value"], x["layer_weights"], x["history"]) == \
               (y["value"], y["dev_value"], y["layer_weights"], y["history"])
    assert a[0]["layer_weights"] != a[1]["layer_weights"]  # another seed is another run


def test_rerun_resumes_and_same_weights_under_new_name_are_reused(tmp_path, tones, cache):
    kw = dict(epochs=2, cache_dir=cache, progress=False)
    first = run_probe(make_tiny_encoder(), [tones], tmp_path, model_name="m0", **kw)
    again = run_probe(make_tiny_encoder(), [tones], tmp_path, model_name="m0", **kw)
    assert again == first and len(read_jsonl(tmp_path / "results.jsonl")) == 1
    alias = run_probe(make_tiny_encoder(), [tones], tmp_path, model_name="alias", **kw)
    assert alias[0]["reused_from"] == "m0" and alias[0]["value"] == first[0]["value"]
    with pytest.raises(ValueError, match=r"m0 / tones-classify was probed with other inputs \(train.epochs: 2 -> 3\)"):
        run_probe(make_tiny_encoder(), [tones], tmp_path, model_name="m0", epochs=3, cache_dir=cache, progress=False)
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 2  # refused: nothing written, nothing lost
    other = run_probe(make_tiny_encoder(), [tones], tmp_path, model_name="m0", epochs=3, cache_dir=cache,
                      progress=False, replace=True)  # another protocol replaces m0's old records
    recs = read_jsonl(tmp_path / "results.jsonl")
    assert other[0]["config"]["epochs"] == 3 and [r["model"] for r in recs] == ["alias", "m0"]
    assert recs[1]["key"] != first[0]["key"] and recs[1]["group_key"] != first[0]["group_key"]


def test_fbank_baseline_gives_the_score_its_zero(tmp_path, tones, cache):
    kw = dict(epochs=10, cache_dir=cache, progress=False)
    run_probe("fbank", [tones], tmp_path, **kw)
    run_probe(make_tiny_encoder(), [tones], tmp_path, model_name="tiny", **kw)
    rows = {r["model"]: r for r in score_table(read_jsonl(tmp_path / "results.jsonl"))}
    fb = read_jsonl(tmp_path / "results.jsonl")[0]
    assert fb["is_fbank"] and fb["num_states"] == 1
    if fb["value"] < 1.0:
        assert rows["fbank"]["score"] == pytest.approx(0.0)
        tiny = rows["tiny"]["tasks"]["tones-classify"]["mean"]
        assert rows["tiny"]["score"] == pytest.approx(1000 * (tiny - fb["value"]) / (1 - fb["value"]))
    else:  # FBANK already perfect: the score is undefined and reported as such
        assert rows["tiny"]["score"] is None and rows["tiny"]["missing"]


def test_cli_user_task_writes_results_summary_and_plot(tmp_path, tones, tiny_model_dir, cache):
    train, dev, test = tones.manifests
    res = CliRunner().invoke(app, [
        "probe", "--model", str(tiny_model_dir), "--task-manifests", f"{train},{dev},{test}", "--task-type", "classify",
        "--task-name", "tones", "--target-field", "label", "--out", str(tmp_path / "out"), "--epochs", "3",
        "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    rec = read_jsonl(tmp_path / "out" / "results.jsonl")[0]
    assert rec["task"] == "tones" and rec["model"] == str(tiny_model_dir)
    assert "tones acc % ↑" in res.output
    assert (tmp_path / "out" / "summary.md").exists() and (tmp_path / "out" / "layer_weights.png").exists()


def test_cli_list_and_clear_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["probe", "--list"])
    assert res.exit_code == 0 and "lite-pr" in res.output and "bilstm_ctc" in res.output and "fsdd-sid" in res.output
    res = runner.invoke(app, ["probe", "--model", "fbank", "--tasks", "lite-kss", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "did you mean lite-ks" in res.output
    res = runner.invoke(app, ["probe", "--model", "fbank", "--task-manifests", "a.jsonl,b.jsonl,c.jsonl",
                              "--out", str(tmp_path)])
    assert res.exit_code == 2 and "a.jsonl" in res.output and "not found" in res.output
    res = runner.invoke(app, ["probe", "--model", "fbank", "--task-manifests", "a.jsonl,b.jsonl,c.jsonl",
                              "--task-type", "regression", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--task-type must be one of ctc, classify, slots" in res.output
    res = runner.invoke(app, ["probe", "--model", "fbank", "--out", str(tmp_path), "--seeds", "0"])
    assert res.exit_code == 2 and "--seeds" in res.output
    with pytest.raises(TypeError, match="unknown probe training option"):
        run_probe("fbank", ["lite-ks"], tmp_path, learning_rate=1.0)


def test_bad_manifest_rows_are_listed_or_skipped(tmp_path, tones):
    rows = read_manifest(tones.manifests[0]) + [Utterance(id="broken", audio=str(tmp_path / "missing.wav"), label="low")]
    bad = write_manifest(tmp_path / "train.jsonl", rows, relative=False)
    task = user_task("tones-bad", (bad, *tones.manifests[1:]), "classify", "label")
    with pytest.raises(ValueError, match=r"missing\.wav.*missing file|missing file.*missing\.wav"):
        run_probe(make_tiny_encoder(), [task], tmp_path / "o", epochs=1, cache_dir=tmp_path / "c", progress=False)
    rec = run_probe(make_tiny_encoder(), [task], tmp_path / "o", epochs=1, cache_dir=tmp_path / "c",
                    progress=False, skip_bad=True)[0]
    assert rec["num_utterances"]["train"] == len(rows) - 1


@pytest.mark.parametrize("layers", [1, 2])
def test_bilstm_on_padded_batches_equals_packed(layers):
    """The CTC head's BiLSTM runs fused padded kernels; outputs and gradients equal the packed LSTM."""
    import torch

    from speechft.models.heads import bilstm_padded

    torch.manual_seed(0)
    rnn = torch.nn.LSTM(12, 8, num_layers=layers, batch_first=True, bidirectional=True).eval()
    x = torch.randn(4, 30, 12, requires_grad=True)
    lens = torch.tensor([30, 12, 5, 29])
    mask = (torch.arange(30)[None, :] < lens[:, None])[..., None]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
    ref, _ = torch.nn.utils.rnn.pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=30)
    mine = bilstm_padded(rnn, x, lens)
    torch.testing.assert_close(mine * mask, ref * mask, atol=1e-6, rtol=1e-5)
    g_ref = torch.autograd.grad((ref * mask).pow(2).sum(), [x, *rnn.parameters()])
    g_mine = torch.autograd.grad((mine * mask).pow(2).sum(), [x, *rnn.parameters()])
    for a, b in zip(g_ref, g_mine):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

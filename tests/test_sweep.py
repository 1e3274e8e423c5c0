"""α sweeps: records, resume, plot, selection rules, selected model — with a stand-in probe and the real one."""
import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import make_tiny_encoder
from speechft.merge import merge_models
from speechft.merge.select import parse_rule, select_alpha
from speechft.merge.sweep import run_sweep
from speechft.models.io import read_card, save_encoder
from speechft.tasks import get_task
from speechft.utils.io import read_jsonl

PROBE_KEY = "encoder.layers.0.attention.q_proj.weight"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-models")
    save_encoder(make_tiny_encoder(seed=0), root / "m0")
    save_encoder(make_tiny_encoder(seed=1), root / "m1")
    return root / "m0", root / "m1"


class StandInProbe:
    """Scores that depend on where the encoder sits between θ₀ and θ′ (s = α if the merge is right).

    lite-pr  PER       0.5 − 0.3·s        (the fine-tuning task improves with α)
    lite-sid accuracy  0.8 − 0.3·s²       (another task forgets)
    lite-ks  accuracy  0.6 + 0.2·s − 0.1·s²
    dev values are test + 0.01; seed k adds 0.001·k.
    """

    CURVES = {"lite-pr": lambda s: 0.5 - 0.3 * s, "lite-sid": lambda s: 0.8 - 0.3 * s * s,
              "lite-ks": lambda s: 0.6 + 0.2 * s - 0.1 * s * s}

    def __init__(self, m0, m1):
        w0, w1 = load_file(str(m0 / "model.safetensors")), load_file(str(m1 / "model.safetensors"))
        self.w0, self.d = w0[PROBE_KEY].double(), (w1[PROBE_KEY] - w0[PROBE_KEY]).double()
        self.calls = []

    def position(self, model) -> float:
        if isinstance(model, str):  # models="disk": a directory
            w = load_file(f"{model}/model.safetensors")[PROBE_KEY]
        else:
            w = model.model.state_dict()[PROBE_KEY]
        return float(((w.double() - self.w0) * self.d).sum() / (self.d * self.d).sum())

    def __call__(self, model, tasks, out_dir, seeds=(0,), model_name=None, **kw):
        s = self.position(model)
        self.calls.append((model_name, list(tasks), type(model).__name__))
        out = []
        for t in tasks:
            task = get_task(t)
            for seed in seeds:
                v = self.CURVES[t](s) + 0.001 * seed
                out.append({"model": model_name, "task": t, "metric": task.metric, "value": v, "dev_value": v + 0.01,
                            "higher_is_better": task.higher_is_better, "seed": seed, "fingerprint": "x"})
        return out


ALPHAS = [0, 0.25, 0.5, 0.75, 1]
TASKS = ["lite-pr", "lite-sid", "lite-ks"]


def test_sweep_records_resume_plot_and_selection(pair, tmp_path):
    m0, m1 = pair
    probe = StandInProbe(m0, m1)
    out = tmp_path / "sw"
    res = run_sweep(str(m0), [str(m1)], ALPHAS, TASKS, out, select="mean-normalized", seeds=(0, 1), probe_fn=probe)
    recs = read_jsonl(out / "sweep.jsonl")
    assert len(recs) == len(ALPHAS) * len(TASKS) == len(res.records)
    assert len(probe.calls) == len(ALPHAS) and all(c[2] == "HFEncoder" for c in probe.calls)
    for r in recs:  # the value reveals where the probed encoder sat: exactly at α
        expect = StandInProbe.CURVES[r["task"]](r["alpha"]) + 0.0005  # mean over seeds 0 and 1
        assert r["value"] == pytest.approx(expect, abs=1e-5) and r["seeds"] == [0, 1]
        assert r["dev_value"] == pytest.approx(expect + 0.01, abs=1e-5)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # mean normalized score = (s + (1 − s²) + (2s − s²)) / 3 = (1 + 3s − 2s²)/3: best of the grid at s = 0.75
    assert res.selection["alpha"] == 0.75 and res.selection["basis"] == "dev_value"
    card = read_card(out / "selected")
    assert card["alpha"] == 0.75 and card["selection"]["rule"] == "mean-normalized"
    ref = merge_models(str(m0), [str(m1)], tmp_path / "ref", alpha=0.75, progress=False)
    got, want = load_file(str(out / "selected" / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert want and got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert json.loads((out / "selection.json").read_text())["alpha"] == 0.75

    # rerun: nothing probed again; one new α: only that one is probed
    run_sweep(str(m0), [str(m1)], ALPHAS, TASKS, out, seeds=(0, 1), probe_fn=probe)
    assert len(probe.calls) == len(ALPHAS) and len(read_jsonl(out / "sweep.jsonl")) == 15
    res = run_sweep(str(m0), [str(m1)], ALPHAS + [0.1], TASKS, out, seeds=(0, 1), probe_fn=probe)
    assert len(probe.calls) == len(ALPHAS) + 1 and probe.calls[-1][0] == "linear alpha=0.1"
    assert len(res.records) == 18
    with pytest.raises(ValueError, match="other settings.*method"):
        run_sweep(str(m0), [str(m1)], ALPHAS, TASKS, out, method="ties", seeds=(0, 1), probe_fn=probe)


def test_sweep_on_disk_and_ft_task_rule(pair, tmp_path):
    m0, m1 = pair
    probe = StandInProbe(m0, m1)
    res = run_sweep(str(m0), [str(m1)], ALPHAS, TASKS, tmp_path / "d", models="disk",
                    select="ft-task:lite-pr,max-drop:0.1", probe_fn=probe)
    assert probe.calls and all(c[2] == "str" for c in probe.calls)
    assert sorted(p.name for p in (tmp_path / "d" / "models").iterdir()) == [f"alpha-{a:g}" for a in ALPHAS]
    # lite-sid drop vs α=0 on dev: 0.3·s²/0.81 ≤ 0.1 ⇔ s ≤ 0.52 -> α ∈ {0, 0.25, 0.5}; lite-pr best at 0.5
    assert res.selection["eligible"] == [0.0, 0.25, 0.5] and res.selection["alpha"] == 0.5
    assert read_card(tmp_path / "d" / "selected")["alpha"] == 0.5


def test_sweep_refuses_bad_options_before_work(pair, tmp_path):
    m0, m1 = pair
    probe = StandInProbe(m0, m1)
    cases = [(dict(alphas=[0, 0.5, 0.5]), "listed twice"), (dict(tasks=["lite-prr"]), "did you mean lite-pr"),
             (dict(select="ft-task:lite-pr,max-drop:0.1", alphas=[0.5, 1]), "needs α=0"),
             (dict(select="ft-task:lite-lid,max-drop:0.1"), "not among --tasks"),
             (dict(select="mean-normalised"), "did you mean mean-normalized"),
             (dict(models="cloud"), "memory, disk")]
    for kw, msg in cases:
        args = dict(alphas=ALPHAS, tasks=TASKS) | kw
        with pytest.raises((ValueError, KeyError), match=msg):
            run_sweep(str(m0), [str(m1)], args["alphas"], args["tasks"], tmp_path / "bad",
                      **{k: v for k, v in kw.items() if k not in ("alphas", "tasks")}, probe_fn=probe)
    assert not probe.calls and not (tmp_path / "bad").exists()


def rec(alpha, task, value, hib=True, metric="accuracy", dev=None):
    return {"alpha": alpha, "task": task, "metric": metric, "value": value, "dev_value": dev,
            "higher_is_better": hib}


def test_select_rules_hand_worked():
    records = [rec(0.0, "a", 0.50), rec(0.5, "a", 0.70), rec(1.0, "a", 0.90),
               rec(0.0, "b", 0.80), rec(0.5, "b", 0.78), rec(1.0, "b", 0.60),
               rec(0.0, "c", 0.30, hib=False, metric="per"), rec(0.5, "c", 0.20, hib=False, metric="per"),
               rec(1.0, "c", 0.20, hib=False, metric="per")]
    # normalized: a = 0, .5, 1; b = 1, .9, 0; c = 0, 1, 1 -> means .333, .8, .667
    sel = select_alpha(records, "mean-normalized")
    assert sel["alpha"] == 0.5 and sel["basis"] == "value" and sel["scores"]["0.5"] == pytest.approx(0.8)
    # ft-task a; drops of b: 0, 2.5%, 25%; c improves -> 1.0 excluded at 5%, allowed at 30%
    assert select_alpha(records, "ft-task:a,max-drop:5%")["alpha"] == 0.5
    assert select_alpha(records, "ft-task:a,max-drop:0.3")["alpha"] == 1.0
    assert select_alpha(records, "ft-task:a,max-drop:0")["alpha"] == 0.0
    # ties go to the smallest α; dev values are used when present
    flat = [rec(a, "a", 0.5, dev=d) for a, d in [(0.0, 0.1), (0.5, 0.3), (1.0, 0.3)]]
    sel = select_alpha(flat, "mean-normalized")
    assert sel["alpha"] == 0.5 and sel["basis"] == "dev_value"


def test_select_rule_parsing_errors():
    assert parse_rule("ft-task:lite-pr, max-drop:2%")[1] == {"task": "lite-pr", "max_drop": 0.02}
    for spec, msg in [("ft-task:lite-pr", "needs max-drop:X"), ("ft-task,max-drop:0.1", "needs a value"),
                      ("ft-task:x,max-drop:lots", "expected a number"), ("mean-normalized:x", "takes no value"),
                      ("ft-task:x,max-dorp:1", "unknown option 'max-dorp'")]:
        with pytest.raises(ValueError, match=msg):
            parse_rule(spec)


def tone_task(root, n=(12, 6, 6), seed=0):
    """A generated two-class task: a low (250 Hz) or high (1500 Hz) tone of 0.3–0.6 s."""
    import numpy as np

    from speechft.data import Utterance, write_audio, write_manifest
    from speechft.tasks import user_task

    rng, sr, paths = np.random.default_rng(seed), 16000, []
    for split, count in zip(("train", "dev", "test"), n):
        rows = []
        for i in range(count):
            label = ("low", "high")[i % 2]
            t = np.arange(int(rng.uniform(0.3, 0.6) * sr)) / sr
            wav = (0.3 * np.sin(2 * np.pi * (250.0 if label == "low" else 1500.0) * t)
                   + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)
            write_audio(root / f"{split}{i}.wav", wav)
            rows.append(Utterance(id=f"{split}{i}", audio=str(root / f"{split}{i}.wav"), duration=len(t) / sr,
                                  label=label))
        paths.append(write_manifest(root / f"{split}.jsonl", rows))
    return user_task("tones", tuple(paths), "classify", "label")


def test_sweep_with_real_probe_on_tiny_model(pair, tmp_path):
    """End to end: the real probe harness on a generated two-tone task."""
    m0, m1 = pair
    task = tone_task(tmp_path / "tones")
    res = run_sweep(str(m0), [str(m1)], [0, 0.5, 1], [task], tmp_path / "real", epochs=2,
                    cache_dir=str(tmp_path / "cache"), select="mean-normalized")
    recs = read_jsonl(tmp_path / "real" / "sweep.jsonl")
    assert [r["alpha"] for r in recs] == [0, 0.5, 1] and all(0 <= r["value"] <= 1 for r in recs)
    assert len({r["fingerprint"] for r in recs}) == 3  # three different encoders were probed
    assert (tmp_path / "real" / "sweep.png").exists() and (tmp_path / "real" / "selected" / "config.json").exists()
    assert res.selection["alpha"] in (0, 0.5, 1)


def test_sweep_keeps_no_features_of_its_interpolations(pair, tmp_path):
    """Without --cache-dir, an interpolation's features live in OUT/features only while it is probed;
    θ₀ (α=0) and θ′ (α=1) keep the shared cache."""
    from speechft.probe.cache import cache_root

    m0, m1 = pair
    task = tone_task(tmp_path / "tones")
    run_sweep(str(m0), [str(m1)], [0, 0.5, 1], [task], tmp_path / "sw", epochs=1)
    fps = {r["alpha"]: r["fingerprint"] for r in read_jsonl(tmp_path / "sw" / "sweep.jsonl")}
    shared = {p.name for p in cache_root().iterdir()}
    assert fps[0] in shared and fps[1] in shared and fps[0.5] not in shared
    assert not (tmp_path / "sw" / "features").exists()


def test_sweep_reuses_records_of_identical_weights(pair, tmp_path):
    """α=0 is θ₀ and α=1 is θ′ bit for bit: with probe_dir shared with a run that already probed both,
    the sweep trains heads only for the α in between (records matched by weight fingerprint)."""
    from speechft.probe import run_probe

    m0, m1 = pair
    task = tone_task(tmp_path / "tones")
    shared, cache = tmp_path / "probe", str(tmp_path / "cache")
    first = {name: run_probe(str(m), [task], shared, epochs=2, cache_dir=cache, model_name=name)[0]
             for name, m in (("pre", m0), ("ft", m1))}
    run_sweep(str(m0), [str(m1)], [0, 0.5, 1], [task], tmp_path / "sweep", epochs=2, cache_dir=cache, probe_dir=shared)
    recs = {r["alpha"]: r for r in read_jsonl(tmp_path / "sweep" / "sweep.jsonl")}
    by_model = {r["model"]: r for r in read_jsonl(shared / "results.jsonl")}
    assert by_model["linear alpha=0"]["reused_from"] == "pre" and by_model["linear alpha=1"]["reused_from"] == "ft"
    assert "reused_from" not in by_model["linear alpha=0.5"]
    assert recs[0]["value"] == first["pre"]["value"] and recs[1]["value"] == first["ft"]["value"]
    assert not (tmp_path / "sweep" / "probe").exists()


def test_cli_sweep_on_tiny_model(pair, tmp_path, fsdd_root):
    from speechft.cli import app

    m0, m1 = pair
    args = ["sweep", "--pretrained", str(m0), "--finetuned", str(m1), "--alphas", "0,1", "--tasks", "fsdd-ks",
            "--out", str(tmp_path / "cli"), "--limit", "20", "--epochs", "1", "--fsdd", str(fsdd_root),
            "--cache-dir", str(tmp_path / "cache")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(read_jsonl(tmp_path / "cli" / "sweep.jsonl")) == 2 and (tmp_path / "cli" / "sweep.png").exists()
    assert "fsdd-ks" in res.output and "plot:" in res.output
    bad = CliRunner().invoke(app, args[:-4] + ["--alphas", "0,x"])
    assert bad.exit_code == 2 and "--alphas" in bad.output

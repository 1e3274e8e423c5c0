"""Feature cache: extraction once, zero encoder forwards on re-runs, pooled == pooled frames, resume."""
import numpy as np
import pytest
import torch

from conftest import make_tiny_encoder
from speechft.data import load_audio
from speechft.data.manifest import Utterance, read_manifest
from speechft.models.encoder import SpeechEncoder
from speechft.models.heads import build_head
from speechft.probe import run_probe
from speechft.probe import cache as fcache
from speechft.probe.train import CachedSource, OnlineSource, default_config, train_head
from speechft.tasks import user_task
from speechft.vocab import Vocab
from test_probe import make_tone_task


class CountingEncoder(SpeechEncoder):
    """Wraps an encoder and counts forwards and utterances seen (same weights, same cache)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.num_layers, self.hidden_size, self.frame_rate = inner.num_layers, inner.hidden_size, inner.frame_rate
        self.normalize_input = getattr(inner, "normalize_input", False)
        self.name = inner.name
        self.forwards = self.utterances = 0

    def forward(self, wav, wav_lens=None):
        self.forwards += 1
        self.utterances += wav.shape[0]
        return self.inner(wav, wav_lens)

    def fingerprint(self):
        return self.inner.fingerprint()


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return make_tone_task(tmp_path_factory.mktemp("tones"))


def test_second_run_performs_zero_encoder_forwards(tmp_path, tones):
    enc = CountingEncoder(make_tiny_encoder())
    first = run_probe(enc, [tones], tmp_path / "a", epochs=2, cache_dir=tmp_path / "cache", progress=False)
    n_utts = sum(first[0]["num_utterances"].values())
    assert enc.forwards > 0 and enc.utterances == n_utts  # every utterance encoded exactly once
    enc.forwards = enc.utterances = 0
    # a new output folder (nothing to resume) and two seeds: all features come from the cache
    again = run_probe(enc, [tones], tmp_path / "b", seeds=(0, 1), epochs=2, cache_dir=tmp_path / "cache", progress=False)
    assert enc.forwards == 0 and len(again) == 2
    assert again[0]["value"] == first[0]["value"] and again[0]["layer_weights"] == first[0]["layer_weights"]


def test_cache_layout_is_float16_sharded_and_keyed(tmp_path, tones):
    enc = make_tiny_encoder()
    rows = read_manifest(tones.manifests[0])
    folder = fcache.split_folder(tones, "train", "default", fcache.model_key(enc), tmp_path)
    assert folder.parent.name == enc.fingerprint() and folder.name.endswith("-train")
    c = fcache.ensure_features(enc, rows, folder, progress=False)
    shards = sorted(folder.glob("shard-*.npy"))
    data = [np.load(p, mmap_mode="r") for p in shards if not p.name.endswith(".pooled.npy")]
    assert data and all(d.dtype == np.float16 and d.shape[1:] == (enc.num_layers + 1, enc.hidden_size) for d in data)
    assert sum(d.shape[0] for d in data) == sum(c.num_frames(r.id) for r in rows)
    # the cached frames are the encoder's states, rounded to float16
    wav = torch.from_numpy(load_audio(rows[0].audio))[None]
    with torch.no_grad():
        states, lens = enc(wav, torch.tensor([wav.shape[1]]))
    ref = torch.stack([s[0, : int(lens[0])] for s in states], 1).numpy()  # [T, L+1, F]
    np.testing.assert_allclose(c.frames([rows[0].id])[0].astype(np.float32), ref, atol=2e-2, rtol=1e-2)
    # another model (other weights) gets another folder
    other = make_tiny_encoder(seed=1)
    assert fcache.split_folder(tones, "train", "default", fcache.model_key(other), tmp_path) != folder


def test_pooled_vectors_equal_pooling_the_cached_frames(tmp_path, tones):
    enc = make_tiny_encoder()
    rows = read_manifest(tones.manifests[1])
    c = fcache.ensure_features(enc, rows, tmp_path / "f", progress=False)
    ids = [r.id for r in rows]
    pooled = c.pooled(ids)
    means = np.stack([f.astype(np.float32).mean(0) for f in c.frames(ids)])
    np.testing.assert_allclose(pooled, means, rtol=0, atol=1e-6)
    src = CachedSource(c, ids)
    vocab = Vocab.build(tones, rows)
    slots = user_task("slots", tones.manifests, "slots", "label")
    for task, voc in [(tones, vocab), (slots, Vocab.build(slots, rows))]:
        torch.manual_seed(0)
        head = build_head(task, enc.hidden_size, enc.num_layers + 1, voc).eval()
        with torch.no_grad():
            torch.nn.init.normal_(head.mix.weights)  # non-uniform layer weights
            a = head(*src.inputs(range(len(ids)), pooled=True))
            b = head(*src.inputs(range(len(ids)), pooled=False))
        for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_interrupted_extraction_resumes_and_changed_audio_is_reextracted(tmp_path, tones):
    enc = CountingEncoder(make_tiny_encoder())
    rows = read_manifest(tones.manifests[0])
    folder = tmp_path / "f"
    fcache.ensure_features(enc, rows[:5], folder, progress=False)  # "interrupted" after 5 utterances
    assert enc.utterances == 5
    # a torn shard (index without data) is ignored, not trusted
    (folder / "shard-zzz.json").write_text('{"utts": [{"id": "%s", "key": "x", "offset": 0, "frames": 1, "row": 0}]}' % rows[6].id)
    c = fcache.ensure_features(enc, rows, folder, progress=False)
    assert enc.utterances == len(rows)
    assert all(c.has(r, fcache.encoder_version(enc)) for r in rows)
    moved = Utterance(**{**rows[0].__dict__, "audio": rows[1].audio})  # same id, other audio
    enc.utterances = 0
    c = fcache.ensure_features(enc, [moved] + rows[1:], folder, progress=False)
    assert enc.utterances == 1
    # same audio, other batch: equal up to float16 rounding of batch-dependent float noise
    np.testing.assert_allclose(c.frames([rows[0].id])[0].astype(np.float32),
                               c.frames([rows[1].id])[0].astype(np.float32), atol=2e-3, rtol=2e-3)


def test_length_sorted_extraction_batches():
    d = [3.0, 1.0, 2.0, 1.0, 8.0, 0.5]
    batches = fcache.length_sorted_batches(d, batch_seconds=4.0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(d)))
    assert [d[i] for i in flat] == sorted(d)
    assert all(len(b) * max(d[i] for i in b) <= 4.0 or len(b) == 1 for b in batches)


def test_cached_frames_in_ram_or_per_batch_are_the_padded_cache(tmp_path, tones, monkeypatch):
    """Frame batches ([L+1, B, T, F] float32, zero-padded) equal the cached float16 frames, whether the
    split was loaded into RAM once or is read per batch from the shards."""
    enc = make_tiny_encoder()
    rows = read_manifest(tones.manifests[0])
    c = fcache.ensure_features(enc, rows, tmp_path / "f", progress=False)
    ids = [r.id for r in rows]
    idx = [3, 0, len(ids) - 1, 5]
    frames = c.frames([ids[i] for i in idx])
    T = max(f.shape[0] for f in frames)
    expect = np.zeros((len(idx), T) + frames[0].shape[1:], dtype=np.float32)
    for b, f in enumerate(frames):
        expect[b, : f.shape[0]] = f
    expect = torch.from_numpy(expect).permute(2, 0, 1, 3)
    for budget in (CachedSource.FRAMES_IN_RAM_BYTES, 0):
        monkeypatch.setattr(CachedSource, "FRAMES_IN_RAM_BYTES", budget)
        src = CachedSource(c, ids)
        x, lens = src.inputs(idx, pooled=False)
        assert x.dtype == torch.float32 and torch.equal(x, expect), budget
        assert lens.tolist() == [f.shape[0] for f in frames]
        assert (src._frames_all is not None) == (budget > 0)


def test_weighted_layer_sum_takes_a_list_or_a_stacked_tensor():
    from speechft.models.heads import LastLayer, WeightedLayerSum

    g = torch.Generator().manual_seed(0)
    states = [torch.randn(2, 7, 5, generator=g) for _ in range(4)]
    mix = WeightedLayerSum(4)
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([0.3, -1.0, 2.0, 0.1]))
    w = torch.softmax(mix.weights.detach(), 0)
    expect = sum(wi * s for wi, s in zip(w, states))
    torch.testing.assert_close(mix(states), expect, rtol=1e-6, atol=1e-6)
    assert torch.equal(mix(torch.stack(states)), mix(states))
    assert torch.equal(LastLayer()(torch.stack(states)), states[-1]) and LastLayer()(states[0]) is states[0]
    mix(torch.stack(states)).sum().backward()  # the layer weights get their gradient through the product
    assert mix.weights.grad is not None and mix.weights.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expected 4 hidden states, got 3"):
        mix(states[:3])


def test_online_source_matches_cached_training(tmp_path, tones):
    """The s3prl way (encoder at every step) and cached features give the same result within fp16 noise."""
    enc = CountingEncoder(make_tiny_encoder())
    rows = {s: read_manifest(p) for s, p in zip(("train", "dev", "test"), tones.manifests)}
    vocab = Vocab.build(tones, rows["train"])
    targets = {s: [vocab.encode(tones, r) for r in rs] for s, rs in rows.items()}
    cfg = default_config(tones, epochs=8)
    cached = {s: CachedSource(fcache.ensure_features(enc, rs, tmp_path / s, progress=False), [r.id for r in rs])
              for s, rs in rows.items()}
    online = {s: OnlineSource(enc, rs) for s, rs in rows.items()}
    for s in online:  # identical batches in both runs
        online[s].lengths = cached[s].lengths
    out = {}
    for name, src in (("cached", cached), ("online", online)):
        torch.manual_seed(0)
        head = build_head(tones, enc.hidden_size, enc.num_layers + 1, vocab)
        enc.forwards = 0
        out[name] = train_head(head, tones, vocab, src, targets, {}, cfg, 0, enc.frame_rate, progress=False)
        out[name]["forwards"] = enc.forwards
    assert out["cached"]["pooled_features"] and out["cached"]["forwards"] == 0
    assert out["online"]["forwards"] > cfg.epochs  # encoder ran for every batch
    assert abs(out["cached"]["value"] - out["online"]["value"]) <= 0.1
    np.testing.assert_allclose(out["cached"]["layer_weights"], out["online"]["layer_weights"], atol=1e-2)
    losses = [[h["train_loss"] for h in out[k]["history"]] for k in ("cached", "online")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-2)


def _descendant(enc, seed: int, touch_cnn: bool):
    """A copy of ``enc`` with the transformer perturbed (and the CNN too when ``touch_cnn``)."""
    import copy

    out = copy.deepcopy(enc)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.model.named_parameters():
            if touch_cnn or not name.startswith("feature_extractor."):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return out


def test_forward_many_shares_the_cnn_and_matches_separate_forwards():
    from speechft.models.encoder import forward_many

    base = make_tiny_encoder().eval()
    same_cnn = _descendant(base, 1, touch_cnn=False).eval()  # Stable-FT-like: CNN frozen
    other_cnn = _descendant(base, 2, touch_cnn=True).eval()  # regular-FT-like
    assert base.cnn_key() == same_cnn.cnn_key() != other_cnn.cnn_key()
    wav = torch.randn(2, 16000)
    lens = torch.tensor([16000, 11000])
    calls = []
    handle = same_cnn.model.feature_extractor.conv_layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    with torch.inference_mode():
        shared = forward_many([base, same_cnn, other_cnn], wav, lens)
        separate = [e(wav, lens) for e in (base, same_cnn, other_cnn)]
    handle.remove()
    assert len(calls) == 1  # only the separate forward ran same_cnn's CNN; the shared one replayed base's
    assert len(shared) == len(separate) == 3
    for (s1, f1), (s2, f2) in zip(shared, separate):
        assert torch.equal(f1, f2) and len(s1) == len(s2)
        assert all(torch.equal(a, b) for a, b in zip(s1, s2))
    assert not torch.equal(shared[0][0][-1], shared[1][0][-1])  # different transformers, different features
    # the CNN runs normally again afterwards (the replay is undone)
    with torch.inference_mode():
        again = same_cnn(wav[:, :8000], torch.tensor([8000, 8000]))
    assert again[0][0].shape[1] < shared[1][0][0].shape[1]


def test_shared_extraction_gives_bit_identical_caches(tmp_path, tones):
    from speechft.probe import extract_features

    base = make_tiny_encoder()
    kid = _descendant(base, 3, touch_cnn=False)
    # one pass for both (the base twice: deduplicated), then each separately into another cache root
    extract_features([base, kid, base], [tones], cache_dir=tmp_path / "shared", progress=False)
    extract_features([base], [tones], cache_dir=tmp_path / "alone", progress=False)
    extract_features([kid], [tones], cache_dir=tmp_path / "alone", progress=False)
    for enc in (base, kid):
        for split in ("train", "dev", "test"):
            rows = read_manifest(tones.manifests[("train", "dev", "test").index(split)])
            # (a pooled task: its cache is pooled-only)
            a, b = (fcache.FeatureCache(fcache.split_folder(tones, split, "default", fcache.model_key(enc), tmp_path / r,
                                                            pooled_only=True)) for r in ("shared", "alone"))
            ids = [r.id for r in rows]
            assert len(ids) > 0 and np.array_equal(a.pooled(ids), b.pooled(ids))
    # frames too: one shared pass into full caches equals separate extractions bit for bit
    rows = read_manifest(tones.manifests[0])
    shared = fcache.ensure_features_many([base, kid], rows, [tmp_path / "fs" / "a", tmp_path / "fs" / "b"], progress=False)
    for enc, c in zip((base, kid), shared):
        alone = fcache.ensure_features(enc, rows, tmp_path / "fa" / fcache.model_key(enc), progress=False)
        ids = [r.id for r in rows]
        assert all(np.array_equal(x, y) for x, y in zip(c.frames(ids), alone.frames(ids)))
    # the probe then finds everything cached: no encoder forward at all
    counting = CountingEncoder(kid)
    run_probe(counting, [tones], tmp_path / "p", epochs=1, cache_dir=tmp_path / "shared", progress=False)
    assert counting.forwards == 0


def test_pooled_only_cache_holds_the_same_vectors_and_no_frames(tmp_path, tones):
    """A pooled-only split stores exactly the pooled vectors of a full one, no frame file, and a
    head trained on it gives the identical result; its frames cannot be read by mistake."""
    enc = CountingEncoder(make_tiny_encoder())
    rows = {s: read_manifest(p) for s, p in zip(("train", "dev", "test"), tones.manifests)}
    full = {s: fcache.ensure_features(enc, rs, tmp_path / "full" / s, progress=False) for s, rs in rows.items()}
    only = {s: fcache.ensure_features(enc, rs, tmp_path / "pooled" / s, progress=False, pooled_only=True)
            for s, rs in rows.items()}
    for s, rs in rows.items():
        ids = [r.id for r in rs]
        np.testing.assert_array_equal(only[s].pooled(ids), full[s].pooled(ids))
        assert [only[s].num_frames(u) for u in ids] == [full[s].num_frames(u) for u in ids]
        assert not [p for p in only[s].folder.glob("shard-*.npy") if not p.name.endswith(".pooled.npy")]
        assert only[s].size_bytes() * 5 < full[s].size_bytes()
    with pytest.raises(ValueError, match="pooled vectors only"):
        only["train"].frames([rows["train"][0].id])
    vocab = Vocab.build(tones, rows["train"])
    targets = {s: [vocab.encode(tones, r) for r in rs] for s, rs in rows.items()}
    cfg = default_config(tones, epochs=3)
    res = []
    for caches in (full, only):
        torch.manual_seed(0)
        head = build_head(tones, enc.hidden_size, enc.num_layers + 1, vocab)
        src = {s: CachedSource(c, [r.id for r in rows[s]]) for s, c in caches.items()}
        res.append(train_head(head, tones, vocab, src, targets, {}, cfg, 0, enc.frame_rate, progress=False))
    assert res[0]["value"] == res[1]["value"] and res[0]["layer_weights"] == res[1]["layer_weights"]
    # resumable and keyed like a full cache: nothing re-extracted; changed audio is
    enc.utterances = 0
    fcache.ensure_features(enc, rows["train"], tmp_path / "pooled" / "train", progress=False, pooled_only=True)
    assert enc.utterances == 0
    moved = Utterance(**{**rows["train"][0].__dict__, "audio": rows["train"][1].audio})
    fcache.ensure_features(enc, [moved] + rows["train"][1:], tmp_path / "pooled" / "train", progress=False,
                           pooled_only=True)
    assert enc.utterances == 1


def test_pooled_tasks_get_their_own_cache_folder(tmp_path, tones):
    """run_probe puts a pooled task's features in a ``-pooled`` folder, which a frame task's folder
    name never equals, so a frame task is never served from a cache without frames."""
    enc = make_tiny_encoder()
    run_probe(enc, [tones], tmp_path / "out", epochs=1, cache_dir=tmp_path / "cache", progress=False)
    folders = sorted(p.name for p in (tmp_path / "cache" / fcache.model_key(enc)).iterdir() if p.is_dir())
    assert folders and all(f.endswith("-pooled") for f in folders)
    for s in ("train", "dev", "test"):
        framed = fcache.split_folder(tones, s, "default", "m", tmp_path)
        assert fcache.split_folder(tones, s, "default", "m", tmp_path, pooled_only=True) != framed
        assert not framed.name.endswith("-pooled")


# -- the shared cache's upkeep: list, prune by last use, drop split folders ---------------------------------
def _perturbed(seed: int):
    enc = make_tiny_encoder()
    with torch.no_grad():
        next(enc.parameters()).add_(float(seed))  # other weights: another fingerprint, another folder
    return enc


def test_cache_lists_models_by_last_use_and_prunes_the_unused(tmp_path, tones):
    import os
    import time

    from speechft.cli import app
    from typer.testing import CliRunner

    root = tmp_path / "cache"
    old, new = CountingEncoder(_perturbed(1)), _perturbed(2)
    for i, enc in enumerate((old, new)):
        run_probe(enc, [tones], tmp_path / f"p{i}", epochs=1, cache_dir=root, progress=False)
    three_days_ago = time.time() - 3 * 86400
    os.utime(root / old.fingerprint() / fcache.LAST_USED, (three_days_ago, three_days_ago))
    models = fcache.list_cache(root)
    assert [m.fingerprint for m in models] == [new.fingerprint(), old.fingerprint()]  # most recently used first
    assert all(m.name == "tiny-test" and m.splits == 3 and m.bytes > 0 for m in models)
    assert fcache.list_cache(tmp_path / "nowhere") == []

    assert [m.fingerprint for m in fcache.prune_cache(root, 1.0, dry_run=True)[0]] == [old.fingerprint()]
    assert (root / old.fingerprint()).is_dir()  # a dry run removes nothing
    assert [m.fingerprint for m in fcache.prune_cache(root, 1.0)[0]] == [old.fingerprint()]
    assert [m.fingerprint for m in fcache.list_cache(root)] == [new.fingerprint()]
    # a pruned model is extracted again when next probed (with a new seed: nothing to reuse)
    old.forwards = 0
    run_probe(old, [tones], tmp_path / "p0", seeds=(1,), epochs=1, cache_dir=root, progress=False)
    assert old.forwards > 0 and (root / old.fingerprint()).is_dir()

    runner = CliRunner()
    res = runner.invoke(app, ["cache", "list", "--cache-dir", str(root)])
    assert res.exit_code == 0 and f"{root}: 2 model(s)" in res.output and new.fingerprint() in res.output
    res = runner.invoke(app, ["cache", "prune", "--cache-dir", str(root)])
    assert res.exit_code == 2 and "--older-than DAYS or --all" in res.output
    res = runner.invoke(app, ["cache", "prune", "--older-than", "-1", "--cache-dir", str(root)])
    assert res.exit_code == 2 and "--older-than must be" in res.output
    res = runner.invoke(app, ["cache", "prune", "--all", "--cache-dir", str(root)])
    assert res.exit_code == 0 and "removed 2 model(s)" in res.output and fcache.list_cache(root) == []


def test_prune_keeps_the_folders_a_running_process_uses(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    from speechft.cli import app
    from typer.testing import CliRunner

    root, host = tmp_path / "cache", socket.gethostname()
    for model in ("busy", "ended", "far", "far-stale"):
        (root / model / "a-train").mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (root / "busy" / fcache._in_use_name(host, other.pid)).touch()  # a probe running in another process
        done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (root / "ended" / fcache._in_use_name(host, int(done.stdout))).touch()  # one that has ended: ignored
        (root / "far" / fcache._in_use_name("elsewhere", 7)).touch()  # another host: live while touched recently
        stale = root / "far-stale" / fcache._in_use_name("elsewhere", 8)
        stale.touch()
        os.utime(stale, (time.time() - 13 * 3600,) * 2)
        assert {m.fingerprint: m.users for m in fcache.list_cache(root)} == {
            "busy": (f"{host}:{other.pid}",), "ended": (), "far": ("elsewhere:7",), "far-stale": ()}
        res = CliRunner().invoke(app, ["cache", "prune", "--all", "--cache-dir", str(root)])
        assert res.exit_code == 0 and "removed 2 model(s)" in res.output, res.output
        assert f"kept busy  (unknown): in use by {host}:{other.pid}" in res.output
        assert sorted(p.name for p in root.iterdir()) == ["busy", "far"]
        fcache.mark_used(root / "busy", "x")  # this process's own mark does not hold its own prune back
        assert fcache.list_cache(root)[0].users == (f"{host}:{other.pid}",)
    finally:
        other.kill()
        other.wait()
    gone, busy = fcache.prune_cache(root)  # the other process has ended: its folder goes
    assert [m.fingerprint for m in gone] == ["busy"] and [m.fingerprint for m in busy] == ["far"]


def test_drop_splits_removes_the_named_folders_then_empty_model_folders(tmp_path):
    root = tmp_path / "scratch"
    for model in ("m1", "m2"):
        for name in ("a-train", "a-dev", "b-train"):
            (root / model / name).mkdir(parents=True)
            (root / model / name / "shard-x.npy").write_bytes(b"\0" * 100)
        fcache.mark_used(root / model, "x")
    assert fcache.drop_splits(root, ["a-train", "a-dev"]) == 400
    assert sorted(p.name for p in (root / "m1").iterdir() if p.is_dir()) == ["b-train"]
    assert fcache.drop_splits(root, ["b-train"]) == 200
    assert not root.exists()  # nothing left: model folders and the root are gone
    assert fcache.drop_splits(root, ["b-train"]) == 0

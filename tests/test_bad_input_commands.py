"""Every command that reads a manifest names every bad row, with its exact reason, before any work.

One corrupt corpus (``tests/corrupt.py``) is fed to ``validate``, ``probe``, ``finetune`` and
``pretrain``. Without ``--skip-bad`` each must exit non-zero before training, print one line per bad
row (``manifest:line  id  path  reason``) and write no checkpoint or result. With ``--skip-bad`` it
must run to the end on the good rows and report how many rows of which kind it skipped.

The manifests of a user task: train = the corrupt manifest (good rows mixed with every fault),
dev/test = good rows with the same labels.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from corrupt import STEREO_ID, UNREADABLE_ID, VALIDATE_KWARGS, make_corrupt_corpus, permissions_enforced

# The exact reason of every faulty row under VALIDATE_KWARGS (task lite-ks, 0.1-30 s, mono).
EXACT = {
    "empty_file": "empty file (0 bytes)",
    "zero_samples": "empty audio (0 samples)",
    "trunc_header": "truncated header",
    "trunc_data": "truncated (header says 16000 frames, file holds 4800)",
    "random_bytes": "not audio",
    "nan": "NaN/inf samples",
    "inf": "NaN/inf samples",
    STEREO_ID: "2 channels (expected 1)",
    "short_10ms": "too short (0.01 s < 0.10 s)",
    "long_60s": "too long (60.0 s > 30.0 s)",
    "missing_path": "missing file",
    "directory": "not a regular file",
    UNREADABLE_ID: "permission denied",
    "no_label": "missing label for task lite-ks",
    "duplicate": "duplicate id (first on line 1)",
    "broken_json": "not valid JSON",
    "no_audio_field": "missing audio",
}
LABELS = ("yes", "no", "up")


def _keys_to_lines(manifest: Path) -> dict[str, int]:
    """Row key (as in EXACT) -> line number, read from the manifest itself."""
    out, seen = {}, set()
    for lineno, line in enumerate(manifest.read_text().splitlines(), 1):
        try:
            rid = json.loads(line).get("id")
        except ValueError:
            out["broken_json"] = lineno
            continue
        if rid in seen:
            out["duplicate"] = lineno
            continue
        seen.add(rid)
        out[rid] = lineno
    return out


def expected_bad(command: str, task_name: str = "user") -> dict[str, str]:
    """Key -> exact reason of the rows ``command`` must reject.

    validate is run with VALIDATE_KWARGS. Training commands reject no row for its length (long ones
    are cropped) or its channel count (averaged to mono); they check the target of their task.
    pretrain reads no target at all.
    """
    bad = dict(EXACT)
    if not permissions_enforced():  # running as root: chmod 000 does not stop reading
        bad.pop(UNREADABLE_ID)
    if command != "validate":
        bad.pop("long_60s")
        bad.pop(STEREO_ID)
        bad["no_label"] = f"missing label for task {task_name}"
    if command == "pretrain":
        bad.pop("no_label")
    return bad


def assert_every_bad_row_named(output: str, manifest: Path, bad: dict[str, str]) -> None:
    lines = _keys_to_lines(manifest)
    out_lines = [ln.strip() for ln in output.splitlines()]
    for key, reason in bad.items():
        prefix = f"{manifest}:{lines[key]}  "
        hits = [ln for ln in out_lines if ln.startswith(prefix)]
        assert len(hits) == 1, f"row {key} (line {lines[key]}) not reported once:\n{output}"
        assert hits[0].endswith("  " + reason), f"row {key}: expected reason {reason!r}, got {hits[0]!r}"
    reported = {int(m.group(1)) for m in re.finditer(rf"^\s*{re.escape(str(manifest))}:(\d+)  ", output, re.M)}
    assert reported == {lines[k] for k in bad}, f"rows reported that are not bad: {reported - {lines[k] for k in bad}}"


def _tone(seconds: float, freq: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def _good_manifest(root: Path, split: str, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        path = root / f"{split}{i}.wav"
        sf.write(str(path), _tone(0.4 + 0.05 * i, 200.0 * (1 + LABELS.index(label)), i), 16000)
        rows.append({"id": f"{split}{i}", "audio": path.name, "label": label})
    m = root / f"{split}.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    manifest, expected = make_corrupt_corpus(root / "train")
    dev, test = _good_manifest(root / "dev", "dev", 6), _good_manifest(root / "test", "test", 6)
    return manifest, expected, dev, test


def test_exact_reasons_agree_with_the_corrupt_corpus(corpus):
    """The table above is the corpus's own expectation, made exact (guards against drift)."""
    manifest, expected, _, _ = corpus
    bad = expected_bad("validate")
    lines = _keys_to_lines(manifest)
    by_line = {f"line {n}": k for k, n in lines.items()}
    assert {by_line.get(k, k) for k in expected} == set(bad)
    for key, substring in expected.items():
        assert substring in bad[by_line.get(key, key)]


def _cli(args, **kw):
    from speechft.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], **kw)


def _skip_line(caplog, manifest: Path) -> str:
    hits = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
            and r.getMessage().startswith("skipped ") and str(manifest) in r.getMessage()]
    assert len(hits) == 1, f"expected one 'skipped N of M rows' report for {manifest}, got {hits}"
    return hits[0]


def assert_counted_skip_report(caplog, manifest: Path, bad: dict[str, str]) -> None:
    """``skipped N of M rows in MANIFEST: kind: count, ...`` with the right numbers."""
    msg = _skip_line(caplog, manifest)
    total = sum(1 for ln in manifest.read_text().splitlines() if ln.strip())
    assert msg.startswith(f"skipped {len(bad)} of {total} rows in {manifest}: "), msg
    kinds: dict[str, int] = {}
    for reason in bad.values():
        kind = {"2 channels (expected 1)": "wrong channel count"}.get(reason, reason.split(" (")[0])
        if reason.startswith("missing label for task"):
            kind = "missing target"
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, n in kinds.items():
        assert f"{kind}: {n}" in msg, (kind, n, msg)


# -- validate ------------------------------------------------------------------------------------
def test_validate_names_every_bad_row_with_its_exact_reason(corpus):
    manifest, _, _, _ = corpus
    res = _cli(["validate", manifest, "--task", VALIDATE_KWARGS["task"], "--channels", "1", "--max-seconds", "30",
                "--no-cache"])
    assert res.exit_code == 1, res.output
    bad = expected_bad("validate")
    assert_every_bad_row_named(res.output, manifest, bad)
    assert f"{len(bad)} bad" in res.output.strip().splitlines()[-1]


# -- probe ---------------------------------------------------------------------------------------
def _probe_args(corpus, model_dir, out: Path, *extra):
    manifest, _, dev, test = corpus
    return ["probe", "--model", model_dir, "--task-manifests", f"{manifest},{dev},{test}", "--task-type", "classify",
            "--target-field", "label", "--out", out, "--epochs", "1", "--cache-dir", out.parent / "cache", *extra]


def test_probe_refuses_bad_rows_before_any_work(corpus, tiny_model_dir, tmp_path):
    manifest = corpus[0]
    res = _cli(_probe_args(corpus, tiny_model_dir, tmp_path / "out"))
    assert res.exit_code == 2, res.output
    assert_every_bad_row_named(res.output, manifest, expected_bad("probe"))
    assert "--skip-bad" in res.output
    assert not (tmp_path / "out" / "results.jsonl").exists()
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), "features extracted before failing"


def test_probe_skip_bad_runs_on_good_rows_and_counts_the_skipped(corpus, tiny_model_dir, tmp_path, caplog):
    manifest = corpus[0]
    caplog.set_level(logging.WARNING)
    res = _cli(_probe_args(corpus, tiny_model_dir, tmp_path / "out", "--skip-bad"))
    assert res.exit_code == 0, res.output
    bad = expected_bad("probe")
    assert_counted_skip_report(caplog, manifest, bad)
    recs = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 1
    total = sum(1 for ln in manifest.read_text().splitlines() if ln.strip())
    assert recs[0]["num_utterances"] == {"train": total - len(bad), "dev": 6, "test": 6}


def test_probe_checks_every_task_before_training_any(corpus, tiny_model_dir, tmp_path):
    """A bad row in the last task of a suite must fail the run before the first task trains,
    not after hours of work on the others."""
    from speechft.probe import run_probe
    from speechft.tasks import user_task

    manifest, _, dev, test = corpus
    good = user_task("good", (dev, dev, test), "classify", "label")
    bad = user_task("bad", (manifest, dev, test), "classify", "label")
    with pytest.raises(ValueError, match="failed validation"):
        run_probe(str(tiny_model_dir), [good, bad], tmp_path / "out", epochs=1, cache_dir=tmp_path / "cache",
                  progress=False)
    assert not (tmp_path / "out" / "results.jsonl").exists(), "task 'good' was trained before 'bad' was checked"


# -- finetune ------------------------------------------------------------------------------------
FT_FAST = dict(batch_seconds=4.0, eval_every=0, checkpoint_every=2, log_every=1, tensorboard=False)


def _finetune_args(corpus, model_dir, out: Path, *extra):
    manifest, _, dev, test = corpus
    return ["finetune", "--model", model_dir, "--task-manifests", f"{manifest},{dev},{test}",
            "--task-type", "classify", "--target-field", "label", "--out", out, "--steps", "2", *extra]


def test_finetune_refuses_bad_rows_before_training(corpus, tiny_model_dir, tmp_path):
    from speechft.finetune import finetune
    from speechft.tasks import user_task

    manifest, _, dev, test = corpus
    task = user_task("user", (manifest, dev, test), "classify", "label")
    with pytest.raises(ValueError) as err:
        finetune(str(tiny_model_dir), task, tmp_path / "ft", steps=2, progress=False, **FT_FAST)
    assert_every_bad_row_named(str(err.value), manifest, expected_bad("finetune"))
    assert not (tmp_path / "ft" / "checkpoints").exists() and not (tmp_path / "ft" / "encoder").exists()


def test_finetune_skip_bad_trains_on_good_rows_and_counts_the_skipped(corpus, tiny_model_dir, tmp_path, caplog):
    from speechft.finetune import finetune
    from speechft.tasks import user_task

    manifest, _, dev, test = corpus
    caplog.set_level(logging.WARNING)
    task = user_task("user", (manifest, dev, test), "classify", "label")
    out = finetune(str(tiny_model_dir), task, tmp_path / "ft", steps=2, skip_bad=True, progress=False, **FT_FAST)
    assert (Path(out) / "encoder" / "config.json").exists()
    assert_counted_skip_report(caplog, manifest, expected_bad("finetune"))


def test_finetune_cli_refuses_or_skips_bad_rows(corpus, tiny_model_dir, tmp_path, caplog):
    manifest = corpus[0]
    res = _cli(_finetune_args(corpus, tiny_model_dir, tmp_path / "a"))
    assert res.exit_code == 2, res.output
    assert_every_bad_row_named(res.output, manifest, expected_bad("finetune"))
    assert not (tmp_path / "a" / "checkpoints").exists()
    caplog.set_level(logging.WARNING)
    res = _cli(_finetune_args(corpus, tiny_model_dir, tmp_path / "b", "--skip-bad"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "encoder" / "config.json").exists()
    assert_counted_skip_report(caplog, manifest, expected_bad("finetune"))


# -- pretrain ------------------------------------------------------------------------------------
PT_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


@pytest.fixture(scope="module")
def pt_config(tmp_path_factory) -> Path:
    import yaml

    cfg = dict(model=PT_MODEL, num_clusters=4, kmeans_max_frames=3000, proj_dim=8, steps=2, lr=1e-3,
               batch_seconds=4.0, max_seconds=1.0, min_seconds=0.2, checkpoint_every=1, log_every=1)
    path = tmp_path_factory.mktemp("pt-cfg") / "pt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pretrain_refuses_bad_rows_before_training(corpus, pt_config, tmp_path):
    manifest = corpus[0]
    res = _cli(["pretrain", "--manifest", manifest, "--config", pt_config, "--out", tmp_path / "pt"])
    assert res.exit_code == 2, res.output
    assert_every_bad_row_named(res.output, manifest, expected_bad("pretrain"))
    assert not (tmp_path / "pt" / "checkpoint.pt").exists() and not (tmp_path / "pt" / "encoder").exists()


def test_pretrain_skip_bad_trains_on_good_rows_and_counts_the_skipped(corpus, pt_config, tmp_path, caplog):
    manifest = corpus[0]
    caplog.set_level(logging.WARNING)
    res = _cli(["pretrain", "--manifest", manifest, "--config", pt_config, "--out", tmp_path / "pt", "--skip-bad"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pt" / "encoder" / "model.safetensors").exists()
    assert_counted_skip_report(caplog, manifest, expected_bad("pretrain"))

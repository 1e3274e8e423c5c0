"""Hugging Face datasets as task data (offline): a save_to_disk DatasetDict and an audio folder built
from FSDD recordings become manifests, and such a folder works as a task for finetune and probe."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from speechft.corpora.common import CorpusError
from speechft.corpora.hf import dataset_manifests, is_hf_dataset, parse_mapping
from speechft.data.manifest import read_manifest

SPLIT_TAKES = {"train": range(5, 9), "validation": range(1, 3), "test": range(0, 1)}
SPEAKERS = ("george", "jackson")


def _examples(fsdd_root, split):
    out = []
    for spk in SPEAKERS:
        for digit in range(3):
            for take in SPLIT_TAKES[split]:
                out.append((fsdd_root / "recordings" / f"{digit}_{spk}_{take}.wav", digit, spk))
    return out


@pytest.fixture(scope="module")
def hf_dir(fsdd_root, tmp_path_factory):
    import datasets

    def split(examples):
        # audio as {bytes, path} cast to Audio, as a user's dataset holds it (encoding arrays would need
        # torchcodec); saved with decoding on, as datasets saves audio by default
        ds = datasets.Dataset.from_dict({"audio": [{"bytes": p.read_bytes(), "path": str(p)} for p, _, _ in examples],
                                         "digit": [d for _, d, _ in examples], "who": [s for _, _, s in examples]})
        ds = ds.cast_column("audio", datasets.Audio(decode=False)).cast_column("audio", datasets.Audio())
        return ds.cast_column("digit", datasets.ClassLabel(names=["zero", "one", "two"]))

    dd = datasets.DatasetDict({s: split(_examples(fsdd_root, s)) for s in SPLIT_TAKES})
    out = tmp_path_factory.mktemp("hf") / "fsdd-hf"
    dd.save_to_disk(str(out))
    return out


def test_save_to_disk_dataset_becomes_manifests(hf_dir, fsdd_root, tmp_path):
    assert is_hf_dataset(hf_dir) and not is_hf_dataset(fsdd_root)
    m = dataset_manifests(hf_dir, out=tmp_path / "conv", columns={"label": "digit", "speaker": "who"})
    rows = {s: read_manifest(p) for s, p in m.items()}
    assert [len(rows[s]) for s in ("train", "dev", "test")] == [24, 12, 6]  # dev <- validation
    r = rows["train"][0]
    assert r.label == "zero" and r.speaker == "george"  # ClassLabel written as its name
    src, _ = sf.read(str(_examples(fsdd_root, "train")[0][0]), dtype="float32")
    got, sr = sf.read(r.audio, dtype="float32")
    assert sr == 16000 and len(got) == pytest.approx(len(src) * 16000 / 8000, abs=2)  # FSDD is 8 kHz
    # converted once: a second call reuses the folder; another mapping is another conversion
    mtime = m["train"].stat().st_mtime_ns
    assert dataset_manifests(hf_dir, out=tmp_path / "conv", columns={"label": "digit", "speaker": "who"})["train"]\
        .stat().st_mtime_ns == mtime
    with pytest.raises(CorpusError, match="no column 'digits' for label"):
        dataset_manifests(hf_dir, out=tmp_path / "x", columns={"label": "digits"})
    with pytest.raises(CorpusError, match="no split 'held-out' for test"):
        dataset_manifests(hf_dir, out=tmp_path / "y", splits={"test": "held-out"})
    assert parse_mapping("label=digit, dev=validation", "--task-columns") == ({"label": "digit"}, {"dev": "validation"})
    with pytest.raises(ValueError, match="unknown key 'lable'"):
        parse_mapping("lable=digit", "--task-columns")


def test_audio_folder_becomes_manifests(fsdd_root, tmp_path):
    root = tmp_path / "af"
    for split in ("train", "validation", "test"):
        (root / split).mkdir(parents=True)
        meta = []
        for p, digit, spk in _examples(fsdd_root, split):
            shutil.copy(p, root / split / p.name)
            meta.append({"file_name": p.name, "label": str(digit), "speaker": spk})
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in meta))
    assert is_hf_dataset(root)
    m = dataset_manifests(root, out=tmp_path / "conv")
    rows = read_manifest(m["test"])
    assert len(rows) == 6 and {r.label for r in rows} == {"0", "1", "2"} and rows[0].speaker in SPEAKERS


def test_hf_dataset_works_as_a_task_for_finetune_and_probe(hf_dir, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from speechft.cli import app

    runner = CliRunner()
    opts = ["--task-manifests", str(hf_dir), "--task-columns", "label=digit", "--task-name", "digits"]
    r = runner.invoke(app, ["finetune", "--model", str(tiny_model_dir), *opts, "--steps", "4", "--out",
                            str(tmp_path / "ft"), "--batch-seconds", "4"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ft" / "encoder" / "config.json").is_file()
    r = runner.invoke(app, ["probe", "--model", str(tmp_path / "ft"), *opts, "--epochs", "1", "--out",
                            str(tmp_path / "probe")])
    assert r.exit_code == 0, r.output
    rec = [json.loads(l) for l in (tmp_path / "probe" / "results.jsonl").read_text().splitlines()][0]
    assert rec["task"] == "digits" and 0.0 <= rec["value"] <= 1.0
    # a bad mapping: one line naming the column, exit 2
    r = runner.invoke(app, ["probe", "--model", str(tmp_path / "ft"), "--task-manifests", str(hf_dir),
                            "--task-columns", "label=digitz", "--out", str(tmp_path / "p2")])
    assert r.exit_code == 2 and "digitz" in r.output

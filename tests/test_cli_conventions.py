"""Command-line conventions (DESIGN.md §6, issue 17): one default model, the same options in every verb,
one ``error:`` line and exit 2 for a user mistake, local-looking paths never sent to the hub, run folders
accepted as models, one user-task parser, ``--device`` validated first, failed commands leave nothing.

Every command here fails (or is stopped) before any real work, except the few merges and one analysis
of a handful of short clips; library entry points are replaced by recorders where only the arguments
the command passes matter.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from conftest import sine

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub

VERBS_WITH_DEVICE = ("probe", "finetune", "sweep", "analyze", "reproduce", "study", "pretrain")


def cli(*args, cwd: Path | None = None):
    from speechft.cli import app

    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def error_lines(res) -> list[str]:
    return [line for line in res.output.splitlines() if line.startswith("error:")]


def assert_one_error(res, *needles: str) -> str:
    """Exit 2, exactly one ``error:`` line holding every needle, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    lines = error_lines(res)
    assert len(lines) == 1, res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def label_task(tmp_path_factory) -> dict:
    """A user task whose manifests have a ``label`` and a ``speaker`` but no ``text``."""
    d = tmp_path_factory.mktemp("labels")
    paths = {}
    for split in ("train", "dev", "test"):
        rows = []
        for i, lab in enumerate(["yes", "no", "yes", "no"]):
            wav = d / f"{split}-{i}.wav"
            sf.write(wav, sine(0.3, freq=200 + 100 * i, seed=i), 16000)
            rows.append({"id": f"{split}-{i}", "audio": str(wav), "label": lab, "speaker": f"s{i % 2}",
                         "duration": 0.3})
        paths[split] = d / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths["csv"] = ",".join(str(paths[s]) for s in ("train", "dev", "test"))
    return paths


@pytest.fixture
def record(monkeypatch):
    """Replace ``module.attr`` by a recorder of its calls (returning ``result``)."""

    def install(module, attr, result=None):
        calls = []

        def fake(*args, **kwargs):
            calls.append((args, kwargs))
            if isinstance(result, BaseException):
                raise result
            return result(*args, **kwargs) if callable(result) else result

        monkeypatch.setattr(module, attr, fake)
        return calls

    return install


# -- 1. one default model ------------------------------------------------------------------------------
def test_finetune_without_model_uses_speechft_tiny(tmp_path, record):
    import speechft.finetune as ft

    calls = record(ft, "finetune", result=lambda *a, **k: Path(a[2]))
    res = cli("finetune", "--task", "lite-asr", "--out", tmp_path / "R")
    assert res.exit_code == 0, res.output
    assert calls[0][0][0] == "speechft-tiny" and calls[0][0][1] == "lite-asr"


def test_probe_merge_sweep_analyze_default_to_speechft_tiny(tmp_path, record, tiny_model_dir):
    import speechft.analysis.run as arun
    import speechft.merge.sweep as msweep
    import speechft.probe as probe

    pcalls = record(probe, "run_probe", result=[])
    record(probe, "write_reports", result={"table": "", "summary": tmp_path / "s.md", "plot": None})
    assert cli("probe", "--tasks", "lite-ks", "--out", tmp_path / "p").exit_code == 0
    assert pcalls[0][0][0] == "speechft-tiny"

    res = cli("merge", "--finetuned", "speechft-tiny-random", "--out", tmp_path / "m")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m" / "speechft_card.json").read_text())["pretrained"]["ref"] == "speechft-tiny"

    scalls = record(msweep, "run_sweep", result=msweep.SweepResult([], None, None, None))
    assert cli("sweep", "--finetuned", "speechft-tiny-random", "--tasks", "lite-ks", "--out", tmp_path / "s",
               ).exit_code == 0
    assert scalls[0][0][0] == "speechft-tiny"

    acalls = record(arun, "analyze", result=[])
    manifest = tmp_path / "a.jsonl"
    manifest.write_text("")
    assert cli("analyze", "--models", tiny_model_dir, "--manifest", manifest, "--out", tmp_path / "a").exit_code == 0
    assert acalls[0][0][0] == ["speechft-tiny", str(tiny_model_dir)]


def test_required_options_are_marked_and_only_those():
    from speechft.cli import app
    from typer.main import get_command

    group = get_command(app)
    required = {name: sorted(p.opts[0] for p in cmd.params
                             if getattr(p, "required", False) and p.opts[0].startswith("--"))
                for name, cmd in group.commands.items()}
    assert required["finetune"] == ["--out"]
    assert required["merge"] == ["--finetuned", "--out"]
    assert required["sweep"] == ["--finetuned", "--out"]
    assert required["analyze"] == ["--manifest", "--out"]
    assert required["pretrain"] == ["--out"]
    assert required["reproduce"] == ["--out"] and required["study"] == ["--out"]


# -- 2. analyze takes its models as a list ---------------------------------------------------------------
def test_analyze_models_listed_after_the_option_or_as_arguments(tmp_path, record, tiny_model_dir):
    import speechft.analysis.run as arun

    calls = record(arun, "analyze", result=[])
    manifest = tmp_path / "a.jsonl"
    manifest.write_text("")
    m = str(tiny_model_dir)
    for i, args in enumerate([["--models", "speechft-tiny", m, "speechft-tiny-random"],
                              ["speechft-tiny", m, "speechft-tiny-random"],
                              ["--models", "speechft-tiny,%s" % m, "--models", "speechft-tiny-random"]]):
        res = cli("analyze", *args, "--manifest", manifest, "--out", tmp_path / f"a{i}")
        assert res.exit_code == 0, res.output
        assert calls[-1][0][0] == ["speechft-tiny", m, "speechft-tiny-random"]


# -- 3. a run folder stands for its encoder --------------------------------------------------------------
def test_a_run_folder_is_read_as_its_encoder(tmp_path, tiny_model_dir, caplog):
    from speechft.models.io import resolve_ref

    run = tmp_path / "runs" / "ft-pr"
    shutil.copytree(tiny_model_dir, run / "encoder")
    (run / "config.yaml").write_text("run: {}\n")
    with caplog.at_level(logging.INFO, logger="speechft"):
        assert resolve_ref(str(run)).path == run / "encoder"
    assert "using its encoder" in caplog.text
    res = cli("merge", "--pretrained", tiny_model_dir, "--finetuned", run, "--out", tmp_path / "merged")
    assert res.exit_code == 0, res.output
    unfinished = tmp_path / "runs" / "ft-half"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("run: {}\n")
    res = cli("merge", "--pretrained", tiny_model_dir, "--finetuned", unfinished, "--out", tmp_path / "m2")
    assert_one_error(res, "run folder without encoder/")
    assert not (tmp_path / "m2").exists()


# -- 4. one user-task parser -------------------------------------------------------------------------------
def test_user_task_type_follows_the_field_and_the_manifest(label_task):
    from speechft.commands._common import user_task_from_options

    t = user_task_from_options(label_task["csv"], None, "mine", None, None)
    assert (t.kind, t.target_field, t.metric) == ("classify", "label", "accuracy")
    t = user_task_from_options(label_task["csv"], None, "mine", "speaker", None)
    assert (t.kind, t.target_field) == ("classify", "speaker")
    with pytest.raises(ValueError) as e:
        user_task_from_options(label_task["csv"], "ctc", "mine", None, None)
    assert str(e.value) == (f"{label_task['train']} has no 'text' field; pass --target-field label "
                            "--task-type classify?")
    with pytest.raises(ValueError, match="describe.* a user task: pass --task-manifests"):
        user_task_from_options(None, "classify", "mine", None, None)
    assert user_task_from_options(None, None, "mine", None, None) is None


def test_finetune_probe_and_sweep_read_a_user_task_the_same_way(tmp_path, record, label_task):
    import speechft.finetune as ft
    import speechft.merge.sweep as msweep
    import speechft.probe as probe

    fcalls = record(ft, "finetune", result=lambda *a, **k: Path(a[2]))
    pcalls = record(probe, "run_probe", result=[])
    record(probe, "write_reports", result={"table": "", "summary": tmp_path / "s.md", "plot": None})
    scalls = record(msweep, "run_sweep", result=msweep.SweepResult([], None, None, None))
    common = ["--task-manifests", label_task["csv"], "--task-name", "digits"]
    assert cli("finetune", *common, "--out", tmp_path / "f").exit_code == 0
    assert cli("probe", *common, "--out", tmp_path / "p").exit_code == 0
    res = cli("sweep", "--finetuned", "speechft-tiny-random", "--tasks", "digits", *common, "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    tasks = [fcalls[0][0][1], pcalls[0][0][1][0], scalls[0][0][3][0]]
    assert all(t == tasks[0] for t in tasks) and tasks[0].name == "digits" and tasks[0].kind == "classify"


def test_a_missing_target_field_is_one_line_with_a_hint(tmp_path, label_task):
    for verb in ("finetune", "probe"):
        res = cli(verb, "--task-manifests", label_task["csv"], "--task-type", "ctc", "--out", tmp_path / verb)
        line = assert_one_error(res, "has no 'text' field", "--target-field label --task-type classify")
        assert str(label_task["train"]) in line and len(res.output.splitlines()) == 1


# -- 5. references: local-looking paths never reach the hub, short names get "did you mean" ---------------
def test_local_looking_references_never_reach_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    from speechft.models.io import resolve_ref
    from speechft.utils.names import UnknownNameError

    def no_hub(*a, **k):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    for ref in ("runs/nothere", "./nothere", "~/nothere-speechft", "/nothere/model", "a/b/c", "runs/x/"):
        with pytest.raises(FileNotFoundError, match="no such directory"):
            resolve_ref(ref)
    with pytest.raises(UnknownNameError, match="did you mean speechft-tiny"):
        resolve_ref("speechft-tinny")
    assert resolve_ref("facebook/hubert-base-ls960").kind == "hub"
    for verb, opt in (("probe", "--model"), ("finetune", "--model"), ("merge", "--finetuned"),
                      ("sweep", "--finetuned"), ("analyze", "--models"), ("reproduce", "--model"),
                      ("pretrain", "--init")):
        extra = {"finetune": ["--task", "lite-ks"], "sweep": ["--tasks", "lite-ks"],
                 "analyze": ["speechft-tiny", "--manifest", "m.jsonl"], "pretrain": ["--quick"]}.get(verb, [])
        res = cli(verb, opt, "runs/nothere", *extra, "--out", "o")
        assert_one_error(res, "runs/nothere", "no such directory")
        res = cli(verb, opt, "speechft-tinny", *extra, "--out", "o")
        assert_one_error(res, "unknown model 'speechft-tinny'; did you mean speechft-tiny")
        assert not (tmp_path / "o").exists()


# -- 6. --device -------------------------------------------------------------------------------------------
def test_resolve_device():
    from speechft.utils.device import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device gpu: not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            resolve_device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_every_verb_that_runs_a_model_has_the_same_device_option():
    from speechft.cli import app
    from typer.main import get_command

    from speechft.utils.device import HELP

    group = get_command(app)
    for verb in VERBS_WITH_DEVICE:
        opt = [p for p in group.commands[verb].params if "--device" in p.opts]
        assert opt and opt[0].default == "auto" and opt[0].help == HELP, verb


def test_probe_device_reaches_the_probe(tmp_path, record):
    import speechft.probe as probe

    calls = record(probe, "run_probe", result=[])
    record(probe, "write_reports", result={"table": "", "summary": tmp_path / "s.md", "plot": None})
    assert cli("probe", "--tasks", "lite-ks", "--device", "cpu", "--out", tmp_path / "p").exit_code == 0
    assert calls[0][1]["device"] == "cpu"
    assert "SPEECHFT_DEVICE" not in os.environ  # published for the command only


# -- 7. analyze: other widths, existing --out ----------------------------------------------------------------
def test_analyze_other_hidden_size_and_existing_out(tmp_path, tiny_model_dir, label_task, caplog):
    out = tmp_path / "a"
    with caplog.at_level(logging.WARNING):
        res = cli("analyze", "--models", "speechft-tiny", tiny_model_dir, "--manifest", label_task["train"],
                  "--out", out, "--alphas", "0,1")
    assert res.exit_code == 0, (res.output, res.exception)
    assert "hidden size 32 vs 256" in caplog.text
    kinds = {json.loads(line)["kind"] for line in (out / "analysis.jsonl").read_text().splitlines()}
    assert kinds == {"similarity"}
    res = cli("analyze", "--models", "speechft-tiny", tiny_model_dir, "--manifest", label_task["train"], "--out", out)
    assert_one_error(res, "already exists and is not empty", "--overwrite")
    assert (out / "analysis.jsonl").exists()


# -- 8. the shipped models merge ------------------------------------------------------------------------------
def test_the_two_shipped_models_merge_either_way(tmp_path):
    from safetensors import safe_open

    for i, (a, b) in enumerate([("speechft-tiny", "speechft-tiny-random"), ("speechft-tiny-random", "speechft-tiny")]):
        res = cli("merge", "--pretrained", a, "--finetuned", b, "--out", tmp_path / f"m{i}")
        assert res.exit_code == 0, res.output
        with safe_open(str(tmp_path / f"m{i}" / "model.safetensors"), framework="pt") as f:
            assert ("masked_spec_embed" in f.keys()) == (a == "speechft-tiny")


# -- 9. failed commands leave nothing behind -------------------------------------------------------------------
def test_a_failed_command_removes_what_it_created(tmp_path, label_task):
    bad = tmp_path / "bad"
    bad.mkdir()
    rows = [json.loads(line) for line in label_task["train"].read_text().splitlines()]
    for r in rows:
        r["audio"] = str(tmp_path / "gone" / Path(r["audio"]).name)
    (bad / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifests = f"{bad / 'train.jsonl'},{label_task['dev']},{label_task['test']}"
    out = tmp_path / "runs" / "ft"  # runs/ too is made by the command
    res = cli("finetune", "--model", "speechft-tiny", "--task-manifests", manifests, "--out", out, "--steps", "1")
    assert res.exit_code == 2 and "missing file" in res.output, res.output
    assert not (tmp_path / "runs").exists()
    existing = tmp_path / "mine"
    (existing / "keep.txt").parent.mkdir()
    (existing / "keep.txt").write_text("x")
    res = cli("finetune", "--task-manifests", manifests, "--out", existing, "--steps", "1")
    assert res.exit_code == 2
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]  # no stray config.yaml


def test_convert_names_a_file_that_is_no_checkpoint(tmp_path):
    f = tmp_path / "random.pt"
    f.write_bytes(os.urandom(4096).replace(b"PK", b"pk").lstrip(b"\x80") or b"x")
    res = cli("convert", f, "--out", tmp_path / "c")
    line = assert_one_error(res, "is not a checkpoint")
    assert "--allow-unsafe-pickle" not in line and not (tmp_path / "c").exists()


# -- 10. help and defaults ----------------------------------------------------------------------------------------
def test_help_and_defaults_agree_across_verbs():
    from speechft.cli import app
    from typer.main import get_command

    group = get_command(app)

    def opt(verb, name):
        return next(p for p in group.commands[verb].params if name in p.opts)

    assert opt("analyze", "--limit").default == opt("probe", "--limit").default == opt("sweep", "--limit").default == 0
    assert not [p for p in group.commands["analyze"].params if "--batch-seconds" in p.opts]  # inference batches differ
    for verb in ("finetune", "probe", "sweep"):
        assert opt(verb, "--target-field").help == opt("probe", "--target-field").help
        assert opt(verb, "--task-type").default is None
    helps = " ".join(p.help or "" for cmd in group.commands.values() for p in cmd.params)
    assert "(default: text for ctc, label)" not in helps


def test_bad_rows_message_names_the_option_only(tmp_path, label_task):
    from speechft.data.validate import DataValidationError, load_checked_rows

    m = tmp_path / "m.jsonl"
    m.write_text(label_task["train"].read_text() + json.dumps({"id": "x", "audio": "nowhere.wav"}) + "\n")
    with pytest.raises(DataValidationError) as e:
        load_checked_rows(m)
    assert "pass --skip-bad to use" in str(e.value) and "skip_bad=True" not in str(e.value)


# -- 11. every verb: a user mistake is one line and exit 2, an internal error keeps its traceback ---------------
def _mistakes(tmp_path: Path, label_task: dict) -> list:
    """(verb, kind of mistake, arguments) for every verb and every mistake it can meet."""
    nothere = str(tmp_path / "nothere")
    m, lt = str(label_task["train"]), label_task["csv"]
    ok = {"probe": ["--tasks", "lite-ks"], "finetune": ["--task", "lite-ks"],
          "sweep": ["--finetuned", "speechft-tiny-random", "--tasks", "lite-ks"],
          "analyze": ["--models", "speechft-tiny", "speechft-tiny-random", "--manifest", m],
          "reproduce": [], "study": [], "pretrain": ["--manifest", m]}
    with_model = {  # the model option last but one: the wrong reference follows it
        "probe": ["--tasks", "lite-ks", "--model"], "finetune": ["--task", "lite-ks", "--model"],
        "merge": ["--finetuned"], "sweep": ["--tasks", "lite-ks", "--finetuned"],
        "analyze": ["--manifest", m, "--models", "speechft-tiny"], "reproduce": ["--model"],
        "pretrain": ["--manifest", m, "--init"]}
    cases = []
    for verb, args in with_model.items():
        cases += [(verb, "model", [*args, "speechft-tinny"]), (verb, "path", [*args, nothere])]
    for verb, args in (("probe", ["--tasks", "lite-kss"]), ("finetune", ["--task", "lite-kss"]),
                       ("sweep", ["--finetuned", "speechft-tiny-random", "--tasks", "lite-kss"]),
                       ("validate", [m, "--task", "lite-kss"])):
        cases.append((verb, "task", args))
    for verb, args in (("analyze", ["--models", "speechft-tiny", "speechft-tiny-random", "--manifest", nothere]),
                       ("pretrain", ["--manifest", nothere]), ("validate", [nothere]), ("convert", [nothere]),
                       ("reproduce", ["--config", nothere]), ("study", ["--config", nothere]),
                       ("probe", ["--task-manifests", f"{nothere},{m},{m}"])):
        cases.append((verb, "path", args))
    for verb in VERBS_WITH_DEVICE:
        cases.append((verb, "device", [*ok[verb], "--device", "gpu"]))
        if not torch.cuda.is_available():
            cases.append((verb, "device", [*ok[verb], "--device", "cuda"]))
    for verb in ("probe", "finetune", "sweep"):
        extra = ["--finetuned", "speechft-tiny-random"] if verb == "sweep" else []
        cases.append((verb, "field", [*extra, "--task-manifests", lt, "--task-type", "ctc"]))
        cases.append((verb, "field", [*extra, "--task-manifests", lt, "--target-field", "text"]))
    return cases


def test_every_verb_reports_a_user_mistake_in_one_line(tmp_path, label_task):
    wanted = {"model": "unknown model", "path": "nothere", "task": "unknown task", "device": "--device",
              "field": "has no 'text' field"}
    seen = set()
    for i, (verb, kind, args) in enumerate(_mistakes(tmp_path, label_task)):
        out = tmp_path / "outs" / f"{i}"
        res = cli(verb, *args, *([] if verb == "validate" else ["--out", out]))
        try:
            assert_one_error(res, wanted[kind])
        except AssertionError as e:
            raise AssertionError(f"speechft {verb} {' '.join(map(str, args))}: {e}") from None
        assert not out.exists() and not (tmp_path / "outs").exists(), (verb, args)
        seen.add((verb, kind))
    assert {v for v, _ in seen} >= {"probe", "finetune", "merge", "sweep", "analyze", "reproduce", "study",
                                    "pretrain", "validate", "convert"}


def test_an_internal_error_keeps_its_traceback(tmp_path, record):
    import speechft.merge as merge

    record(merge, "merge_models", result=RuntimeError("a bug"))
    res = cli("merge", "--finetuned", "speechft-tiny-random", "--out", tmp_path / "m")
    assert isinstance(res.exception, RuntimeError) and not error_lines(res)

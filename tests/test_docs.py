"""Docs as tests: every ``speechft ...`` command in the code blocks of README.md and docs/*.md runs.

Each file's commands run in order, in one fresh working folder per file (so later commands find
what earlier ones wrote), on one fresh data home (``SPEECHFT_HOME``), as real processes; each must
exit 0. Long runs are cut to quick size by the explicit OVERRIDES table below (keyed by file and the
command exactly as the doc shows it; an entry that matches no command is an error, so the table
cannot go stale silently).

Commands that need what CI does not have are marked in the doc and only checked at ``--help`` level
(the verb and every option name exist): a trailing comment ``# needs: corpus`` (a real corpus or your
own data), ``# needs: gpu``, ``# needs: network`` (a hub download), or an HTML comment
``<!-- needs: ... -->`` on the line before a code block for all of its commands. A usage synopsis
(``[--option VALUE]`` patterns) is marked ``<!-- synopsis -->`` and checked the same way. The fast
test below checks every command, runnable or not, at that level.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

PROJECT = Path(__file__).resolve().parents[1]
DOCS = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
NEEDS = ("corpus", "gpu", "network")
FENCE = re.compile(r"^```")
LAUNCHED = re.compile(r"(?:^|\s)-m\s+speechft\.cli\s+")  # accelerate launch / torchrun ... -m speechft.cli VERB


@dataclasses.dataclass
class Command:
    file: str  # relative to the project
    line: int
    text: str  # the command as the doc shows it (continuations joined, comment removed)
    argv: list  # after `speechft`
    needs: tuple  # what it needs that CI lacks; empty = it runs
    launcher: tuple = ()  # ("torchrun", "--nproc_per_node", "2") for `torchrun ... -m speechft.cli VERB`


def _marks(comment: str) -> tuple:
    m = re.search(r"needs:\s*([a-z, ]+)", comment)
    found = tuple(w.strip() for w in m.group(1).split(",") if w.strip()) if m else ()
    unknown = [w for w in found if w not in NEEDS]
    assert not unknown, f"unknown 'needs:' marker(s) {unknown} (known: {', '.join(NEEDS)})"
    return found


def collect(path: Path) -> list[Command]:
    lines = path.read_text().splitlines()
    out, i, before = [], 0, ""
    rel = str(path.relative_to(PROJECT))
    while i < len(lines):
        if not FENCE.match(lines[i]):
            if lines[i].strip():
                before = lines[i].strip()
            i += 1
            continue
        lang, start = lines[i][3:].strip(), i + 1
        j = start
        while j < len(lines) and not FENCE.match(lines[j]):
            j += 1
        block_needs = _marks(before) if before.startswith("<!--") else ()
        synopsis = before.startswith("<!--") and "synopsis" in before
        if lang in ("", "bash", "sh", "shell", "console"):
            k = start
            while k < j:
                first, text = k, lines[k]
                while text.rstrip().endswith("\\") and k + 1 < j:
                    k += 1
                    text = text.rstrip()[:-1] + " " + lines[k].strip()
                k += 1
                cmd = _command(rel, first + 1, text.strip(), block_needs, synopsis)
                if cmd is not None:
                    out.append(cmd)
        before, i = "", j + 1
    return out


def _command(rel: str, line: int, text: str, block_needs: tuple, synopsis: bool) -> Optional[Command]:
    code, _, comment = text.partition(" #") if not text.startswith("#") else ("", "", text)
    code = code.strip()
    launcher = ()
    if LAUNCHED.search(code):
        head, code = LAUNCHED.split(code, maxsplit=1)
        launcher, code = tuple(shlex.split(head)), "speechft " + code
    if not code.startswith("speechft "):
        return None
    needs = tuple(dict.fromkeys(block_needs + _marks(comment) + (("synopsis",) if synopsis else ())))
    argv = shlex.split(code)[1:] if not synopsis else code.split()[1:]
    return Command(rel, line, " ".join(code.split()), argv, needs, launcher)


# -- help-level validation -----------------------------------------------------------------------
def _cli():
    import typer

    from speechft.cli import app

    return typer.main.get_command(app)


def _option_names(cmd) -> set:
    names = set()
    for p in cmd.params:
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    return names


def help_level_problems(c: Command) -> list[str]:
    group = _cli()
    args = [a for a in c.argv if a not in ("-v", "--verbose") and not re.fullmatch(r"-v+", a)]
    if not args or args[0] not in group.commands:
        return [f"unknown verb {args[0] if args else '(none)'!r} (verbs: {', '.join(sorted(group.commands))})"]
    verb, cmd, rest = args[0], group.commands[args[0]], args[1:]
    while hasattr(cmd, "commands"):  # a verb with subcommands: speechft cache list
        if not rest or rest[0] not in cmd.commands:
            return [f"{verb}: unknown subcommand {rest[0] if rest else '(none)'!r} (known: {', '.join(sorted(cmd.commands))})"]
        verb, cmd, rest = f"{verb} {rest[0]}", cmd.commands[rest[0]], rest[1:]
    known = _option_names(cmd) | _option_names(group)
    used = []
    for a in rest:
        for tok in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", a) if "synopsis" in c.needs else [a]:
            if tok.startswith("-") and not re.fullmatch(r"-\d.*", tok):
                used.append(tok.split("=", 1)[0])
    return [f"{verb} has no option {u}" for u in used if u not in known]


ALL = [c for doc in DOCS for c in collect(doc)]


def test_every_documented_command_exists_with_its_options():
    assert len(ALL) > 40 and {c.file for c in ALL} >= {"README.md", "docs/finetune.md", "docs/probe.md"}
    problems = [f"{c.file}:{c.line}: {c.text}\n    {p}" for c in ALL for p in help_level_problems(c)]
    assert not problems, "\n".join(problems)


# -- running them ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Override:
    why: str
    set: dict = dataclasses.field(default_factory=dict)  # option -> new value (None: drop the option)
    add: tuple = ()  # extra arguments
    setup: Optional[Callable[[Path], None]] = None  # run in the working folder first
    help_only: bool = False  # checked at --help level only (why says what runs it instead)

    def apply(self, argv: list) -> list:
        out, i = [], 0
        while i < len(argv):
            a = argv[i]
            if a in self.set:
                if self.set[a] is not None:
                    out += [a, self.set[a]]
                i += 2
                continue
            out.append(a)
            i += 1
        return out + list(self.add)


def user_manifests(cwd: Path, names=("train", "dev", "test")) -> None:
    """train/dev/test.jsonl of short generated tones with a ``label`` (two classes)."""
    import numpy as np
    import soundfile as sf

    for split, n in zip(names, (12, 4, 4)):
        rows = []
        for k in range(n):
            label = ("low", "high")[k % 2]
            t = np.arange(int(16000 * (0.5 + 0.05 * k))) / 16000
            wav = 0.3 * np.sin(2 * np.pi * (220 if label == "low" else 880) * t)
            sf.write(str(cwd / f"{split}{k}.wav"), wav.astype(np.float32), 16000)
            rows.append({"id": f"{split}{k}", "audio": f"{split}{k}.wav", "label": label})
        (cwd / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


QUICK_FT = Override("400 steps on default-size lite data: quick data, 2 steps", add=("--quick", "--steps", "2"))
QUICK_PROBE = Override("the default suite at default size: one quick task, one epoch",
                       add=("--quick", "--tasks", "lite-ks", "--epochs", "1"))

OVERRIDES: dict[tuple[str, str], Override] = {
    # README.md
    ("README.md", "speechft finetune --task lite-asr --out runs/ft-stable"): QUICK_FT,
    ("README.md", "speechft finetune --task lite-asr --recipe regular --out runs/ft-regular"): QUICK_FT,
    ("README.md", "speechft probe --model fbank,speechft-tiny,runs/speech-ft --out runs/probe"): QUICK_PROBE,
    ("README.md", "speechft sweep --pretrained speechft-tiny --finetuned runs/ft-stable/encoder --alphas "
                  "0,0.1,0.25,0.5,0.75,1 --tasks lite-asr,lite-sid,fsdd-ks --out runs/sweep --select mean-normalized"):
        Override("6 α x 3 tasks at default size (fsdd-ks needs the FSDD corpus): 3 α, 2 quick tasks, one epoch",
                 set={"--alphas": "0,0.25,1", "--tasks": "lite-asr,lite-sid"}, add=("--quick", "--epochs", "1")),
    ("README.md", "speechft analyze --models speechft-tiny runs/ft-regular/encoder runs/speech-ft --manifest "
                  "~/.cache/speechft/lite/lite-asr/test.jsonl --out runs/analysis"):
        Override("default-size lite data (the quick start prepared the quick size): its quick test split, 20 rows",
                 set={"--manifest": "~/.cache/speechft/lite-quick/lite-asr/test.jsonl"}, add=("--limit", "20")),
    # The paper's loop: 20 minutes at its size; the CI-sized `reproduce --quick` (2 minutes) is what
    # `make demo-quick` runs in .ci/run (checked below), so it is not run a second time here.
    ("README.md", "speechft reproduce --out runs/repro"): Override("= make demo at full size", help_only=True),
    ("README.md", "speechft reproduce --quick --out runs/smoke"): Override("= make demo-quick (.ci/run)",
                                                                          help_only=True),
    # docs/finetune.md
    ("docs/finetune.md", "speechft finetune --model speechft-tiny --task lite-asr --quick --out runs/ft-quick"):
        Override("40 steps: 2", add=("--steps", "2")),
    **{("docs/finetune.md", f"speechft finetune --model speechft-tiny --task lite-asr {rest}"): QUICK_FT for rest in (
        "--out runs/ft-stable", "--recipe regular --out runs/ft-regular",
        "--recipe l2sp --l2sp-lambda 1.0 --out runs/ft-l2sp", "--recipe lora --lora-rank 8 --lr 1e-3 --out runs/ft-lora",
        "--recipe dora --lora-rank 8 --lr 1e-3 --out runs/ft-dora")},
    ("docs/finetune.md", "speechft finetune --model speechft-tiny --task lite-asr --save-every 50 --out runs/ft-early"):
        Override("400 steps keeping every 50th: quick data, 4 steps keeping every 2nd", set={"--save-every": "2"},
                 add=("--quick", "--steps", "4")),
    ("docs/finetune.md", "speechft finetune --model speechft-tiny --task my-commands --task-manifests "
                         "train.jsonl,dev.jsonl,test.jsonl --task-type classify --target-field label --out runs/ft-mine"):
        Override("your own manifests: generated ones, 2 steps", setup=user_manifests, add=("--steps", "2")),
    ("docs/finetune.md", "speechft finetune --model speechft-tiny --task lite-asr --out runs/ddp"): QUICK_FT,  # torchrun
    # docs/data.md
    ("docs/data.md", "speechft validate train.jsonl dev.jsonl test.jsonl --task lite-ks"):
        Override("your own manifests: generated ones", setup=user_manifests),
    # docs/merge.md
    ("docs/merge.md", "speechft finetune --task lite-pr --out runs/ft-pr"): QUICK_FT,
    ("docs/merge.md", "speechft finetune --task lite-ks --out runs/ft-ks"): QUICK_FT,
    ("docs/merge.md", "speechft sweep --pretrained speechft-tiny --finetuned runs/ft-pr --alphas 0,0.1,0.25,0.5,0.75,1 "
                      "--tasks lite-pr,lite-sid,lite-ks,lite-style --out runs/sweep-pr --select "
                      "ft-task:lite-pr,max-drop:2% --quick"):
        Override("6 α x 4 tasks (~1 min): 3 α, 2 tasks, one epoch", set={"--alphas": "0,0.25,1",
                 "--tasks": "lite-pr,lite-ks"}, add=("--epochs", "1")),
    # docs/pretrain.md
    ("docs/pretrain.md", "speechft prepare pretrain-lite --hours 3 --seed 0 --out data/pretrain-lite"):
        Override("3 h of synthesis (many minutes): 0.02 h", set={"--hours": "0.02"}),
    # docs/probe.md
    ("docs/probe.md", "speechft probe --model speechft-tiny --out runs/probe"): QUICK_PROBE,
    ("docs/probe.md", "speechft probe --model fbank --out runs/probe"): QUICK_PROBE,
    ("docs/probe.md", "speechft probe --model fbank,speechft-tiny,speechft-tiny-random --tasks "
                      "lite-pr,lite-sid,fsdd-ks --seeds 3 --out runs/probe"):
        Override("default-size data, 3 seeds (fsdd-ks needs the FSDD corpus): 2 quick tasks, 2 seeds, one epoch",
                 set={"--tasks": "lite-pr,lite-sid", "--seeds": "2"}, add=("--quick", "--epochs", "1")),
    ("docs/probe.md", "speechft probe --model speechft-tiny --out runs/mine --task-manifests "
                      "train.jsonl,dev.jsonl,test.jsonl --task-type classify --task-name accent --target-field label"):
        Override("your own manifests: generated ones, one epoch", setup=user_manifests, add=("--epochs", "1")),
}


def _run_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SPEECHFT_LOG",)}
    return {**env, "SPEECHFT_HOME": str(home), "TQDM_DISABLE": "1"}


def _expand(argv: list, home: Path, cwd: Path) -> list:
    out = []
    for a in argv:
        a = a.replace("~/.cache/speechft", str(home))
        if any(ch in a for ch in "*?["):
            hits = sorted(glob.glob(a if os.path.isabs(a) else str(cwd / a)))
            assert hits, f"{a}: matches no file"
            out += hits
        else:
            out.append(a)
    return out


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    return tmp_path_factory.mktemp("docs-home")


def test_reproduce_quick_runs_in_ci():
    """The README's `speechft reproduce --quick` is checked at --help level here because CI runs it anyway."""
    make = (PROJECT / "Makefile").read_text()
    assert re.search(r"^demo-quick:.*\n\t\S*speechft reproduce --quick --out ", make, re.M), "Makefile demo-quick"
    assert re.search(r"^make demo-quick\b", (PROJECT / ".ci" / "run").read_text(), re.M), ".ci/run runs demo-quick"


def test_overrides_match_documented_commands():
    texts = {(c.file, c.text) for c in ALL}
    stale = [k for k in OVERRIDES if k not in texts]
    assert not stale, "overrides for commands no doc shows (update the table):\n" + "\n".join(map(str, stale))
    marked = [k for k in OVERRIDES if any(c.needs for c in ALL if (c.file, c.text) == k)]
    assert not marked, f"overrides for commands marked 'needs:' (never run): {marked}"


@pytest.mark.slow
@pytest.mark.parametrize("doc", [str(d.relative_to(PROJECT)) for d in DOCS])
def test_documented_commands_run(doc, data_home, tmp_path):
    cmds = [c for c in ALL if c.file == doc]
    if not cmds:
        pytest.skip(f"{doc} has no speechft commands")
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "configs").symlink_to(PROJECT / "configs")  # the docs run from the repository root
    env, timings, problems = _run_env(data_home), [], []
    for c in cmds:
        ov = OVERRIDES.get((c.file, c.text))
        if c.needs or (ov and ov.help_only):
            problems += [f"{c.file}:{c.line}: {c.text}\n    {p}" for p in help_level_problems(c)]
            continue
        if ov and ov.setup:
            ov.setup(cwd)
        argv = _expand(ov.apply(c.argv) if ov else c.argv, data_home, cwd)
        launch = [sys.executable]
        if c.launcher:
            assert c.launcher[0] == "torchrun", f"{c.file}:{c.line}: only torchrun launches run here: {c.launcher}"
            launch += ["-m", "torch.distributed.run", *c.launcher[1:]]
        t0 = time.time()
        res = subprocess.run([*launch, "-m", "speechft.cli", *argv], cwd=cwd, env=env, capture_output=True,
                             text=True, timeout=900)
        timings.append((time.time() - t0, c.text))
        if res.returncode != 0:
            problems.append(f"{c.file}:{c.line}: {c.text}\n    ran: {shlex.join([*c.launcher, 'speechft', *argv])}\n    exit "
                            f"{res.returncode}:\n{(res.stdout + res.stderr)[-2500:]}")
            break  # later commands build on this one
    print(f"\n{doc}: {sum(t for t, _ in timings):.0f} s in {len(timings)} commands")
    for t, text in sorted(timings, reverse=True)[:5]:
        print(f"  {t:5.1f} s  {text}")
    assert not problems, "\n".join(problems)

"""scripts/publish_report.py: the README block is the run's own text, for demo and study reports."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("publish_report", ROOT / "scripts" / "publish_report.py")
publish = importlib.util.module_from_spec(spec)
spec.loader.exec_module(publish)

STUDY = """# speechft study report

Pre-trained model **m**.

## Summary

| scenario | method | Δ |
|---|---|---|
| content (lite-asr) | regular FT | +7.5 [+5.7, +9.8] |

Legend line.

### The paper's figures, for reference

| (paper) | HuBERT |
|---|---|

## Timings

3 jobs on 2 worker process(es) x 1 torch thread(s) each.

| stage | jobs | seconds (sum) |
|---|---|---|
| **wall clock** (first start to last end) | | 600 (10.0 min) |

## Environment

speechft 0.1.0, 2 CPU cores.
"""

DEMO = """# speechft reproduce report

Model m.

## Results

| model | score |
|---|---|
| θ₀ | 500 |

## What the numbers show

- nothing yet.
"""


def _readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- demo-report:start -->\nold demo\n<!-- demo-report:end -->\nmiddle\n"
                      "<!-- study-summary:start -->\nold study\n<!-- study-summary:end -->\nend\n")
    return readme


def test_study_report_refreshes_only_the_study_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text(STUDY)
    readme = _readme(tmp_path)
    assert publish.main([str(run), "--readme", str(readme), "--dest", str(tmp_path / "docs" / "study")]) == 0
    text = readme.read_text()
    assert "old study" not in text and "old demo" in text  # the demo block is left alone
    block = text.split("<!-- study-summary:start -->")[1].split("<!-- study-summary:end -->")[0]
    assert "| content (lite-asr) | regular FT | +7.5 [+5.7, +9.8] |" in block and "Legend line." in block
    assert "paper" not in block  # the reference figures stay in the report
    assert "Wall time 10.0 min (speechft 0.1.0, 2 CPU cores, 2 worker processes x 1 thread(s))" in block
    assert (tmp_path / "docs" / "study" / "report.md").read_text() == STUDY


def test_demo_report_refreshes_only_the_demo_block(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text(DEMO)
    readme = _readme(tmp_path)
    assert publish.main([str(run), "--readme", str(readme), "--dest", str(tmp_path / "docs" / "demo")]) == 0
    text = readme.read_text()
    assert "old demo" not in text and "old study" in text
    assert "| θ₀ | 500 |" in text and "- nothing yet." in text


def test_missing_report_or_block_is_exit_2(tmp_path):
    assert publish.main([str(tmp_path / "nowhere"), "--readme", str(tmp_path / "R.md")]) == 2
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text(STUDY)
    readme = tmp_path / "R.md"
    readme.write_text("no markers here\n")
    assert publish.main([str(run), "--readme", str(readme), "--dest", str(tmp_path / "d")]) == 2
    assert readme.read_text() == "no markers here\n"

"""Copy a run's report and plots into docs/ and refresh its README block.

    python scripts/publish_report.py runs/demo            # after `make demo` (or any reproduce run)
    python scripts/publish_report.py runs/study           # after `make study`: docs/study/ and its README block
    python scripts/publish_report.py runs/exp --dest docs/experiments/lr5e-4 --no-readme   # another run's copy

The kind of run is read from the report's title. A `reproduce` report refreshes the README section
between `<!-- demo-report:start -->` / `<!-- demo-report:end -->` with the run's own results table, its
plain-language summary, its stage timings and links to its plots; a `study` report refreshes the section
between `<!-- study-summary:start -->` / `<!-- study-summary:end -->` with its summary matrix, its written
summary and its wall time. Nothing in either block is written by hand.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = {  # report title -> (default destination, README block markers)
    "demo": (ROOT / "docs" / "demo", ("<!-- demo-report:start -->", "<!-- demo-report:end -->")),
    "study": (ROOT / "docs" / "study", ("<!-- study-summary:start -->", "<!-- study-summary:end -->")),
}


def sections(md: str) -> dict[str, str]:
    """'## Title' -> body (up to the next '## ')."""
    parts = re.split(r"^## ", md, flags=re.M)
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1].strip() if "\n" in p else "" for p in parts[1:]}


def report_kind(md: str) -> str:
    """'study' for a `speechft study` report, else 'demo' (a `reproduce` report)."""
    return "study" if md.lstrip().startswith("# speechft study report") else "demo"


def wall_line(sec: dict, link: str) -> list[str]:
    """'Wall time … min (environment, workers)' from the report's Timings section, or nothing."""
    timings = sec.get("Timings", "")
    total = re.search(r"\*\*wall clock\*\*[^|]*\|[^|]*\| (\d+)", timings)
    if not total:
        return []
    workers = re.search(r"on (\d+) worker process\(es\) x (\d+) torch thread", timings)
    env = sec.get("Environment", "").strip().rstrip(".")
    how = f", {workers.group(1)} worker processes x {workers.group(2)} thread(s)" if workers else ""
    return [f"Wall time {int(total.group(1)) / 60:.1f} min ({env}{how}); per-stage timings in "
            f"[{link}/report.md]({link}/report.md).", ""]


def demo_block(md: str, sec: dict, link: str) -> list[str]:
    first = md.split("## Results", 1)[0].split("\n", 2)[-1].strip()
    block = ["", first, "", sec.get("Results", "").strip(), "",
             "What the numbers show (written by the run from its own numbers):", "",
             sec.get("What the numbers show", "").strip(), ""]
    block += wall_line(sec, link)
    for title, rel in re.findall(r"### ([^\n]+)\n\n!\[[^\]]*\]\(([^)]+\.png)\)", md):
        block += [f"**{title}**", "", f"![{title}]({link}/{rel})", ""]
    return block


def study_block(md: str, sec: dict, link: str) -> list[str]:
    """The summary matrix with its legend and the written summary (the Summary section up to its first
    sub-heading, i.e. without the paper's reference figures), then the wall time."""
    summary = sec.get("Summary", "").split("\n### ", 1)[0].strip()
    return ["", summary, ""] + wall_line(sec, link)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="output folder of `speechft reproduce` or `speechft study` (holds report.md)")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--dest", type=Path, default=None,
                    help="where report.md and its plots are copied (default: docs/demo or docs/study, by the report's kind)")
    ap.add_argument("--no-readme", action="store_true", help="only copy the report; leave the README block alone")
    args = ap.parse_args(argv)
    report = args.run / "report.md"
    if not report.exists():
        print(f"{report}: not found (run `speechft reproduce --out {args.run}` or `speechft study` first)",
              file=sys.stderr)
        return 2
    md = report.read_text()
    kind = report_kind(md)
    default_dest, (start, end) = KINDS[kind]
    dest = args.dest or default_dest
    dest.mkdir(parents=True, exist_ok=True)
    for png in dict.fromkeys(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)):
        src = args.run / png
        if src.exists():
            (dest / Path(png).parent).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / png)
    (dest / "report.md").write_text(md)
    if args.no_readme:
        print(f"{dest} refreshed from {report}")
        return 0
    text = args.readme.read_text()
    if start not in text or end not in text:
        print(f"{args.readme}: no {start} ... {end} block to replace", file=sys.stderr)
        return 2
    sec = sections(md)
    link = dest.resolve().relative_to(args.readme.resolve().parent).as_posix()  # README-relative
    block = (study_block if kind == "study" else demo_block)(md, sec, link)
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    args.readme.write_text(head + "\n".join([start, *block, end]) + tail)
    print(f"README block and {dest} refreshed from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

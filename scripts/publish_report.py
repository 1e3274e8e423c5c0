"""Copy a `speechft reproduce` run's report and plots into docs/demo/ and refresh the README block.

    python scripts/publish_report.py runs/demo            # after `make demo` (or any reproduce run)
    python scripts/publish_report.py runs/exp --dest docs/experiments/lr5e-4 --no-readme   # another run's copy

The README section between the `<!-- demo-report:start -->` / `<!-- demo-report:end -->` markers is
replaced by the run's own results table, its plain-language summary, its stage timings and links to
its plots: nothing in that block is written by hand.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "docs" / "demo"
START, END = "<!-- demo-report:start -->", "<!-- demo-report:end -->"


def sections(md: str) -> dict[str, str]:
    """'## Title' -> body (up to the next '## ')."""
    parts = re.split(r"^## ", md, flags=re.M)
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1].strip() if "\n" in p else "" for p in parts[1:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="output folder of `speechft reproduce` (holds report.md)")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--dest", type=Path, default=DEST, help="where report.md and its plots are copied")
    ap.add_argument("--no-readme", action="store_true", help="only copy the report; leave the README block alone")
    args = ap.parse_args(argv)
    dest = args.dest
    report = args.run / "report.md"
    if not report.exists():
        print(f"{report}: not found (run `speechft reproduce --out {args.run}` first)", file=sys.stderr)
        return 2
    md = report.read_text()
    dest.mkdir(parents=True, exist_ok=True)
    for png in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md):
        src = args.run / png
        if src.exists():
            (dest / Path(png).parent).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / png)
    (dest / "report.md").write_text(md)
    if args.no_readme:
        print(f"{dest} refreshed from {report}")
        return 0
    sec = sections(md)
    link = dest.resolve().relative_to(args.readme.resolve().parent).as_posix()  # README-relative
    timings = sec.get("Timings", "")
    total = re.search(r"\*\*wall clock\*\*[^|]*\|[^|]*\| (\d+)", timings)
    workers = re.search(r"on (\d+) worker process\(es\) x (\d+) torch thread", timings)
    env = sec.get("Environment", "").strip().rstrip(".")
    first = md.split("## Results", 1)[0].split("\n", 2)[-1].strip()
    results = sec.get("Results", "").strip()
    block = [START, "", first, "", results, "", "What the numbers show (written by the run from its own numbers):", "",
             sec.get("What the numbers show", "").strip(), ""]
    if total:
        how = f", {workers.group(1)} worker processes x {workers.group(2)} thread(s)" if workers else ""
        block += [f"Wall time {int(total.group(1)) / 60:.1f} min ({env}{how}); per-stage timings in "
                  f"[{link}/report.md]({link}/report.md).", ""]
    for title, rel in re.findall(r"### ([^\n]+)\n\n!\[[^\]]*\]\(([^)]+\.png)\)", md):
        block += [f"**{title}**", "", f"![{title}]({link}/{rel})", ""]
    block.append(END)
    text = args.readme.read_text()
    if START not in text or END not in text:
        print(f"{args.readme}: no {START} ... {END} block to replace", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    args.readme.write_text(head + "\n".join(block) + tail)
    print(f"README block and {dest} refreshed from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

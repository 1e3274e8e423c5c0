"""Benchmark: the whole paper loop, ``speechft reproduce``, stage by stage.

    python benchmarks/bench_e2e.py                # speechft reproduce --quick (CI size)
    python benchmarks/bench_e2e.py --full         # the default size (hours on a 2-core CPU)
    python benchmarks/bench_e2e.py --out runs/e2e # keep the output (default: a fresh temporary folder)

Runs the real command in a fresh process with a fresh output folder (a rerun into a folder that
holds finished stages would skip them), then reads the stage timings the pipeline itself records in
``OUT/stages.jsonl`` and prints them as a table with each stage's share of the total. Data that is
already prepared in the data home ($SPEECHFT_HOME) is reused: the ``prepare`` stage then only checks
it; pass ``--fresh-data`` to time the synthesis too (a temporary data home).

Appends one JSON record to benchmarks/results/e2e.jsonl with the machine description (finished
runs only; a run that fails prints the stages it finished and the end of its log).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "e2e.jsonl"


def machine() -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    d = {"cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
         "python": platform.python_version(), "platform": platform.platform(), "device": device}
    if device == "cuda":
        d["gpu"] = torch.cuda.get_device_name(0)
    try:
        d["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return d


def read_stages(out: Path) -> list[dict]:
    path = out / "stages.jsonl"
    if not path.exists():
        return []
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:  # a torn last line of a killed run
            continue
    return [r for r in recs if r.get("status") == "done"]


def grouped(stages: list[dict]) -> dict[str, tuple[int, float]]:
    """Jobs named "<stage> / <task>" summed per stage: {stage: (jobs, seconds)}."""
    from speechft.utils.jobs import seconds_by_stage

    return {k: (len(v), sum(v)) for k, v in seconds_by_stage(stages).items()}


def table(stages: list[dict], wall: float) -> str:
    """Per-stage sums (several workers run jobs side by side, so the sum exceeds the wall time)."""
    total = sum(r["seconds"] for r in stages)
    lines = [f"{'stage':<34} {'jobs':>5} {'seconds':>9} {'share':>7}", "-" * 58]
    for name, (n, secs) in grouped(stages).items():
        lines.append(f"{name:<34} {n:>5} {secs:>9.1f} {secs / max(total, 1e-9):>7.1%}")
    lines.append("-" * 58)
    lines.append(f"{'sum of job times':<34} {len(stages):>5} {total:>9.1f}")
    lines.append(f"{'wall time of the command':<34} {'':>5} {wall:>9.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="default sizes instead of --quick")
    p.add_argument("--out", type=Path, default=None, help="output folder (must not exist; default: temporary)")
    p.add_argument("--model", default=None, help="pre-trained model reference passed to reproduce "
                   "(default: its own default, the shipped speechft-tiny)")
    p.add_argument("--fresh-data", action="store_true", help="use an empty data home, so data synthesis is timed")
    p.add_argument("--workers", type=int, default=None, help="passed to reproduce (default: its own choice)")
    p.add_argument("--timeout", type=float, default=None, help="stop the run after this many seconds")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to the results file")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    out = args.out or tmp / "out"
    if out.exists() and any(out.iterdir()):
        print(f"{out} exists and is not empty: its finished stages would be skipped, not timed", file=sys.stderr)
        return 2
    env = {**os.environ, "SPEECHFT_LOG": os.environ.get("SPEECHFT_LOG", "INFO")}
    if args.fresh_data:
        env["SPEECHFT_HOME"] = str(tmp / "home")
    cmd = [sys.executable, "-m", "speechft.cli", "reproduce", "--out", str(out)] + ([] if args.full else ["--quick"]) \
        + (["--model", args.model] if args.model else []) + (["--workers", str(args.workers)] if args.workers else [])
    print("$ " + " ".join(cmd[2:]), flush=True)
    log = tmp / "reproduce.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    stages = read_stages(out)
    print(table(stages, wall))
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print(f"\nreproduce did not finish (exit {rc}); last lines of {log}:\n" + "\n".join(tail), file=sys.stderr)
    rec = {"bench": "e2e", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
           "mode": "full" if args.full else "quick", "model": args.model or "speechft-tiny",
           "fresh_data": args.fresh_data,
           "workers": args.workers or "auto",
           "wall_s": round(wall, 1), "stages": {k: round(v[1], 1) for k, v in grouped(stages).items()},
           "sum_of_stages_s": round(sum(r["seconds"] for r in stages), 1)}
    if rc != 0:  # an unfinished run is not a measurement: nothing is recorded
        return 1
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"record appended to {RESULTS}")
    if args.out is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

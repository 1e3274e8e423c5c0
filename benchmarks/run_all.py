"""Run every benchmark in this folder (``make bench``); each prints its figures and appends a JSON
record to benchmarks/results/. Pass names to run a subset: ``python benchmarks/run_all.py merge probe``."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["merge", "probe", "finetune", "e2e"]


def main(argv: list[str]) -> int:
    names = argv or ORDER
    failed = []
    for name in names:
        script = HERE / f"bench_{name}.py"
        if not script.exists():
            print(f"== {name}: {script.name} not found", flush=True)
            failed.append(name)
            continue
        print(f"== {name}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(script)])
        print(f"== {name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

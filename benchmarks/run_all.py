"""Run every benchmark in this folder (``make bench``); each prints its figures and appends a JSON
record to benchmarks/results/. Pass names to run a subset: ``python benchmarks/run_all.py merge probe``.

``probe`` is a pooled head (lite-ks), ``probe-ctc`` a linear CTC head on frames (lite-pr, 60 utterances
per split); ``e2e`` is ``reproduce --quick``; ``e2e-full`` is the full ``make demo`` run from an empty data home
(data synthesis and every feature extraction timed), about 12 of the 20 minutes on 2 cores."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> (script, arguments)
BENCHES = {"merge": ("merge", []), "probe": ("probe", []), "probe-ctc": ("probe", ["--task", "lite-pr", "--limit", "60"]),
           "finetune": ("finetune", []), "encoder": ("encoder", []), "e2e": ("e2e", ["--fresh-data"]), "e2e-full": ("e2e", ["--full", "--fresh-data"])}
ORDER = list(BENCHES)


def main(argv: list[str]) -> int:
    names = argv or ORDER
    failed = []
    start = time.time()
    for name in names:
        script_name, extra = BENCHES.get(name, (name, []))
        script = HERE / f"bench_{script_name}.py"
        if not script.exists():
            print(f"== {name}: {script.name} not found", flush=True)
            failed.append(name)
            continue
        print(f"== {name}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(script), *extra])
        print(f"== {name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    print(f"== all: {time.time() - start:.0f} s ({(time.time() - start) / 60:.1f} min) for {', '.join(names)}")
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Benchmark: streaming merge vs. an in-RAM torch.load/torch.save merge, and an α sweep in one pass.

    python benchmarks/bench_merge.py                 # HuBERT-base size (~94 M params), 1 and 4 fine-tuned
    python benchmarks/bench_merge.py --size small    # ~20 M params, quicker

Inputs are random weights of the chosen size saved both as HF directories (model.safetensors) and as
plain torch checkpoints (.pt): one "pre-trained" model and four "fine-tuned" copies (θ₀ + small noise).
Every measurement runs in a fresh interpreter that first imports the same modules; it reports wall time
and its own peak RSS (Linux: VmHWM, reset after the imports; elsewhere ``resource.getrusage``). Peak RSS
minus that of an interpreter that only imported those modules, divided by one model's size, is the
memory ratio.

The I/O floor is plain file copies of the same bytes on the same disk: θ₀'s file is copied to the output
folder with ``shutil.copyfile`` (an in-kernel copy on Linux) and every other input is read through. A
merge makes its output durable before renaming it into place (fsync, as every file the toolkit writes),
so the floor fsyncs its copy too (``io_floor_n*``, the ``x io floor`` column); without that one fsync the
floor measures how fast the page cache absorbs the bytes, not the disk (``io_floor_nosync_n*``, the
``x no-fsync`` column, also recorded). Inputs are in the page cache (just written): the floor's reads
are memory copies, the merge maps the cached pages without copying; writing is bound by the disk.
Before every measured run the benchmark calls ``os.sync()`` (untimed), so that no run pays for the
write-back of files written before it.

Results are printed and appended as one JSON record to benchmarks/results/merge.jsonl.
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
RESULTS = HERE / "results" / "merge.jsonl"
THREADS = 1  # torch threads of every measured run (--threads)
SIZES = {
    "base": {},  # HubertConfig() defaults = HuBERT base (768 x 12 layers)
    "small": dict(hidden_size=384, num_hidden_layers=10, num_attention_heads=6, intermediate_size=1536,
                  conv_dim=(256,) * 7),
}
PRELUDE = """
import json, os, resource, sys, time
import torch
import safetensors.torch
from speechft.merge import merge_alphas, merge_models
torch.set_num_threads(int(os.environ.get('BENCH_THREADS', '1')))

def peak_rss_mib():
    # VmHWM: this process's own high-water mark. ru_maxrss is not used on Linux: a child inherits the
    # RSS its parent had at fork as its starting maximum, which would hide everything measured here.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

try:  # start the high-water mark after the imports, so import-time transients cannot mask the run
    with open("/proc/self/clear_refs", "w") as _f:
        _f.write("5")
except OSError:
    pass
"""
EPILOGUE = """
print(json.dumps({"wall_s": WALL, "maxrss_mib": peak_rss_mib()}))
"""


def make_inputs(root: Path, size: str, n_ft: int, seed: int = 0) -> dict:
    """θ₀ and ``n_ft`` noisy copies, each as an HF dir (safetensors) and as a .pt state dict."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, HubertConfig

    config = HubertConfig(**SIZES[size])
    with torch.device("meta"):  # shapes only: random init of a 94 M model is slow on a small CPU
        shapes = {k: v.shape for k, v in AutoModel.from_config(config).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items()}
    paths = {"pretrained": root / "m0", "finetuned": []}
    for i in range(n_ft + 1):
        sd = base if i == 0 else {k: v + 0.001 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        d = root / f"m{i}"
        d.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(d)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        torch.save(sd, root / f"m{i}.pt")
        if i:
            paths["finetuned"].append(d)
        del sd
    paths["params"] = sum(v.numel() for v in base.values())
    paths["model_bytes"] = (root / "m0" / "model.safetensors").stat().st_size
    return paths


def run_child(body: str) -> dict:
    """Run ``body`` after PRELUDE in a fresh interpreter; returns its wall time and peak RSS.

    Dirty pages left by earlier steps (the inputs just written, a previous run's output) are written
    out first, so no run pays for another's write-back.
    """
    if hasattr(os, "sync"):
        os.sync()
    code = PRELUDE + "_t = time.perf_counter()\n" + body + "\nWALL = time.perf_counter() - _t\n" + EPILOGUE
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(THREADS), "BENCH_THREADS": str(THREADS)})
    if res.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_median(body: str, repeats: int, clean=None) -> dict:
    """``repeats`` runs of ``body``: the median wall time (disk flushes make single runs noisy: the same
    fsync'ed copy took 0.77 s and 1.04 s in one session) and the largest peak RSS."""
    import statistics

    runs = []
    for _ in range(max(1, repeats)):
        if clean is not None:  # untimed: the previous run's output goes (a merge refuses to overwrite)
            clean()
        runs.append(run_child(body))
    return {"wall_s": statistics.median(r["wall_s"] for r in runs), "maxrss_mib": max(r["maxrss_mib"] for r in runs),
            "walls": [round(r["wall_s"], 3) for r in runs]}


def io_floor_body(inputs: list[Path], out: Path, fsync: bool = True) -> str:
    """Copy the first input to ``out``, read the others; with ``fsync``, make the copy durable (see above)."""
    body = (f"import shutil\nins = {[str(p) for p in inputs]!r}\n"
            f"shutil.copyfile(ins[0], {str(out)!r})\n"
            "for p in ins[1:]:\n    f = open(p, 'rb')\n    while f.read(16 << 20): pass\n    f.close()\n")
    if fsync:
        body += f"fd = os.open({str(out)!r}, os.O_RDONLY)\nos.fsync(fd)\nos.close(fd)\n"
    return body


def stream_body(m0: Path, fts: list[Path], out: Path, method: str = "linear") -> str:
    return (f"merge_models({str(m0)!r}, {[str(p) for p in fts]!r}, {str(out)!r}, alpha=0.25, "
            f"method={method!r}, progress=False)\n")


def official_body(pts: list[Path], out: Path) -> str:
    """The usual script: torch.load every full checkpoint, merge state dicts in RAM, torch.save."""
    return (f"sds = [torch.load(p, map_location='cpu') for p in {[str(p) for p in pts]!r}]\n"
            "a = 0.25\n"
            "merged = {k: (1 - a) * sds[0][k] + a * sum(sd[k] for sd in sds[1:]) / (len(sds) - 1) for k in sds[0]}\n"
            f"torch.save(merged, {str(out)!r})\n")


def sweep_bodies(m0: Path, ft: Path, alphas: list[float], root: Path) -> tuple[str, str]:
    outs = [str(root / f"a{i}") for i in range(len(alphas))]
    one_pass = f"merge_alphas({str(m0)!r}, [{str(ft)!r}], {alphas!r}, {outs!r}, progress=False)\n"
    separate = "".join(f"merge_models({str(m0)!r}, [{str(ft)!r}], {o!r}, alpha={a!r}, progress=False)\n"
                       for a, o in zip(alphas, outs))
    return one_pass, separate


def measure(size: str, n_fts: list[int], sweep_points: int, workdir: Path, official: bool = True,
            ties: bool = False, repeats: int = 3) -> dict:
    """All measurements; returns the record (figures in MiB, seconds and ratios)."""
    root = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=workdir))
    try:
        t = time.perf_counter()
        inp = make_inputs(root, size, max(n_fts))
        model_mib = inp["model_bytes"] / 2**20
        base_rss = run_child("")["maxrss_mib"]
        rec = {"bench": "merge", "size": size, "repeats": repeats, "params": inp["params"], "model_mib": round(model_mib, 1),
               "baseline_rss_mib": round(base_rss, 1), "setup_s": round(time.perf_counter() - t, 1), "runs": {}}

        out = root / "out"  # every run writes under here; emptied after each run
        out.mkdir()

        def clean():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        def median(body: str) -> dict:
            return run_median(body, repeats, clean)

        def record(name: str, r: dict, floors: tuple[float, float] | None = None) -> None:
            r = {"wall_s": round(r["wall_s"], 3), "peak_rss_mib": round(r["maxrss_mib"], 1),
                 "rss_ratio": round((r["maxrss_mib"] - base_rss) / model_mib, 3), "walls": r.get("walls")}
            if floors:
                r["vs_io_floor"] = round(r["wall_s"] / floors[0], 2)
                r["vs_io_floor_nosync"] = round(r["wall_s"] / floors[1], 2)
            rec["runs"][name] = r
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

        for n in n_fts:
            fts = inp["finetuned"][:n]
            files = [inp["pretrained"] / "model.safetensors"] + [f / "model.safetensors" for f in fts]
            floor = median(io_floor_body(files, out / "copy.bin"))
            record(f"io_floor_n{n}", floor)
            nosync = median(io_floor_body(files, out / "copy.bin", fsync=False))
            record(f"io_floor_nosync_n{n}", nosync)
            f = (floor["wall_s"], nosync["wall_s"])
            record(f"stream_linear_n{n}", median(stream_body(inp["pretrained"], fts, out / "merged")), f)
            if n > 1 and ties:
                record(f"stream_ties_n{n}", run_child(stream_body(inp["pretrained"], fts, out / "merged", "ties")), f)
            if official:
                pts = [root / f"m{i}.pt" for i in range(n + 1)]
                record(f"official_n{n}", run_child(official_body(pts, out / "merged.pt")), f)
        if sweep_points:
            alphas = [round(i / (sweep_points - 1), 4) for i in range(sweep_points)]
            one, sep = sweep_bodies(inp["pretrained"], inp["finetuned"][0], alphas, out)
            record(f"sweep{sweep_points}_one_pass", median(one))
            record(f"sweep{sweep_points}_separate", median(sep))
        return rec
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summarize(rec: dict) -> str:
    lines = [f"merge benchmark: {rec['size']} ({rec['params'] / 1e6:.1f} M params, {rec['model_mib']:.0f} MiB/model), "
             f"interpreter baseline {rec['baseline_rss_mib']:.0f} MiB",
             f"{'run':<22}{'wall s':>9}{'x io floor':>12}{'x no-fsync':>12}{'peak RSS MiB':>14}{'RSS / model':>13}"]
    for name, r in rec["runs"].items():
        floor = f"{r['vs_io_floor']:.2f}" if "vs_io_floor" in r else "-"
        nosync = f"{r['vs_io_floor_nosync']:.2f}" if "vs_io_floor_nosync" in r else "-"
        lines.append(f"{name:<22}{r['wall_s']:>9.2f}{floor:>12}{nosync:>12}{r['peak_rss_mib']:>14.0f}"
                     f"{r['rss_ratio']:>13.2f}")
    runs = rec["runs"]
    for k in [k for k in runs if k.startswith("official_n")]:
        n = k.split("_n")[1]
        lines.append(f"n={n}: streaming peak RSS is {runs[f'stream_linear_n{n}']['rss_ratio']:.2f} x one model "
                     f"vs {runs[k]['rss_ratio']:.2f} x in RAM")
    one = [k for k in runs if k.endswith("_one_pass")]
    if one:
        sep = one[0].replace("one_pass", "separate")
        lines.append(f"α sweep: one pass {runs[one[0]]['wall_s']:.1f} s vs separate merges {runs[sep]['wall_s']:.1f} s "
                     f"({runs[sep]['wall_s'] / runs[one[0]]['wall_s']:.2f}x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="base")
    ap.add_argument("--n-ft", default="1,4", help="numbers of fine-tuned models, comma-separated")
    ap.add_argument("--sweep-points", type=int, default=5, help="α values in the sweep comparison (0 = skip)")
    ap.add_argument("--ties", action="store_true", help="also time a TIES merge of all fine-tuned models")
    ap.add_argument("--no-official", action="store_true", help="skip the torch.load/torch.save comparison")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of every measured run (default: the CPU cores, as `speechft merge` uses)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per timed merge/floor/sweep (median reported)")
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="where the temporary models go")
    ap.add_argument("--no-record", action="store_true", help=f"do not append to {RESULTS.relative_to(HERE.parent)}")
    args = ap.parse_args(argv)
    import torch

    global THREADS
    from speechft.utils.jobs import usable_cores

    THREADS = args.threads or usable_cores()
    rec = measure(args.size, [int(n) for n in args.n_ft.split(",")], args.sweep_points, Path(args.workdir),
                  official=not args.no_official, ties=args.ties, repeats=args.repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on the machine inflates times
    rec.update(threads=THREADS, time=time.strftime("%Y-%m-%dT%H:%M:%S"), python=platform.python_version(), torch=torch.__version__,
               cpus=os.cpu_count(), machine=platform.machine(), loadavg_1min_after=load)
    print(summarize(rec))
    if not args.no_record:
        from speechft.utils.io import append_jsonl

        append_jsonl(RESULTS, rec)
        print(f"appended to {RESULTS}")
    return rec


if __name__ == "__main__":
    main()

"""The GPU path, checked in one prepared run: base-size fine-tuning in bf16, feature extraction and
``reproduce --quick`` on a CUDA device, written as one JSON record.

    bash benchmarks/gpu_check.sh                 # on a CUDA machine: about 5 of its 8-minute budget
    bash benchmarks/gpu_check.sh --dry-run       # the same three parts on the CPU at minimal size

Parts (each one timed; a part that fails is recorded with its error and the others still run):

1. **finetune**: ``benchmarks/bench_finetune.py --arch base --bf16``: HuBERT Base (transformers'
   ``HubertConfig()``, 94 M parameters, random init) stable fine-tuning on lite-asr through
   ``speechft.finetune``, against a bare loop on the same batches and against the HF ``Trainer`` with
   ``HubertForCTC`` on batches of the same mean audio length; throughput (utterances/s, audio-s/s),
   s/step and peak memory per run.
2. **extract**: the feature extraction the probes read (``speechft.probe.extract_features``, every
   hidden state of the same base-size θ₀, fp32) over lite-asr's train/dev/test: utterances/s,
   audio-s/s and peak memory.
3. **reproduce**: ``speechft reproduce --quick --device DEVICE`` (the whole loop: fine-tune, merge,
   sweep, probe, report), its wall time and exit code.

The record (``benchmarks/results/gpu_check.jsonl``, or ``--record``) holds the machine (GPU name),
the settings and each part's figures. ``--dry-run`` runs the parts on the CPU with a few steps and the
quick data, to check the script end to end where no GPU is lent; its figures are not GPU figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "gpu_check.jsonl"
sys.path.insert(0, str(HERE))

import bench_finetune  # noqa: E402  (the benchmark's own helpers: arch_config, machine, peak_memory)

PARTS = ("finetune", "extract", "reproduce")
# (GPU run, dry run): fine-tuning steps, lite data size, speechft batch seconds
SETTINGS = {False: dict(steps=60, size="default", batch_seconds=16.0),
            True: dict(steps=8, size="quick", batch_seconds=4.0)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="run every part on the CPU at minimal size")
    p.add_argument("--arch", default="base", choices=("tiny", "base"), help="fine-tuned and extracted architecture")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--record", type=Path, default=RESULTS, help="JSONL file the record is appended to")
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = [x for x in args.parts if x not in PARTS]
    if bad:
        p.error(f"--parts: unknown part(s) {', '.join(bad)} (known: {', '.join(PARTS)})")
    return args


def part_finetune(args, device: str, work: Path) -> dict:
    s = SETTINGS[args.dry_run]
    rec_file = work / "finetune.jsonl"
    argv = ["--arch", args.arch, "--bf16", "--device", device, "--steps", str(s["steps"]), "--size", s["size"],
            "--batch-seconds", str(s["batch_seconds"]), "--work", str(work / "finetune"), "--record", str(rec_file)]
    rc = bench_finetune.main(argv)
    if rc != 0 or not rec_file.exists():
        raise RuntimeError(f"bench_finetune exited {rc}")
    rec = json.loads(rec_file.read_text().splitlines()[-1])
    rec.pop("machine", None)  # the check's record holds the machine once
    return rec


def part_extract(args, device: str, work: Path) -> dict:
    import torch

    from speechft.corpora.registry import default_out_dir, get_corpus
    from speechft.data.manifest import read_manifest
    from speechft.models.encoder import HFEncoder
    from speechft.models.io import build_model_from_config, save_encoder
    from speechft.probe import extract_features
    from speechft.tasks import get_task

    size = SETTINGS[args.dry_run]["size"]
    get_corpus("lite").prepare(None, default_out_dir("lite", size), size=size, tasks=["lite-asr"])
    manifests = get_task("lite-asr").resolve_manifests(size=size)
    rows = [r for split in ("train", "dev", "test") for r in read_manifest(manifests[split])]
    audio_s = sum(r.duration or 0.0 for r in rows)
    model_dir = work / "extract-theta0"
    enc = HFEncoder(build_model_from_config(bench_finetune.arch_config(args.arch), seed=0), name="gpu-check-theta0")
    enc.normalize_input = True
    save_encoder(enc, model_dir, card={"name": "gpu-check-theta0"})
    bench_finetune.reset_peak(device)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    extract_features([str(model_dir)], ["lite-asr"], size=size, cache_dir=work / "features", device=device,
                     progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"task": "lite-asr", "size": size, "utterances": len(rows), "audio_s": round(audio_s, 1),
            "wall_s": round(wall, 2), "utterances_per_s": round(len(rows) / wall, 2),
            "audio_s_per_s": round(audio_s / wall, 1), "peak_memory": bench_finetune.peak_memory(device)}


def part_reproduce(args, device: str, work: Path) -> dict:
    cli = Path(sys.executable).with_name("speechft")
    cmd = [str(cli), "reproduce", "--quick", "--device", device, "--out", str(work / "reproduce")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = {"command": " ".join(cmd[1:]), "rc": proc.returncode, "wall_s": round(wall, 1),
           "report": (work / "reproduce" / "report.md").exists()}
    if proc.returncode != 0:
        out["stderr_tail"] = proc.stderr[-2000:]
        raise RuntimeError(f"speechft reproduce exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}",
                           out)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); "
              "use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    rec = {"bench": "gpu_check", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "dry_run": args.dry_run,
           "arch": args.arch, "machine": bench_finetune.machine(device), "settings": SETTINGS[args.dry_run]}
    runners = {"finetune": part_finetune, "extract": part_extract, "reproduce": part_reproduce}
    failed = []
    t_all = time.perf_counter()
    for name in args.parts:
        print(f"== gpu_check: {name} on {device} ...", flush=True)
        t0 = time.perf_counter()
        try:
            rec[name] = runners[name](args, device, work)
        except Exception as e:  # recorded, and the next part still runs
            detail = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], dict) else {}
            rec[name] = {**detail, "error": f"{type(e).__name__}: {e.args[0] if e.args else e}",
                         "traceback_tail": traceback.format_exc()[-1500:]}
            failed.append(name)
        rec[name]["part_wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"== gpu_check: {name}: {'FAILED ' + rec[name]['error'] if name in failed else 'ok'} "
              f"({rec[name]['part_wall_s']} s)", flush=True)
    rec["wall_s"] = round(time.perf_counter() - t_all, 1)
    rec["failed"] = failed
    args.record.parent.mkdir(parents=True, exist_ok=True)
    with open(args.record, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"gpu_check: {len(args.parts) - len(failed)}/{len(args.parts)} parts ok in {rec['wall_s']} s; "
          f"record appended to {args.record}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

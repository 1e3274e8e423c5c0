"""Benchmark: forward time per second of audio and shipped size of encoders, side by side.

    python benchmarks/bench_encoder.py                                  # speechft-tiny-v1, -v2 and speechft-tiny
    python benchmarks/bench_encoder.py --models speechft-tiny,path/to/encoder --repeats 15

Every model runs the same batch (default: 8 utterances of 3 s of seeded noise, one torch thread, no
gradients, all hidden states, as feature extraction does) in an interleaved order (A B A B ...), after
one untimed warm-up each, so that a slow phase of a noisy machine hits every model alike. Reported per
model: the median, min and max of the seconds of compute per second of audio; the ratio of each model's
median to the first model's (the figure a budget compares, e.g. "v2 <= 1.3x v1"), with the spread of
the per-round ratios; and the size of its weight files. Results are printed and appended as one JSON
record to benchmarks/results/encoder.jsonl.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "encoder.jsonl"


def weight_bytes(model_dir) -> int:
    """Size of the shipped weights (``model.safetensors``; 0 where there is none)."""
    path = Path(model_dir) / "model.safetensors"
    return path.stat().st_size if path.is_file() else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="speechft-tiny-v1,speechft-tiny-v2,speechft-tiny",
                    help="comma-separated model references; ratios are against the first")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from speechft.models.io import load_encoder, resolve_model_dir
    from speechft.utils.io import append_jsonl

    torch.set_num_threads(args.threads)
    refs = [m.strip() for m in args.models.split(",") if m.strip()]
    encoders = [load_encoder(r).eval() for r in refs]
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(args.batch, int(16000 * args.seconds), generator=g) * 0.1
    lens = torch.full((args.batch,), wav.shape[1])
    audio = args.batch * args.seconds
    times = {r: [] for r in refs}
    with torch.no_grad():
        for e in encoders:
            e(wav, lens)  # warm-up
        for _ in range(args.repeats):
            for r, e in zip(refs, encoders):
                t = time.perf_counter()
                e(wav, lens)
                times[r].append((time.perf_counter() - t) / audio)
    base = refs[0]
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "threads": args.threads,
           "batch": args.batch, "seconds": args.seconds, "repeats": args.repeats, "models": {}}
    print(f"{'model':<40} {'s compute / s audio (median, min-max)':<40} {'x ' + base:<22} weights")
    for r in refs:
        t = times[r]
        ratios = [a / b for a, b in zip(t, times[base])]
        size = weight_bytes(resolve_model_dir(r)) if r != "fbank" else 0
        rec["models"][r] = {"median_s_per_audio_s": statistics.median(t), "min": min(t), "max": max(t),
                            "ratio_to_first": statistics.median(t) / statistics.median(times[base]),
                            "round_ratio_min": min(ratios), "round_ratio_max": max(ratios), "weight_bytes": size}
        m = rec["models"][r]
        print(f"{r:<40} {m['median_s_per_audio_s']:.5f} ({m['min']:.5f}-{m['max']:.5f}){'':<14} "
              f"{m['ratio_to_first']:.3f} ({m['round_ratio_min']:.2f}-{m['round_ratio_max']:.2f})     "
              f"{size / 1e6:.1f} MB")
    append_jsonl(RESULTS, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: cached-feature probing vs. running the frozen encoder at every step (the s3prl way).

    python benchmarks/bench_probe.py                       # lite-ks, 120 utterances per split, 20 epochs
    python benchmarks/bench_probe.py --task lite-pr --epochs 5 --limit 60
    python benchmarks/bench_probe.py --task lite-pr --limit 0 --device cuda   # on a GPU machine

Both runs train the same head (same task, seed, epochs, batches, learning rate) and select on dev
every epoch; they differ only in where the hidden states come from (an untimed encoder forward on a
few utterances comes first, so that neither run pays the process's one-time start-up costs):

* cached: the encoder runs once per utterance into a fresh on-disk float16 cache, every epoch reads
  the cache (classification heads read the pooled per-layer vectors);
* online: the encoder runs on the audio of every training batch and every dev evaluation.

Prints wall times, the speed-up and both test/dev metrics, and appends one JSON record to
benchmarks/results/probe.jsonl.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "probe.jsonl"


def default_model() -> str:
    from speechft.models.io import TINY_NAME, TINY_RANDOM_NAME, is_hf_dir
    from speechft.paths import ASSETS_DIR

    return TINY_NAME if is_hf_dir(ASSETS_DIR / TINY_NAME) else TINY_RANDOM_NAME


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model reference (default: speechft-tiny, else speechft-tiny-random)")
    ap.add_argument("--task", default="lite-ks")
    ap.add_argument("--size", default="default", choices=["default", "quick"])
    ap.add_argument("--limit", type=int, default=120, help="utterances per split (0 = all)")
    ap.add_argument("--epochs", type=int, default=20,
                    help="epochs for both runs (0 = the task's probe default; the online run costs an encoder "
                         "pass over train+dev per epoch, so the speed-up grows with epochs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fsdd", default=None)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="where the encoder and the heads run (auto: cuda when there is one)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    import torch

    from speechft import __version__
    from speechft.models.heads import build_head
    from speechft.models.io import load_encoder
    from speechft.probe import cache as fcache
    from speechft.probe.runner import encode_targets, git_hash, probe_rows
    from speechft.probe.train import CachedSource, OnlineSource, default_config, train_head
    from speechft.tasks import get_task
    from speechft.utils.io import append_jsonl
    from speechft.vocab import Vocab

    device = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and device != "cuda":
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    model = args.model or default_model()
    task = get_task(args.task)
    enc = load_encoder(model).eval().to(device)
    manifests = task.resolve_manifests(size=args.size, fsdd_root=args.fsdd)
    rows = probe_rows(task, manifests, limit=args.limit or None)
    vocab = Vocab.build(task, rows["train"])
    targets = {s: encode_targets(task, vocab, rs, s) for s, rs in rows.items()}
    refs = {s: [vocab.reference(task, r) for r in rs] for s, rs in rows.items()} if task.kind == "ctc" else {}
    cfg = default_config(task, quick=args.size == "quick", epochs=args.epochs or None)
    seconds = {s: sum(r.duration or 0.0 for r in rs) for s, rs in rows.items()}
    print(f"model {model} ({enc.num_layers} layers x {enc.hidden_size}), task {task.name} ({task.head}), "
          f"utterances {({s: len(r) for s, r in rows.items()})}, audio {sum(seconds.values()) / 60:.1f} min, "
          f"epochs {cfg.epochs}, device {device}, torch threads {torch.get_num_threads()}", flush=True)

    def run(sources):
        torch.manual_seed(args.seed)
        head = build_head(task, enc.hidden_size, enc.num_layers + 1, vocab)
        return train_head(head, task, vocab, sources, targets, refs, cfg, args.seed, enc.frame_rate, progress=True,
                          desc=task.name, device=device)

    # Untimed warm-up: the first encoder forward and head step of a process pay one-time costs (thread
    # pool start, kernel selection, allocator growth) that would otherwise fall on whichever run is first.
    from speechft.data.dataset import AudioDataset, collate

    few = AudioDataset(rows["train"][:4])
    warm = collate([few[i] for i in range(len(few))])
    with torch.inference_mode():
        enc(warm["wav"].to(device), warm["wav_lens"].to(device))

    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        t0 = time.perf_counter()
        cached = {s: CachedSource(fcache.ensure_features(enc, rs, Path(tmp) / s, device=device, progress=True),
                                  [r.id for r in rs]) for s, rs in rows.items()}
        t_extract = time.perf_counter() - t0
        res_c = run(cached)
        t_cached = time.perf_counter() - t0
    print(f"cached : {t_cached:8.1f} s (extract {t_extract:.1f} s + train {res_c['train_seconds']:.1f} s)  "
          f"test {task.metric} {res_c['value']:.4f}  dev {res_c['dev_value']:.4f}", flush=True)

    online = {s: OnlineSource(enc, rs, device) for s, rs in rows.items()}
    for s in online:  # the same length buckets as the cached run, so both see identical batches
        online[s].lengths = cached[s].lengths
    t0 = time.perf_counter()
    res_o = run(online)
    t_online = time.perf_counter() - t0
    forwards = sum(src.forwards for src in online.values())
    print(f"online : {t_online:8.1f} s ({forwards} encoder forwards)  "
          f"test {task.metric} {res_o['value']:.4f}  dev {res_o['dev_value']:.4f}")
    speedup = t_online / t_cached
    diff = abs(res_c["value"] - res_o["value"])
    print(f"speed-up {speedup:.1f}x; |test metric difference| {diff:.4f}")

    record = {
        "bench": "probe", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": model, "fingerprint": enc.fingerprint(),
        "task": task.name, "head": task.head, "size": args.size, "limit": args.limit or None, "epochs": cfg.epochs,
        "seed": args.seed, "utterances": {s: len(r) for s, r in rows.items()},
        "audio_minutes": round(sum(seconds.values()) / 60, 2), "metric": task.metric,
        "cached": {"seconds": round(t_cached, 2), "extract_seconds": round(t_extract, 2),
                   "train_seconds": res_c["train_seconds"], "value": res_c["value"], "dev_value": res_c["dev_value"],
                   "pooled_features": res_c["pooled_features"]},
        "online": {"seconds": round(t_online, 2), "encoder_forwards": forwards, "value": res_o["value"],
                   "dev_value": res_o["dev_value"]},
        "speedup": round(speedup, 2), "metric_abs_diff": diff,
        "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
        "platform": platform.platform(), "torch": torch.__version__, "package_version": __version__,
        "git_hash": git_hash(),
    }
    append_jsonl(args.out, record)
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

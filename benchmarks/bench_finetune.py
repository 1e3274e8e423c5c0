"""Benchmark: the fine-tuning loop of ``speechft finetune`` against a bare training loop and against
a Hugging Face ``Trainer`` + ``HubertForCTC`` fine-tune of the same model on the same data.

    python benchmarks/bench_finetune.py                   # lite-asr quick, 30 steps each, CPU
    python benchmarks/bench_finetune.py --steps 60 --size default --device cuda
    python benchmarks/bench_finetune.py --arch base --bf16 --device cuda   # HuBERT Base size (94 M), bf16

Model: the default architecture (``speechft.models.io.tiny_config()``, HuBERT 4 x 256) or, with
``--arch base``, transformers' ``HubertConfig()`` (HuBERT Base: 12 x 768, 94 M parameters), random
init (seed 0), saved once and loaded by all three runs. ``--bf16``: bf16 autocast in all three.
Peak memory: per run on CUDA (``max_memory_allocated``), the process's peak RSS on CPU. Task: lite-asr characters with a linear CTC
head on the last layer in every run (HubertForCTC's head), the CNN frozen in every run.

1. **speechft**: ``finetune(recipe="stable")`` (the library function, Accelerate loop, data read
   from disk, validated manifests, length-bucketed batches of ``--batch-seconds`` padded audio).
   Step times come from its own ``metrics.jsonl`` (``elapsed_s`` logged every step). Reported for
   the head-only warm-up and for the full fine-tuning part after it.
2. **bare loop**: the same batches (taken from the same sampler with the same seed, collated in
   memory beforehand), the same encoder, head, loss, Adam and clipping; nothing else. Run once
   before and once after 1 (A-B-A); the mean of the two throughputs is the floor the speechft loop
   is measured against (goal: overhead <= 10 %).
3. **HF Trainer**: ``HubertForCTC`` with the same config, a fixed batch size chosen so that the
   mean real audio seconds per batch matches the speechft batches, random sampling (Trainer's
   default), AdamW, the same lr and clipping (goal: speechft >= 1.3x, from length bucketing).

Throughput = utterances per second over the timed steps (the first full step of each run is
warm-up and not timed). The padded-frame fraction is the share of input samples that are padding.
Prints a table and appends one JSON record to benchmarks/results/finetune.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "finetune.jsonl"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per run (stable: first 10%% head-only)")
    p.add_argument("--size", default="quick", choices=("quick", "default"), help="lite data size")
    p.add_argument("--batch-seconds", type=float, default=16.0, help="speechft: padded audio seconds per batch")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--arch", default="tiny", choices=("tiny", "base"), help="tiny: speechft-tiny's architecture; "
                   "base: HuBERT Base (transformers' HubertConfig defaults)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in every run")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--record", type=Path, default=RESULTS, help="JSONL file the record is appended to")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to the results file")
    return p.parse_args(argv)


def machine(device: str) -> dict:
    import torch

    d = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
         "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
         "device": device}
    if device == "cuda":
        d["gpu"] = torch.cuda.get_device_name(0)
    try:
        d["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return d


def pad_fraction(lens: list[int], width: int) -> tuple[int, int]:
    """(padding samples, total samples) of one batch padded to ``width``."""
    return len(lens) * width - sum(lens), len(lens) * width


def arch_config(arch: str, **kw):
    """The benchmarked architecture's transformers config (``kw``: e.g. the CTC head's vocabulary)."""
    from speechft.models.io import tiny_config

    if arch == "base":
        from transformers import HubertConfig

        return HubertConfig(**kw)
    return tiny_config(**kw)


def peak_memory(device: str) -> dict:
    """Peak memory since the last reset: CUDA allocator bytes, or (CPU) the process's peak RSS."""
    import resource

    import torch

    if device == "cuda":
        return {"cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return {"max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def reset_peak(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


# -- the data and model every run shares ------------------------------------------------------------
def setup(args, work: Path):
    from speechft.corpora.registry import default_out_dir, get_corpus
    from speechft.models.encoder import HFEncoder
    from speechft.models.io import build_model_from_config, save_encoder
    from speechft.tasks import get_task, user_task

    lite = default_out_dir("lite", args.size)
    get_corpus("lite").prepare(None, lite, size=args.size, tasks=["lite-asr"])
    m = get_task("lite-asr").resolve_manifests(size=args.size)
    # lite-asr's manifests, with the linear CTC head that HubertForCTC also has
    task = user_task("asr-linear", (m["train"], m["dev"], m["test"]), "ctc", "text", metric="cer")
    model_dir = work / "theta0"
    if not (model_dir / "config.json").exists():
        enc = HFEncoder(build_model_from_config(arch_config(args.arch), seed=0), name="bench-theta0")
        enc.normalize_input = True
        save_encoder(enc, model_dir, card={"name": "bench-theta0"})
    return task, model_dir


# -- 1. speechft ------------------------------------------------------------------------------------
def run_speechft(args, task, model_dir: Path, work: Path) -> dict:
    from speechft.finetune import finetune
    from speechft.utils.io import read_jsonl

    out = work / "speechft"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    t0 = time.perf_counter()
    finetune(str(model_dir), task, out, recipe="stable", steps=args.steps, batch_seconds=args.batch_seconds,
             log_every=1, eval_every=0, checkpoint_every=args.steps, tensorboard=False, progress=False,
             num_threads=args.threads, lr=1e-4, mixed_precision="bf16" if args.bf16 else "no")
    wall = time.perf_counter() - t0
    recs = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("split") == "train"]
    assert [r["step"] for r in recs] == list(range(1, args.steps + 1)), "expected one train record per step"
    return {"records": recs, "wall_s": wall}


def batches_of_the_speechft_run(args, task, model_dir: Path, n: int) -> list:
    """The first ``n`` training batches the speechft run saw (same dataset, sampler, seed)."""
    from speechft.finetune import load_config
    from speechft.finetune.data import BatchStream, load_task_data

    cfg = load_config(None, steps=args.steps, batch_seconds=args.batch_seconds)
    data = load_task_data(task, "default", None, False, cfg)
    stream = BatchStream(data.train, cfg, 1, 0)
    return [stream.next() for _ in range(n)], data


# -- 2. bare loop -----------------------------------------------------------------------------------
def run_bare(batches: list, data, model_dir: Path, device: str, timed_from: int, bf16: bool = False) -> dict:
    import torch

    from speechft.models.heads import build_head
    from speechft.models.io import load_encoder

    torch.manual_seed(0)
    enc = load_encoder(str(model_dir))
    enc.freeze_feature_extractor(True)
    head = build_head(data.task, enc.hidden_size, enc.num_layers + 1, data.vocab, layer_sum=False,
                      **data.task.head_options())
    enc.to(device).train()
    head.to(device).train()
    params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    moved = [{k: (v.to(device) if hasattr(v, "to") else v) for k, v in b.items()} for b in batches]
    times = []
    for b in moved:
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            states, frame_lens = enc(b["wav"], b["wav_lens"])
            logits = head(states, frame_lens)
        loss = head.loss(logits.float(), frame_lens, b["targets"], reduction="sum") / head.num_units(b["targets"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    timed = times[timed_from:]
    utts = sum(int(b["wav"].shape[0]) for b in batches[timed_from:])
    return {"samples_per_s": utts / sum(timed), "step_s": sum(timed) / len(timed)}


# -- 3. Hugging Face Trainer ------------------------------------------------------------------------
def run_trainer(args, data, batch_size: int, device: str, work: Path) -> dict:
    import numpy as np
    import torch
    from transformers import HubertForCTC, Trainer, TrainerCallback, TrainingArguments

    from speechft.data.audio import load_audio

    rows = data.train.rows if hasattr(data.train, "rows") else [data.train[i] for i in range(len(data.train))]
    task, vocab = data.task, data.vocab

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            r = rows[i]
            wav = load_audio(r.audio)
            wav = (wav - wav.mean()) / np.sqrt(wav.var() + 1e-7)  # do_normalize, as speechft's input
            return {"input_values": wav.astype(np.float32), "labels": vocab.encode(task, r)}

    pads = []

    def collate(items):
        lens = [len(x["input_values"]) for x in items]
        width = max(lens)
        wav = torch.zeros(len(items), width)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        for i, x in enumerate(items):
            wav[i, : lens[i]] = torch.from_numpy(x["input_values"])
            mask[i, : lens[i]] = 1
        tl = max(len(x["labels"]) for x in items)
        labels = torch.full((len(items), tl), -100, dtype=torch.long)
        for i, x in enumerate(items):
            labels[i, : len(x["labels"])] = torch.tensor(x["labels"])
        pads.append(pad_fraction(lens, width))
        return {"input_values": wav, "attention_mask": mask, "labels": labels}

    times: list[float] = []

    class StepTimer(TrainerCallback):
        """Time between the ends of consecutive steps: data loading, forward, backward, optimizer
        and Trainer's own bookkeeping, as speechft's ``elapsed_s`` differences measure it."""

        def on_train_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now

    config = arch_config(args.arch, vocab_size=len(vocab), pad_token_id=0, ctc_loss_reduction="sum",
                         ctc_zero_infinity=True)
    torch.manual_seed(0)
    model = HubertForCTC(config)
    for p in model.hubert.feature_extractor.parameters():  # the CNN stays frozen, as in speechft
        p.requires_grad = False
    targs = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=batch_size, max_steps=args.steps,
        learning_rate=1e-4, max_grad_norm=1.0, warmup_steps=max(1, round(0.1 * args.steps)), lr_scheduler_type="linear",
        logging_steps=10 ** 6, save_strategy="no", report_to=[], dataloader_num_workers=0,
        use_cpu=device == "cpu", seed=0, disable_tqdm=True, remove_unused_columns=False, bf16=args.bf16,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=DS(), data_collator=collate, callbacks=[StepTimer()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    timed = times[1:]  # the first step is warm-up
    padded, total = map(sum, zip(*pads[1:len(times)]))
    return {"samples_per_s": batch_size * len(timed) / sum(timed), "step_s": sum(timed) / len(timed),
            "pad_fraction": padded / total, "wall_s": wall, "steps_timed": len(timed)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    device = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and device != "cuda":
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)

    from speechft.finetune import head_only_steps

    task, model_dir = setup(args, work)
    warm = head_only_steps(args.steps, 0.1)
    first_timed = warm + 1  # the first full step builds the encoder's graph for the first time: warm-up
    if args.steps - first_timed < 5:
        print(f"--steps {args.steps} leaves fewer than 5 timed full steps; use more", file=sys.stderr)
        return 2

    print(f"fine-tuning benchmark: {args.steps} steps, lite-asr {args.size}, device {device}, "
          f"{torch.get_num_threads()} threads; work dir {work}", flush=True)
    batches, data = batches_of_the_speechft_run(args, task, model_dir, args.steps)
    utts = [int(b["wav"].shape[0]) for b in batches]
    real_s = [float(b["wav_lens"].sum()) / 16000 for b in batches]
    pads = [pad_fraction(b["wav_lens"].tolist(), int(b["wav"].shape[1])) for b in batches]

    # Bare loop, speechft, bare loop again (A-B-A): the floor is the mean of the two bare runs, so
    # neither the process warming up nor the machine drifting during the run favours either side.
    print("1/3 bare loop on the same batches (before) ...", flush=True)
    reset_peak(device)
    bare_before = run_bare(batches, data, model_dir, device, first_timed, args.bf16)
    mem = {"bare": peak_memory(device)}

    print("2/3 speechft finetune (stable) ...", flush=True)
    reset_peak(device)
    sft = run_speechft(args, task, model_dir, work)
    mem["speechft"] = peak_memory(device)
    recs = sft["records"]
    logged = [r["audio_s_per_step"] for r in recs]
    if any(abs(a - round(b, 2)) > 0.011 for a, b in zip(logged, real_s)):
        raise SystemExit("the reconstructed batches differ from the ones the speechft run logged")
    el = [0.0] + [r["elapsed_s"] for r in recs]  # el[k] = time when step k finished

    def rate(a: int, b: int) -> float:  # steps a+1..b (1-based)
        return sum(utts[a:b]) / max(el[b] - el[a], 1e-9)

    sft_full = rate(first_timed, args.steps)
    sft_audio = sum(real_s[first_timed:args.steps]) / max(el[args.steps] - el[first_timed], 1e-9)
    sft_step_s = (el[args.steps] - el[first_timed]) / (args.steps - first_timed)
    sft_head_only = rate(0, warm) if warm else float("nan")

    print("   bare loop on the same batches (after) ...", flush=True)
    bare_after = run_bare(batches, data, model_dir, device, first_timed, args.bf16)
    bare = {"samples_per_s": (bare_before["samples_per_s"] + bare_after["samples_per_s"]) / 2,
            "runs": [bare_before["samples_per_s"], bare_after["samples_per_s"]]}

    mean_dur = sum(data.train.durations()) / len(data.train)
    mean_real = sum(real_s[first_timed:]) / len(real_s[first_timed:])
    bs = max(1, round(mean_real / mean_dur))
    print(f"3/3 HF Trainer + HubertForCTC, batch size {bs} ...", flush=True)
    reset_peak(device)
    hf = run_trainer(args, data, bs, device, work)
    mem["hf_trainer"] = peak_memory(device)

    sft_pad = sum(p for p, _ in pads[first_timed:]) / sum(t for _, t in pads[first_timed:])
    overhead = bare["samples_per_s"] / sft_full - 1.0
    speedup = sft_full / hf["samples_per_s"]
    rows = [
        ("speechft finetune, full FT part", sft_full, sft_pad, mean_real),
        ("speechft finetune, head-only warm-up", sft_head_only, None, None),
        ("bare fwd+bwd+step, same batches (mean)", bare["samples_per_s"], sft_pad, mean_real),
        ("  bare, before / after speechft", None, None, None),
        (f"HF Trainer + HubertForCTC (batch {bs})", hf["samples_per_s"], hf["pad_fraction"], bs * mean_dur),
    ]
    print(f"\n{'run':<42} {'utt/s':>8} {'padded':>8} {'audio s/batch':>14}")
    for name, r, p, a in rows:
        if r is None:
            print(f"{name:<42} {' / '.join(f'{x:.2f}' for x in bare['runs'])}")
            continue
        print(f"{name:<42} {r:>8.2f} {'' if p is None else f'{p:>7.1%}':>8} {'' if a is None else f'{a:>14.1f}':>14}")
    print(f"\nspeechft loop overhead vs bare loop: {overhead:+.1%} (goal <= 10%)")
    print(f"speechft vs HF Trainer: {speedup:.2f}x (goal >= 1.3x)")
    print(f"speechft full FT: {sft_step_s:.3f} s/step, {sft_audio:.1f} audio-s/s; peak memory {mem}")

    rec = {
        "bench": "finetune", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(device),
        "arch": args.arch, "bf16": args.bf16, "steps": args.steps, "head_only_steps": warm, "timed_from_step": first_timed + 1, "size": args.size,
        "batch_seconds": args.batch_seconds, "trainer_batch_size": bs,
        "mean_audio_s_per_batch": {"speechft": round(mean_real, 3), "trainer_expected": round(bs * mean_dur, 3)},
        "samples_per_s": {"speechft_full": sft_full, "speechft_head_only": sft_head_only,
                          "bare": bare["samples_per_s"], "bare_before_after": bare["runs"],
                          "hf_trainer": hf["samples_per_s"]},
        "pad_fraction": {"speechft": sft_pad, "hf_trainer": hf["pad_fraction"]},
        "overhead_vs_bare": overhead, "speedup_vs_hf_trainer": speedup,
        "speechft_full_step_s": sft_step_s, "speechft_full_audio_s_per_s": sft_audio, "peak_memory": mem,
        "wall_s": {"speechft": round(sft["wall_s"], 1), "hf_trainer": round(hf["wall_s"], 1)},
    }
    if not args.no_record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with open(args.record, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"record appended to {args.record}")
    if args.work is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

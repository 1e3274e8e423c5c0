"""HuBERT-style pre-training loop (also continued pre-training = "unsupervised fine-tuning").

Output folder::

    out/
      pretrain_config.yaml   resolved config        run.json         data / init / command
      kmeans.npz             the target codebook    metrics.jsonl    one record per log/dev step
      checkpoint.pt          latest checkpoint      training_curve.png
      encoder/               the result: an HF dir (AutoModel loads it) + pretrain_head.safetensors,
                             kmeans.npz, pretrain_config.yaml, training_curve.png, model card

LR: AdamW, linear warm-up over ``warmup_frac`` of the steps to ``lr``, then linear decay to 0.
"""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..utils.io import append_jsonl, atomic_dir, atomic_write_json, check_not_input, check_writable, truncate_jsonl
from ..utils.jobs import intra_op_threads
from ..utils.signals import StopAtStep, signal_name
from .config import QUICK, PretrainConfig, load_config, save_config
from .augment import augment_batch
from .augment import is_on as augment_on
from .data import AudioStore, epoch_batches, generate_quick_audio, make_batch
from .kmeans import Codebook, FeatureSource, compute_targets, fit_codebook
from .model import PretrainHead, masked_prediction_loss, prepare_encoder
from .state import CHECKPOINT, HEAD_FILE, load_checkpoint, load_head, plot_curve, save_checkpoint, save_head

log = logging.getLogger(__name__)


def _resolve(out: Path, config, quick: bool, resume: bool, overrides: dict) -> PretrainConfig:
    saved = out / "pretrain_config.yaml"
    if resume:
        if not (out / CHECKPOINT).exists() or not saved.exists():
            raise FileNotFoundError(f"{out}: nothing to resume (no {CHECKPOINT} / pretrain_config.yaml)")
        cfg = load_config(saved)
        steps = overrides.get("steps")
        if steps is not None and steps != cfg.steps:
            raise ValueError(f"--resume: the run was started with steps={cfg.steps} (the LR schedule depends on it); "
                             f"got --steps {steps}")
        every = overrides.get("checkpoint_every")
        if every is not None and every != cfg.checkpoint_every:  # when to save changes no weights; dev steps stay
            cfg = cfg.replace(checkpoint_every=every, dev_every=cfg.dev_every or cfg.checkpoint_every)
        return cfg
    if (out / CHECKPOINT).exists():
        raise FileExistsError(f"{out} already holds a pre-training run; pass --resume to continue it or pick a new --out")
    if isinstance(config, PretrainConfig):
        cfg = config.replace(**overrides)
    elif config is not None:
        cfg = load_config(config, **overrides)
    else:
        cfg = load_config(None, **({**QUICK, **{k: v for k, v in overrides.items() if v is not None}} if quick
                                   else overrides))
    return cfg


def _build_model(cfg: PretrainConfig, init: Optional[str]):
    """(model, normalize_input) from ``init`` or from ``tiny_config(**cfg.model)``."""
    from ..models.io import build_model_from_config, load_encoder, tiny_config

    if init is None:
        model = build_model_from_config(tiny_config(**{"mask_time_prob": 0.05, **cfg.model}), seed=cfg.seed)
        return prepare_encoder(model, cfg.seed), True
    enc = load_encoder(init)
    return prepare_encoder(enc.model, cfg.seed), bool(getattr(enc, "normalize_input", False))


def _init_dir(init: Optional[str]) -> Optional[Path]:
    """Folder of the init model (where its kmeans.npz / pretrain_head.safetensors may sit), if local."""
    from ..paths import shipped_dir

    if init is None:
        return None
    return shipped_dir(init) or Path(init).expanduser()


def _lr_lambda(cfg: PretrainConfig):
    warm = max(1, int(round(cfg.warmup_frac * cfg.steps)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))

    return f


@torch.no_grad()
def evaluate(model, head, store, labels, cfg, normalize: bool, progress: bool = False) -> dict:
    """Masked-prediction loss/accuracy on a dev set with fixed masks (no crop randomness, no dropout)."""
    was = model.training
    model.eval()
    rng = np.random.default_rng([cfg.seed, 99])
    tot_loss, frames, correct = 0.0, 0, 0
    batches = epoch_batches(store.seconds(), cfg.batch_seconds, cfg.max_seconds, cfg.seed, 0)
    for idx in tqdm(batches, desc="dev evaluation", unit="batch", leave=False, disable=not progress):
        batch = make_batch(store, labels, idx, cfg.max_seconds, None)
        loss, st = masked_prediction_loss(model, head, batch, rng, cfg, normalize)
        tot_loss += st["masked_loss"] * st["masked_frames"]  # masked frames only, whatever unmasked_weight is
        frames += st["masked_frames"]
        correct += st["masked_correct"]
    model.train(was)
    return {"loss": tot_loss / max(frames, 1), "acc": correct / max(frames, 1), "frames": frames}


def pretrain(manifest: Optional[str] = None, out_dir: str | Path = "runs/pretrain", dev: Optional[str] = None,
             config=None, init: Optional[str] = None, steps: Optional[int] = None, resume: bool = False,
             quick: bool = False, kmeans_from: Optional[str] = None, kmeans_layer: Optional[int] = None,
             stop_after: Optional[int] = None, command: Optional[str] = None, progress: bool = True,
             skip_bad: bool = False, checkpoint_every: Optional[int] = None) -> dict:
    """Pre-train (or continue pre-training) an encoder by HuBERT masked prediction; returns a summary.

    ``stop_after`` stops (with a checkpoint) after that many total steps, as an interruption would.
    SIGINT/SIGTERM during the steps do the same, then raise :class:`~speechft.utils.signals.Interrupted`
    naming the command that resumes. ``checkpoint_every`` overrides the config's (also on resume).
    """
    out = Path(out_dir)
    check_writable(out)
    cfg = _resolve(out, config, quick, resume, {"steps": steps, "kmeans_from": kmeans_from,
                                                "kmeans_layer": kmeans_layer, "checkpoint_every": checkpoint_every})
    # Nothing is written before these: OUT/encoder is replaced, so it must not hold the init/k-means model.
    check_not_input(out, {"--init": init, "--kmeans-from": cfg.kmeans_from})
    listed = manifest if isinstance(manifest, (list, tuple)) else str(manifest or "").split(",")
    check_not_input(out, {"--manifest": [str(m).strip() for m in listed], "--dev": dev}, replaced=False)
    run_file = out / "run.json"
    if resume:
        run = json.loads(run_file.read_text())
    else:
        if manifest is None and not quick:
            raise ValueError("--manifest is required (or --quick for a self-contained demo run)")
        if manifest is None:
            manifest = str(generate_quick_audio(out / "quick-data", seed=cfg.seed))
        if isinstance(manifest, (list, tuple)):
            manifest = ",".join(str(m) for m in manifest)
        manifests = [str(Path(m.strip()).resolve()) for m in str(manifest).split(",") if m.strip()]
        run = {"manifest": ",".join(manifests), "dev": str(Path(dev).resolve()) if dev else None, "init": init,
               "command": command or " ".join(["speechft", "pretrain"] + sys.argv[1:])}
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "pretrain_config.yaml")
        atomic_write_json(run_file, run)
    with intra_op_threads(cfg.num_threads if cfg.num_threads > 0 else None), StopAtStep("pre-training") as stop:
        return _run(cfg, out, run, resume, stop_after, progress, skip_bad=skip_bad, stop=stop)


def _run(cfg: PretrainConfig, out: Path, run: dict, resume: bool, stop_after: Optional[int], progress: bool,
         skip_bad: bool = False, stop: Optional[StopAtStep] = None) -> dict:
    """Load data, build targets and model, then the loop (see the module docstring for the outputs)."""
    train_store = AudioStore.load(run["manifest"], cfg.min_seconds, skip_bad=skip_bad)
    dev_store = AudioStore.load(run["dev"], cfg.min_seconds, skip_bad=skip_bad) if run["dev"] else None
    model, normalize = _build_model(cfg, run["init"])
    hidden = int(model.config.hidden_size)

    # -- targets: the codebook is fixed for the whole run (saved before the first step) ----------
    km_path, init_dir = out / "kmeans.npz", _init_dir(run["init"])
    source = FeatureSource(cfg.kmeans_from, cfg.kmeans_layer) if cfg.kmeans_from else FeatureSource()
    reuse_head, feats = False, []
    if km_path.exists() and resume:
        codebook = Codebook.load(km_path)
    elif cfg.kmeans_from is None and init_dir is not None and (init_dir / "kmeans.npz").exists():
        # Continued pre-training keeps the init model's codebook, so its head stays meaningful.
        codebook = Codebook.load(init_dir / "kmeans.npz")
        reuse_head = (init_dir / HEAD_FILE).exists()
        log.info("continuing with %s's codebook (k=%d)", init_dir, codebook.k)
    else:
        codebook = fit_codebook(train_store, source, cfg.num_clusters, cfg.kmeans_max_frames,
                                cfg.kmeans_batch_size, cfg.seed, keep_features=feats)
    if codebook.source.get("type") == "mfcc":
        source = FeatureSource()
    codebook.save(km_path)
    train_labels = compute_targets(train_store, codebook, source, features=feats)
    del feats
    dev_labels = compute_targets(dev_store, codebook, source) if dev_store else None

    torch.manual_seed(cfg.seed)
    head = PretrainHead(hidden, cfg.proj_dim, codebook.k, cfg.logit_temp)
    if reuse_head and not load_head(head, init_dir / HEAD_FILE):
        torch.manual_seed(cfg.seed)
        head = PretrainHead(hidden, cfg.proj_dim, codebook.k, cfg.logit_temp)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases, norms, masked_spec_embed
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    rngs = {"mask": np.random.default_rng([cfg.seed, 1]), "crop": np.random.default_rng([cfg.seed, 2])}
    if augment_on(cfg):  # its own generator (checkpointed), so runs without augmentation draw as before
        rngs["augment"] = np.random.default_rng([cfg.seed, 3])
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    step, epoch, bi = 0, 0, 0
    win = {"loss": 0.0, "mloss": 0.0, "frames": 0, "correct": 0, "n": 0, "gnorm": 0.0}  # running sums of one log window
    metrics = out / "metrics.jsonl"
    if resume:
        st = load_checkpoint(out / CHECKPOINT, model=model, head=head, optimizer=opt, scheduler=sched, rngs=rngs)
        step, epoch, bi = st["step"], st["epoch"], st["batch"]
        win = {**win, **st["extra"].get("window", {})}  # a log window cut by the interruption continues
        truncate_jsonl(metrics, step)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", out / CHECKPOINT, step, epoch, bi)
    elif metrics.exists():
        metrics.unlink()

    seconds = train_store.seconds()
    batches = epoch_batches(seconds, cfg.batch_seconds, cfg.max_seconds, cfg.seed, epoch)
    last_stop = min(cfg.steps, stop_after) if stop_after else cfg.steps
    dev_every = cfg.dev_every or cfg.checkpoint_every
    last_train, last_dev = {}, {}
    model.train()
    head.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", disable=not progress, dynamic_ncols=True)
    t0 = time.time()
    if stop is not None:
        stop.arm()  # k-means and targets above stop at once; from here a step is finished and saved first
    while step < last_stop:
        if bi >= len(batches):  # next epoch: its batches are a pure function of (seed, epoch)
            epoch, bi = epoch + 1, 0
            batches = epoch_batches(seconds, cfg.batch_seconds, cfg.max_seconds, cfg.seed, epoch)
        batch = make_batch(train_store, train_labels, batches[bi], cfg.max_seconds, rngs["crop"])
        if "augment" in rngs:
            batch = augment_batch(batch, rngs["augment"], cfg)
        bi += 1
        loss, stats = masked_prediction_loss(model, head, batch, rngs["mask"], cfg, normalize)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step + 1} (lr {sched.get_last_lr()[0]:.2e}); "
                                     "lower lr or raise warmup_frac")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        opt.step()
        sched.step()
        step += 1
        win["loss"] += loss.item() * stats["masked_frames"]
        win["mloss"] += stats["masked_loss"] * stats["masked_frames"]
        win["frames"] += stats["masked_frames"]
        win["correct"] += stats["masked_correct"]
        win["gnorm"] += gnorm
        win["n"] += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            last_train = {"step": step, "split": "train", "loss": win["loss"] / max(win["frames"], 1),
                          "masked_loss": win["mloss"] / max(win["frames"], 1),
                          "acc": win["correct"] / max(win["frames"], 1), "lr": sched.get_last_lr()[0],
                          "grad_norm": win["gnorm"] / win["n"], "epoch": epoch, "elapsed_s": round(time.time() - t0, 1)}
            append_jsonl(metrics, last_train)
            bar.set_postfix(loss=f"{last_train['loss']:.3f}", acc=f"{last_train['acc']:.3f}",
                            lr=f"{last_train['lr']:.1e}")
            win = {"loss": 0.0, "mloss": 0.0, "frames": 0, "correct": 0, "n": 0, "gnorm": 0.0}
        if dev_store is not None and (step % dev_every == 0 or step == cfg.steps):
            last_dev = {"step": step, "split": "dev", **evaluate(model, head, dev_store, dev_labels, cfg, normalize,
                                                                 progress=progress)}
            append_jsonl(metrics, last_dev)
            log.debug("step %d dev loss %.3f acc %.3f", step, last_dev["loss"], last_dev["acc"])
            bar.set_postfix(loss=f"{last_train.get('loss', math.nan):.3f}", dev_acc=f"{last_dev['acc']:.3f}")
        stopping = stop is not None and bool(stop.signum) and step < cfg.steps
        if stopping or step % cfg.checkpoint_every == 0 or step == last_stop:
            save_checkpoint(out / CHECKPOINT, model=model, head=head, optimizer=opt, scheduler=sched, step=step,
                            epoch=epoch, batch=bi, rngs=rngs, extra={"codebook": codebook.hash(), "window": win})
        if stopping:
            bar.close()
            raise stop.interrupted(f"{signal_name(stop.signum)} at step {step} of {cfg.steps}: checkpoint saved; "
                                   f"continue with: speechft pretrain --out {out} --resume")
    if stop is not None:
        stop.disarm()
    bar.close()
    names = ", ".join(Path(m).parent.name + "/" + Path(m).name for m in run["manifest"].split(","))
    plot_curve(metrics, out / "training_curve.png", title=f"pre-training on {names}")
    summary = {"step": step, "steps": cfg.steps, "finished": step >= cfg.steps, "out": str(out),
               "train": last_train, "dev": last_dev}
    if step < cfg.steps:
        log.info("stopped at step %d of %d; continue with --resume", step, cfg.steps)
        return summary
    hours = float(seconds.sum() / 3600)
    card = {
        "name": "speechft-pretrained" if not run["init"] else f"{Path(str(run['init'])).name}-continued",
        "recipe": ("HuBERT masked prediction of k-means cluster ids of "
                   + ("MFCC+deltas frames (iteration 1)" if codebook.source["type"] == "mfcc"
                      else f"layer {codebook.source['layer']} of {codebook.source['model']} (iteration 2)")),
        "init": run["init"] or "random",
        "data": run["manifest"], "utterances": len(train_store), "hours": round(hours, 3),
        "dev": run["dev"], "steps": cfg.steps, "num_clusters": codebook.k,
        "final_train_loss": round(last_train.get("loss", math.nan), 4),
        "final_train_masked_acc": round(last_train.get("acc", math.nan), 4),
        "final_dev_loss": round(last_dev["loss"], 4) if last_dev else None,
        "final_dev_masked_acc": round(last_dev["acc"], 4) if last_dev else None,
        "command": run["command"], "config": cfg.to_dict(),
    }
    summary["encoder"] = str(save_pretrained_encoder(model, head, codebook, cfg, normalize, out, card))
    summary["card"] = card
    return summary


def save_pretrained_encoder(model, head, codebook: Codebook, cfg: PretrainConfig, normalize: bool, out: Path,
                            card: dict) -> Path:
    """``out/encoder``: HF dir without the head weights, plus the head/codebook/config/curve beside it."""
    import copy
    import shutil

    from ..models.encoder import HFEncoder
    from ..models.io import save_encoder

    saved_cfg = copy.deepcopy(model.config)  # keeps mask_time_prob > 0: AutoModel recreates masked_spec_embed
    enc = HFEncoder(model, name=card["name"])
    enc.normalize_input = normalize
    enc.model.config = saved_cfg
    dest = out / "encoder"
    with atomic_dir(dest) as tmp:
        save_encoder(enc, tmp, card=card)
        save_head(head, tmp / HEAD_FILE, {"num_clusters": codebook.k, "proj_dim": cfg.proj_dim,
                                          "logit_temp": cfg.logit_temp, "codebook": codebook.hash()})
        codebook.save(tmp / "kmeans.npz")
        save_config(cfg, tmp / "pretrain_config.yaml")
        if (out / "training_curve.png").exists():
            shutil.copy(out / "training_curve.png", tmp / "training_curve.png")
    log.debug("pre-trained encoder written to %s", dest)
    return dest

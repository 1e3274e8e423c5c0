"""The fine-tuning loop: every recipe, one process or many, in one place.

One optimizer step = ``grad_accum`` micro-batches on every process. Each micro-batch's loss is a
*sum* over its units (CTC tokens or utterances); before the step the gradients are divided by the
number of units of the whole step on all processes, so every unit weighs the same whatever the
batch sizes, the accumulation and the process count (a mean per micro-batch would over-weigh
short batches).

Stable fine-tuning (Speech-FT) is this loop with ``head_only_steps = round(beta * T)``: until
then the encoder runs under ``torch.no_grad``; its parameters are in the optimizer from step 0
but their ``.grad`` stays ``None``, so Adam (and its weight decay) skips them and they stay
bit-identical to theta0. No optimizer is rebuilt at the switch; the CNN never trains.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..models.encoder import HFEncoder
from ..models.heads import build_head
from ..models.io import load_encoder, save_encoder
from ..utils.io import append_jsonl, atomic_dir, truncate_jsonl
from ..utils.signals import StopAtStep, signal_name
from .checkpoint import capture_rng, latest_checkpoint, restore_rng, save_checkpoint
from .data import BatchStream, evaluate, to_device
from .model import SpeechFTModel, head_meta, save_head
from .recipes import L2SP, get_recipe, plain_encoder, prepare_encoder
from .schedule import tri_stage_scheduler
from .specaug import SpecAugment, SpecAugmentConfig

log = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def train(run: dict, cfg, data, accelerator, out: Path, resume_from: Optional[tuple] = None, progress: bool = True,
          stop_after: Optional[int] = None, stop: Optional[StopAtStep] = None) -> bool:
    """Run (or continue) the loop; True when all ``cfg.steps`` are done and the outputs written.

    ``stop``: armed during the loop; after a SIGINT/SIGTERM the step is finished, a checkpoint is
    saved and :class:`~speechft.utils.signals.Interrupted` raised with the command that resumes."""
    task, vocab, recipe = data.task, data.vocab, get_recipe(run["recipe"])
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process

    # -- model: theta0 and a fresh head, identical on every process ----------------------------
    encoder = load_encoder(run["model"])
    if not isinstance(encoder, HFEncoder):
        raise ValueError(f"{run['model']}: only transformers encoders can be fine-tuned (not {type(encoder).__name__})")
    torch.manual_seed(cfg.seed)  # adapters and the head start the same on every process
    prepare_encoder(encoder, recipe, cfg, run["freeze_cnn"])
    head_options = {**task.head_options(), **cfg.head}
    head = build_head(task, encoder.hidden_size, encoder.num_layers + 1, vocab, layer_sum=cfg.layer_sum,
                      **head_options)
    spec = SpecAugmentConfig.from_option(cfg.specaugment)
    net = SpeechFTModel(encoder, head, SpecAugment(spec) if spec and spec.active else None)
    enc_params = [p for p in encoder.parameters() if p.requires_grad]
    trainable = enc_params + list(head.parameters())
    l2sp = L2SP(enc_params, cfg.l2sp_lambda) if recipe.l2sp else None  # theta0, copied before any step
    opt = torch.optim.Adam([{"params": enc_params, "lr": cfg.lr}, {"params": list(head.parameters()),
                            "lr": cfg.effective_head_lr}], betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    sched = tri_stage_scheduler(opt, cfg.steps, cfg.warmup_frac, cfg.hold_frac)
    step, best = 0, None
    if resume_from is not None:
        state, _ = resume_from
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best = int(state["step"]), state.get("best")
    log.info("recipe %s: %d encoder + %d head parameters train; CNN %s; head only for the first %d of %d steps",
             recipe.name, sum(p.numel() for p in enc_params), sum(p.numel() for p in head.parameters()),
             "frozen" if run["freeze_cnn"] else "trained", run["head_only_steps"], cfg.steps)
    net, opt = accelerator.prepare(net, opt)  # DDP when launched on several processes; device placement
    if l2sp is not None:
        l2sp.to(accelerator.device)
    stream = BatchStream(data.train, cfg, world, rank)
    torch.manual_seed(cfg.seed + 1 + rank)  # dropout masks differ between processes
    if resume_from is not None:
        stream.load_state_dict(resume_from[0]["sampler"][rank])
        restore_rng(resume_from[1][rank])
        if main:
            truncate_jsonl(out / "metrics.jsonl", step)

    last = min(cfg.steps, stop_after) if stop_after else cfg.steps
    metrics, tb = out / "metrics.jsonl", _tensorboard(out, cfg) if main else None
    win, postfix = _Window(), {}
    if resume_from is not None:
        win.load(resume_from[0].get("window"))  # a log window cut by the interruption continues
    bar = tqdm(total=cfg.steps, initial=step, desc=f"finetune {recipe.name}", disable=not (progress and main),
               dynamic_ncols=True)
    net.train()
    t0 = time.time()
    if stop is not None:
        stop.arm()
    while step < last:
        train_encoder = step >= run["head_only_steps"]

        # -- forward/backward on grad_accum micro-batches; DDP syncs gradients on the last one --
        loss_sum, units, audio_s = torch.zeros((), device=accelerator.device), 0, 0.0
        for micro in range(cfg.grad_accum):
            batch = to_device(stream.next(), accelerator.device)
            sync = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(net):
                logits, frame_lens = net(batch["wav"], batch["wav_lens"], train_encoder=train_encoder)
                loss = head.loss(logits, frame_lens, batch["targets"], reduction="sum")  # fp32 inside
                accelerator.backward(loss)
            loss_sum += loss.detach().float()
            units += head.num_units(batch["targets"])
            audio_s += float(batch["wav_lens"].sum()) / 16000

        # -- normalise by the units of the whole step on all processes; stop on NaN/inf ----------
        totals = accelerator.reduce(torch.stack([loss_sum, torch.tensor(float(units), device=loss_sum.device)]),
                                    reduction="sum")
        step_loss, step_units = float(totals[0]), float(totals[1])
        if not math.isfinite(step_loss):
            raise TrainingDiverged(_diverged("loss", step_loss, step + 1, opt, out))
        if step_units <= 0:
            raise ValueError(f"step {step + 1}: the batches hold no target units (all transcripts empty?)")
        accelerator.unscale_gradients()  # fp16 loss scaling undone before we touch the gradients
        scale = world / step_units  # DDP averaged over processes; we want sum / units
        for p in trainable:
            if p.grad is not None:
                p.grad.mul_(scale)
        penalty = l2sp.add_grad() if l2sp is not None else None
        gnorm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip))
        if not math.isfinite(gnorm) and accelerator.mixed_precision != "fp16":  # fp16: the scaler skips it
            raise TrainingDiverged(_diverged("gradient norm", gnorm, step + 1, opt, out))
        lrs = [g["lr"] for g in opt.param_groups]  # the lrs this step uses
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)  # None, not zeros: the head-only phase relies on it
        step += 1

        # -- bookkeeping: metrics, progress, dev, early encoders, checkpoints ----------------------
        win.add(step_loss, step_units, gnorm, penalty)
        bar.update(1)
        if step % cfg.log_every == 0 or step == last:
            rec = {"step": step, "split": "train", **win.flush(), "lr": lrs[0], "head_lr": lrs[1],
                   "phase": "full" if train_encoder else "head-only", "epoch": stream.epoch,
                   "audio_s_per_step": round(audio_s * world, 2), "elapsed_s": round(time.time() - t0, 1)}
            postfix.update(loss=f"{rec['loss']:.3f}", lr=f"{lrs[0]:.1e}", phase=rec["phase"])
            bar.set_postfix(postfix)
            _log(main, metrics, tb, rec)
        if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
            dev = evaluate(accelerator.unwrap_model(net), data, cfg, accelerator, progress=progress and main)
            _log(main, metrics, tb, {"step": step, "split": "dev", **dev})
            log.debug("step %d: dev loss %.4f, %s %.4f", step, dev["loss"], task.metric, dev[task.metric])
            postfix[f"dev_{task.metric}"] = f"{dev[task.metric]:.4f}"
            bar.set_postfix(postfix)
            if cfg.select == "best" and _better(dev[task.metric], best, task.higher_is_better):
                best = {"step": step, task.metric: dev[task.metric]}
                if main:
                    _save_pair(out / "best", accelerator.unwrap_model(net), vocab, _meta(run, task, head_options,
                               encoder, cfg), _card(run, cfg, step, dev, "best"))
        if main and cfg.save_every and step % cfg.save_every == 0:
            save_encoder(plain_encoder(accelerator.unwrap_model(net).encoder), out / "early" / f"step-{step}",
                         card=_card(run, cfg, step, None, f"early checkpoint at step {step}"))
        stopping = stop is not None and step < cfg.steps and _stop_requested(stop, accelerator)
        if stopping or step % cfg.checkpoint_every == 0 or step == last:
            _checkpoint(accelerator, net, opt, sched, stream, step, best, cfg, out, win)
        if stopping:
            bar.close()
            if tb is not None:
                tb.close()
            raise stop.interrupted(f"{signal_name(stop.signum)} at step {step} of {cfg.steps}: checkpoint saved; "
                                   f"continue with: speechft finetune --out {out} --resume")
    if stop is not None:
        stop.disarm()
    bar.close()
    if tb is not None:
        tb.close()
    if step < cfg.steps:
        log.info("stopped at step %d of %d; continue with --resume", step, cfg.steps)
        return False
    if main:
        final = accelerator.unwrap_model(net)
        dev = _last_dev(metrics)
        write_outputs(out, final.encoder, final.head, vocab, _meta(run, task, head_options, encoder, cfg),
                      _card(run, cfg, step, dev, "last"), out / "best" if cfg.select == "best" else None)
        log.debug("fine-tuned encoder: %s", out / "encoder")
    accelerator.wait_for_everyone()
    return True


class _Window:
    """Train metrics averaged over the steps since the last log record."""

    def __init__(self):
        self.loss = self.units = self.gnorm = 0.0
        self.n, self.penalty = 0, None

    def add(self, loss_sum: float, units: float, gnorm: float, penalty: Optional[float]) -> None:
        self.loss += loss_sum
        self.units += units
        self.gnorm += gnorm
        self.n += 1
        self.penalty = penalty

    def state(self) -> dict:
        return {"loss": self.loss, "units": self.units, "gnorm": self.gnorm, "n": self.n, "penalty": self.penalty}

    def load(self, state: Optional[dict]) -> None:
        for k, v in (state or {}).items():
            setattr(self, k, v)

    def flush(self) -> dict:
        rec = {"loss": self.loss / max(self.units, 1.0), "units": int(self.units), "grad_norm": self.gnorm / max(self.n, 1)}
        if self.penalty is not None:
            rec["l2sp_penalty"] = self.penalty
        self.__init__()
        return rec


def _log(main: bool, path: Path, tb, rec: dict) -> None:
    if not main:
        return
    # train records come every log_every steps: an fsync each would cost more than the step's bookkeeping
    append_jsonl(path, rec, durable=rec.get("split") != "train")
    if tb is not None:
        for k, v in rec.items():
            if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                tb.add_scalar(f"{rec['split']}/{k}", v, rec["step"])


def _tensorboard(out: Path, cfg):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.debug("TensorBoard log skipped: the tensorboard package is not installed "
                  "(pip install 'speechft[tensorboard]'); metrics.jsonl has everything")
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _stop_requested(stop: StopAtStep, accelerator) -> bool:
    """Whether a signal arrived here or, with several processes, on any of them (they stop together)."""
    if accelerator.num_processes == 1:
        return bool(stop.signum)
    got = accelerator.reduce(torch.tensor([float(stop.signum)], device=accelerator.device), reduction="max")
    stop.signum = stop.signum or int(got.item())
    return bool(stop.signum)


def _checkpoint(accelerator, net, opt, sched, stream, step, best, cfg, out: Path,
                win: Optional[_Window] = None) -> None:
    """Every process hands over its sampler position and RNG states; the main process writes."""
    samplers, rngs = [stream.state_dict()], [capture_rng()]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        samplers, rngs = gather_object(samplers), gather_object(rngs)
    if accelerator.is_main_process:
        state = {"step": step, "model": accelerator.unwrap_model(net).state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "sampler": samplers, "best": best,
                 "world_size": accelerator.num_processes, "window": win.state() if win is not None else None}
        save_checkpoint(out, step, state, rngs, cfg.keep_checkpoints)
    accelerator.wait_for_everyone()


def _diverged(what: str, value: float, step: int, opt, out: Path) -> str:
    ckpt = latest_checkpoint(out)
    where = f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint was written yet"
    return (f"non-finite {what} ({value}) at step {step} (lr {opt.param_groups[0]['lr']:.2e}); stopped. {where}; "
            "lower --lr (or check the data) and continue with --resume, or start over")


def _better(value: float, best: Optional[dict], higher: bool) -> bool:
    if best is None:
        return True
    old = next(v for k, v in best.items() if k != "step")
    return value > old if higher else value < old


def _last_dev(metrics: Path) -> Optional[dict]:
    from ..utils.io import read_jsonl

    devs = [r for r in read_jsonl(metrics) if r.get("split") == "dev"]
    return devs[-1] if devs else None


def _meta(run: dict, task, head_options: dict, encoder, cfg) -> dict:
    return head_meta(task, head_options, encoder.hidden_size, encoder.num_layers + 1, cfg.layer_sum)


def _card(run: dict, cfg, step: int, dev: Optional[dict], selected: str) -> dict:
    card = {"name": f"{Path(run['model']).name}-{run['recipe']}-{run['task']}", "base_model": run["model"],
            "recipe": run["recipe"], "task": run["task"], "steps": step, "total_steps": cfg.steps,
            "selected": selected, "lr": cfg.lr, "head_lr": cfg.effective_head_lr, "beta": run["beta"],
            "head_only_steps": run["head_only_steps"], "freeze_cnn": run["freeze_cnn"]}
    if run["recipe"] == "l2sp":
        card["l2sp_lambda"] = cfg.l2sp_lambda
    if run["recipe"] in ("lora", "dora"):
        card.update(lora_rank=cfg.lora_rank, lora_targets=list(cfg.lora_targets), merged=True)
    if dev:
        card.update({f"dev_{k}": v for k, v in dev.items() if k not in ("step", "split")}, dev_step=dev.get("step", step))
    card.update(world_size=run.get("world_size", 1), command=run.get("command"), config=cfg.to_dict())
    return card


def _save_pair(dest: Path, net, vocab, meta: dict, card: dict) -> None:
    save_encoder(plain_encoder(net.encoder), dest / "encoder", card=card)
    save_head(net.head, vocab, meta, dest / "head")


def write_outputs(out: Path, encoder, head, vocab, head_meta: dict, card: dict, best_dir: Optional[Path]) -> None:
    """``OUT/encoder`` and ``OUT/head``: the best ones saved during the run, or the current ones."""
    if best_dir is not None and (best_dir / "encoder" / "config.json").exists():
        for name in ("encoder", "head"):
            with atomic_dir(out / name) as tmp:
                shutil.copytree(best_dir / name, tmp, dirs_exist_ok=True)
        return
    save_encoder(plain_encoder(encoder), out / "encoder", card=card)
    save_head(head, vocab, head_meta, out / "head")

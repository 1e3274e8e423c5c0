"""Fine-tuning recipes: Speech-FT's stable fine-tuning and the paper's baselines.

Each recipe is a small frozen record in an explicit registry; the training loop asks it three
things: which encoder parameters train (CNN frozen or not, LoRA/DoRA adapters), for how many
first steps only the head learns (``beta``), and whether an L2-SP penalty pulls the encoder back
to its pre-trained weights.

=========  ====================================================================================
stable     Speech-FT: CNN frozen throughout; the first ``beta`` = 10 % of steps train the head only
           (encoder run without gradients), then everything but the CNN trains
regular    nothing frozen, no head-only warm-up (same optimizer, schedule and steps)
l2sp       ``regular`` + ``l2sp_lambda * ||theta - theta0||^2`` on the trainable encoder weights
lora       low-rank adapters (peft) on the attention/FFN projections, merged into the weights
dora       weight-decomposed low-rank adapters (peft ``use_dora``), merged into the weights
=========  ====================================================================================

Early checkpoints (the paper's early-stop baseline) are not a recipe: ``save_every`` keeps the
encoder every K steps of any recipe.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import torch

from ..utils.names import by_name, lookup

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    beta: float = 0.0  # default share of head-only steps
    freeze_cnn: bool = False  # default for keeping the CNN feature extractor frozen
    l2sp: bool = False
    adapter: Optional[str] = None  # None | "lora" | "dora"


_RECIPES = [
    Recipe("stable", "Speech-FT stable fine-tuning: CNN frozen, head-only warm-up (beta), then full encoder",
           beta=0.1, freeze_cnn=True),
    Recipe("regular", "regular fine-tuning: nothing frozen, no warm-up"),
    Recipe("l2sp", "regular fine-tuning + L2-SP penalty lambda*||theta - theta0||^2 on encoder weights", l2sp=True),
    Recipe("lora", "LoRA adapters on attention/FFN projections, merged after training", freeze_cnn=True,
           adapter="lora"),
    Recipe("dora", "DoRA adapters on attention/FFN projections, merged after training", freeze_cnn=True,
           adapter="dora"),
]


RECIPES: dict[str, Recipe] = by_name(_RECIPES, "recipe name")


def get_recipe(name: str) -> Recipe:
    return lookup(RECIPES, name, "fine-tuning recipe", "known recipes")


def cnn_frozen(recipe: Recipe, freeze_cnn: Optional[bool]) -> bool:
    """Whether ``recipe`` keeps the CNN feature extractor frozen: ``freeze_cnn`` where set, else the recipe's default."""
    return recipe.freeze_cnn if freeze_cnn is None else bool(freeze_cnn)


def resolved_knobs(recipe: Recipe, cfg) -> dict:
    """``{"beta", "freeze_cnn"}``: the config's value where set, else the recipe's."""
    beta = recipe.beta if cfg.beta is None else float(cfg.beta)
    freeze = cnn_frozen(recipe, cfg.freeze_cnn)
    if recipe.adapter and not freeze:
        raise ValueError(f"recipe {recipe.name}: freeze_cnn=false does not apply (only adapters train)")
    return {"beta": beta, "freeze_cnn": freeze}


def prepare_encoder(encoder, recipe: Recipe, cfg, freeze_cnn: bool):
    """Set which encoder parameters train; for adapter recipes wrap ``encoder.model`` with peft.

    Returns the encoder (modified in place). Parameters that the forward pass never uses while
    fine-tuning (HuBERT's ``masked_spec_embed``: masking is off) are frozen so they stay theta0
    and distributed training does not wait for their gradients.
    """
    for p in encoder.parameters():
        p.requires_grad_(True)
    encoder.freeze_feature_extractor(freeze_cnn)
    masked = getattr(encoder.model, "masked_spec_embed", None)
    if masked is not None:
        masked.requires_grad_(False)
    if recipe.adapter is None:
        return encoder
    import peft

    lcfg = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
                           lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_targets),
                           use_dora=recipe.adapter == "dora", bias="none")
    arch = type(encoder.model).__name__
    try:
        encoder.model = peft.get_peft_model(encoder.model, lcfg)
    except ValueError as e:  # peft names the missing modules
        raise ValueError(f"recipe {recipe.name}: cannot place adapters on {list(cfg.lora_targets)} "
                         f"of {arch} ({e})") from None
    idle = bypassed_adapters(encoder.model)
    if idle:
        from .config import DEFAULT_LORA_TARGETS

        why = (f"{arch} never calls its {', '.join(idle)} modules (its attention reads their weights directly), "
               f"so adapters there would never train")
        kept = [t for t in cfg.lora_targets if t not in idle]
        if tuple(cfg.lora_targets) != DEFAULT_LORA_TARGETS or not kept:
            raise ValueError(f"recipe {recipe.name}: {why}; set lora_targets without them"
                             + (f" (e.g. {kept})" if kept else ""))
        log.warning("recipe %s: %s: adapting %s only", recipe.name, why, ", ".join(kept))
        encoder.model = peft.get_peft_model(encoder.model.unload(), dataclasses.replace(lcfg, target_modules=kept))
    return encoder


def bypassed_adapters(model) -> list[str]:
    """Target names (last path component) of adapter-wrapped modules that one forward pass never calls.

    transformers' WavLM attention passes ``q_proj/k_proj/v_proj/out_proj.weight`` straight to
    ``F.multi_head_attention_forward``: a LoRA/DoRA wrapper around those modules is never run, its
    update stays zero and the merged weights equal θ₀'s, silently. Measured here, not assumed from the
    architecture's name: 0.1 s of silence through the model, with a hook on every adapted module."""
    from peft.tuners.lora import LoraLayer

    called, hooks, names = set(), [], {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            names[name] = name.rsplit(".", 1)[-1]
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: called.add(n)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, 1600, dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sorted({t for n, t in names.items() if n not in called})


def is_adapted(encoder) -> bool:
    return type(encoder.model).__name__ == "PeftModel"


def plain_encoder(encoder, copy_first: bool = True):
    """The encoder as a plain transformers model: LoRA/DoRA merged into the weights.

    ``copy_first`` leaves the training encoder untouched (early checkpoints mid-run).
    """
    if not is_adapted(encoder):
        return encoder
    enc = copy.deepcopy(encoder) if copy_first else encoder
    enc.model = enc.model.merge_and_unload()
    return enc


class L2SP:
    """The L2-SP penalty ``lam * ||theta - theta0||^2`` over the trainable encoder parameters.

    Its gradient ``2 * lam * (theta - theta0)`` is added once per optimizer step, after the task
    gradients are normalised, so it does not depend on batch size, accumulation or process count
    (the same as adding the penalty to the normalised loss). Parameters without a gradient in a
    step (none in ``l2sp``; the head-only phase if combined with ``beta``) are left alone.
    """

    def __init__(self, params: list, lam: float):
        self.params = list(params)
        self.lam = float(lam)
        self.theta0 = [p.detach().clone() for p in self.params]

    def to(self, device) -> "L2SP":
        self.theta0 = [t.to(device) for t in self.theta0]
        return self

    @torch.no_grad()
    def add_grad(self) -> float:
        """Add the penalty's gradient to ``.grad``; returns the penalty value."""
        total = 0.0
        for p, p0 in zip(self.params, self.theta0):
            if p.grad is None:
                continue
            diff = p.detach().float() - p0.float()
            total += float(diff.pow(2).sum())
            p.grad.add_((2.0 * self.lam * diff).to(p.grad.dtype))
        return self.lam * total

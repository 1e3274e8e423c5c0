"""Merge methods: small pure functions over one tensor at a time, in an explicit registry.

Every method has the signature ``fn(base, tuned, params, generator=None, stats=None) -> Tensor``:

    base       Tensor [*]            θ₀'s value of one parameter (any floating dtype)
    tuned      list of n Tensor [*]  the fine-tuned models' values θ′₁…θ′ₙ of the same parameter
    params     MergeParams           α, per-model weights, density, seed, sign rule
    generator  torch.Generator       seeded per block of the parameter (random methods only), or None
    stats      dict                  per-parameter statistics from ``method.prepare`` (TIES thresholds)
    returns    Tensor [*] float64

Given ``stats``, every method is elementwise, so the caller may apply it to aligned flat slices of a
large parameter (bounded memory) and get the same result. Inputs are never modified. τᵢ = θ′ᵢ − θ₀ is
the task vector of model i.

Arithmetic is in float64, so α=0 returns θ₀ and (for one model) α=1 returns θ′ bit for bit once cast
back to the source dtype. ``linear`` and ``task_arithmetic`` are θ̂ = θ₀ + α·Σ cᵢ·τᵢ (cᵢ = wᵢ/Σw, resp.
wᵢ; their ``task_coeffs``): the caller may compute Σ cᵢ·τᵢ once (:func:`task_sum`) for several α, and
convert to the output dtype as the result is stored (``torch.add(θ₀, Σ, alpha=α, out=...)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch

from ..utils.names import by_name, lookup
from .keys import layer_group

Tensor = torch.Tensor
COMPUTE_DTYPE = torch.float64
SIGN_RULES = ("total", "frequency")


@dataclass(frozen=True)
class MergeParams:
    """Options of a merge. ``weights=None`` means every fine-tuned model weighs 1.

    ``layer_alphas``: α per layer group (:func:`.keys.layer_group` names: ``layer1``, ``proj``, …) as
    sorted ``(group, α)`` pairs; a parameter of a group not listed takes ``alpha``. Methods read one α:
    the merge resolves it per parameter with :meth:`at`.
    """

    alpha: float = 0.25
    weights: Optional[tuple[float, ...]] = None
    density: float = 0.5
    seed: int = 0
    majority_sign: str = "total"
    layer_alphas: Optional[tuple[tuple[str, float], ...]] = None

    def model_weights(self, n: int) -> list[float]:
        return [1.0] * n if self.weights is None else [float(w) for w in self.weights]

    def at(self, key: str) -> "MergeParams":
        """These options for the parameter ``key`` (canonical name): ``alpha`` is its layer group's α."""
        if self.layer_alphas is None:
            return self
        return replace(self, alpha=float(dict(self.layer_alphas).get(layer_group(key), self.alpha)), layer_alphas=None)


def layer_alpha_pairs(layer_alphas: Optional[dict]) -> Optional[tuple[tuple[str, float], ...]]:
    """``{group: α}`` as the sorted pairs of :attr:`MergeParams.layer_alphas` (None stays None)."""
    return None if layer_alphas is None else tuple(sorted((str(g), float(a)) for g, a in layer_alphas.items()))


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., Tensor]
    formula: str
    options: tuple[str, ...]  # the MergeParams fields this method reads
    random: bool = False
    prepare: Optional[Callable[[Tensor, Sequence[Tensor], MergeParams], dict]] = None  # whole-tensor statistics
    # methods of the form θ̂ = θ₀ + α·Σ cᵢ·τᵢ: the cᵢ (the caller may share Σ cᵢ·τᵢ between several α)
    task_coeffs: Optional[Callable[[MergeParams, int], list[float]]] = None


def _f64(t: Tensor) -> Tensor:
    return t.to(COMPUTE_DTYPE)


def _f64_copy(t: Tensor) -> Tensor:
    """A float64 copy that may be modified in place (``_f64`` returns float64 inputs themselves)."""
    return t.to(COMPUTE_DTYPE, copy=True)


def linear_coeffs(p: MergeParams, n: int) -> list[float]:
    ws = p.model_weights(n)
    total = float(sum(ws))
    return [w / total for w in ws]


def task_arithmetic_coeffs(p: MergeParams, n: int) -> list[float]:
    return p.model_weights(n)


def exact_input(base: Tensor, tuned: Sequence[Tensor], coeffs: Sequence[float], alpha: float) -> Optional[Tensor]:
    """The input θ₀ + α·Σ cᵢ·τᵢ equals exactly, where there is one: θ₀ at α=0, θ′ for one model with α·c₁=1."""
    if alpha == 0:
        return base
    if len(tuned) == 1 and alpha * coeffs[0] == 1:
        return tuned[0]
    return None


def task_sum(base: Tensor, tuned: Sequence[Tensor], coeffs: Sequence[float], out: Optional[Tensor] = None) -> Tensor:
    """Σ cᵢ·(θ′ᵢ − θ₀) = Σ cᵢ·θ′ᵢ − (Σ cᵢ)·θ₀ in float64 (into ``out``, float64, if given).

    One converting copy, then one scaled sum per further model and a last scaled subtraction, each
    into ``out``: torch converts a float32/16 operand to float64 as it reads it (the arithmetic is float64,
    as with converted copies, without the copies).
    """
    out = torch.empty(base.shape, dtype=COMPUTE_DTYPE) if out is None else out
    out.copy_(tuned[0])
    if coeffs[0] != 1:
        out.mul_(coeffs[0])
    for t, c in zip(tuned[1:], coeffs[1:]):
        out.add_(t, alpha=c)
    return out.sub_(base, alpha=float(sum(coeffs)))


def _task_form(base: Tensor, tuned: Sequence[Tensor], coeffs: Sequence[float], alpha: float) -> Tensor:
    same = exact_input(base, tuned, coeffs, alpha)
    if same is not None:
        return _f64(same)
    b = _f64(base)
    return torch.add(b, task_sum(b, tuned, coeffs), alpha=alpha)


def linear(base: Tensor, tuned: Sequence[Tensor], p: MergeParams, generator=None, stats=None) -> Tensor:
    """Speech-FT: θ̂ = θ₀ + α·mean_w(θ′ᵢ − θ₀) = (1−α)·θ₀ + α·mean_w(θ′ᵢ)."""
    return _task_form(base, tuned, linear_coeffs(p, len(tuned)), p.alpha)


def task_arithmetic(base: Tensor, tuned: Sequence[Tensor], p: MergeParams, generator=None, stats=None) -> Tensor:
    """θ̂ = θ₀ + α·Σ wᵢ τᵢ (task arithmetic; λᵢ = α·wᵢ)."""
    return _task_form(base, tuned, task_arithmetic_coeffs(p, len(tuned)), p.alpha)


def _magnitude(base: Tensor, t: Tensor) -> Tensor:
    """|θ′ − θ₀| in the inputs' precision (at least float32): the ranking TIES trims by."""
    dt = torch.promote_types(torch.promote_types(t.dtype, base.dtype), torch.float32)
    return (t.to(dt) - base.to(dt)).abs_()


def trim_thresholds(base: Tensor, tuned: Sequence[Tensor], p: MergeParams) -> dict:
    """TIES statistics: per model, the k-th largest |τᵢ| with k = ⌊density·numel⌋ (whole tensor).

    Selection (kthvalue) is ~3x faster than topk for k ≈ numel/2. One model at a time, so the extra
    memory is one magnitude tensor plus kthvalue's scratch.
    """
    if p.density >= 1:
        return {"thresholds": [None] * len(tuned)}
    k = int(p.density * base.numel())
    out = []
    for t in tuned:
        if k == 0:
            out.append(float("inf"))
            continue
        out.append(torch.kthvalue(_magnitude(base, t).reshape(-1), base.numel() - k + 1).values.item())
    return {"thresholds": out}


def trimmed_task_vectors(base: Tensor, tuned: Sequence[Tensor], thresholds: Sequence[Optional[float]]) -> list[Tensor]:
    """τᵢ with entries below model i's magnitude threshold zeroed (ties at the threshold are kept)."""
    b = _f64(base)
    out = []
    for t, thr in zip(tuned, thresholds):
        tau = _f64(t) - b
        out.append(tau if thr is None else tau * (_magnitude(base, t) >= thr))
    return out


def dare_drop(tau: Tensor, density: float, generator: Optional[torch.Generator]) -> Tensor:
    """Keep each entry with probability ``density`` and rescale kept ones by 1/density (DARE)."""
    if density >= 1:
        return tau
    keep = torch.rand(tau.shape, generator=generator, dtype=torch.float32) < density
    return tau * keep / density


def elect_and_merge(taus: Sequence[Tensor], weights: Sequence[float], rule: str) -> Tensor:
    """TIES sign election and disjoint mean.

    γ = sign(Σᵢ τᵢ) ('total') or sign(Σᵢ sign τᵢ) ('frequency'), ties resolved to +;
    merged = Σᵢ [sign τᵢ = γ]·wᵢ·τᵢ / max(1, Σᵢ [sign τᵢ = γ]). Zero entries never agree.
    """
    stacked = torch.stack(list(taus))
    signs = stacked.sign()
    votes = stacked.sum(0) if rule == "total" else signs.sum(0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(stacked.dtype)
    agree = signs == elected
    w = torch.tensor(list(weights), dtype=stacked.dtype).reshape((-1,) + (1,) * (stacked.dim() - 1))
    total = (stacked * w * agree).sum(0)
    return total / agree.sum(0).clamp(min=1).to(stacked.dtype)


def ties(base: Tensor, tuned: Sequence[Tensor], p: MergeParams, generator=None, stats=None) -> Tensor:
    """TIES: θ̂ = θ₀ + α·disjoint_mean(elect(trim_density(τᵢ)))."""
    if p.alpha == 0:
        return _f64(base)
    stats = stats if stats is not None else trim_thresholds(base, tuned, p)
    taus = trimmed_task_vectors(base, tuned, stats["thresholds"])
    merged = elect_and_merge(taus, p.model_weights(len(tuned)), p.majority_sign)
    return _f64_copy(base).add_(merged, alpha=p.alpha)


def dare(base: Tensor, tuned: Sequence[Tensor], p: MergeParams, generator=None, stats=None) -> Tensor:
    """DARE: θ̂ = θ₀ + α·Σ wᵢ·(mᵢ ⊙ τᵢ)/density, mᵢ ~ Bernoulli(density) (seeded per parameter)."""
    if p.alpha == 0:
        return _f64(base)
    b = _f64(base)
    acc = torch.zeros_like(b)
    for t, w in zip(tuned, p.model_weights(len(tuned))):
        acc.add_(dare_drop(_f64(t) - b, p.density, generator), alpha=w)
    return acc.mul_(p.alpha).add_(b)


def dare_ties(base: Tensor, tuned: Sequence[Tensor], p: MergeParams, generator=None, stats=None) -> Tensor:
    """DARE drop-and-rescale, then TIES sign election and disjoint mean."""
    if p.alpha == 0:
        return _f64(base)
    b = _f64(base)
    taus = [dare_drop(_f64(t) - b, p.density, generator) for t in tuned]
    return _f64_copy(base).add_(elect_and_merge(taus, p.model_weights(len(tuned)), p.majority_sign), alpha=p.alpha)


def _build(methods: list[MergeMethod]) -> dict[str, MergeMethod]:
    return by_name(methods, "merge method")


METHODS: dict[str, MergeMethod] = _build([
    MergeMethod("linear", linear, "θ̂ = (1−α)·θ₀ + α·mean_w(θ′ᵢ) = θ₀ + α·mean_w(θ′ᵢ − θ₀)", ("alpha", "weights"),
                task_coeffs=linear_coeffs),
    MergeMethod("task_arithmetic", task_arithmetic, "θ̂ = θ₀ + α·Σ wᵢ·τᵢ", ("alpha", "weights"),
                task_coeffs=task_arithmetic_coeffs),
    MergeMethod("ties", ties, "θ̂ = θ₀ + α·disjoint_mean_w(elect(trim(τᵢ, density)))",
                ("alpha", "weights", "density", "majority_sign"), prepare=trim_thresholds),
    MergeMethod("dare", dare, "θ̂ = θ₀ + α·Σ wᵢ·(mᵢ⊙τᵢ)/density, mᵢ ~ Bernoulli(density)",
                ("alpha", "weights", "density", "seed"), random=True),
    MergeMethod("dare_ties", dare_ties, "θ̂ = θ₀ + α·disjoint_mean_w(elect((mᵢ⊙τᵢ)/density))",
                ("alpha", "weights", "density", "seed", "majority_sign"), random=True),
])


def get_method(name: str) -> MergeMethod:
    return lookup(METHODS, name, "merge method", "known methods")


def check_params(method: MergeMethod, p: MergeParams, n_models: int) -> None:
    """Refuse options that make no sense, before any file is read or written."""
    if n_models < 1:
        raise ValueError("merging needs at least one fine-tuned model")
    if not math.isfinite(p.alpha):
        raise ValueError(f"alpha must be a finite number, got {p.alpha}")
    bad = [f"{g}={a}" for g, a in p.layer_alphas or () if not math.isfinite(a)]
    if bad:
        raise ValueError(f"per-layer alpha must be finite numbers, got {', '.join(bad)}")
    if p.weights is not None:
        if len(p.weights) != n_models:
            raise ValueError(f"--weights has {len(p.weights)} values but {n_models} fine-tuned models were given")
        if not all(math.isfinite(w) for w in p.weights):
            raise ValueError(f"weights must be finite numbers, got {list(p.weights)}")
        if method.name == "linear" and sum(p.weights) <= 0:
            raise ValueError(f"linear merging needs weights with a positive sum, got {list(p.weights)}")
    if "density" in method.options and not 0 < p.density <= 1:
        raise ValueError(f"density must be in (0, 1], got {p.density}")
    if "majority_sign" in method.options and p.majority_sign not in SIGN_RULES:
        raise ValueError(f"majority sign rule must be one of {', '.join(SIGN_RULES)}, got {p.majority_sign!r}")


def describe(method: MergeMethod, p: MergeParams) -> dict:
    """The options that matter for ``method`` (recorded in model cards and sweep records); per-layer α
    (when set) as ``layer_alphas: {group: α}``."""
    out = {k: (list(v) if isinstance(v, tuple) else v) for k in method.options for v in [getattr(p, k)]}
    if p.layer_alphas is not None:
        out["layer_alphas"] = dict(p.layer_alphas)
    return out

"""`speechft analyze`: how far fine-tuned / merged models drift from the pre-trained one.

For models M0 (reference, usually pre-trained θ₀), M1, M2, ... on the same audio:

* per layer, mean frame cosine similarity and unbiased linear CKA of each Mi to M0;
* LLFC (linear layer-wise feature connectivity): for α on a grid and each Mi, per layer, R² of the
  features of the interpolated model θ̂(α) = (1-α)θ₀ + αθᵢ against (1-α)F(θ₀) + αF(θᵢ);
* weight-space distance per layer group: ‖θᵢ - θ₀‖ and ‖θᵢ - θ₀‖ / ‖θ₀‖.

Results are JSONL records (``analysis.jsonl``); the PNG plots are drawn from those records only.
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..merge.keys import layer_group
from ..utils.io import check_not_input, read_jsonl, rewrite_jsonl
from ..utils.plots import integer_xticks, plain_yticks, save_figure
from .similarity import R2, LinearCKA, MeanCosine

log = logging.getLogger(__name__)
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def interpolate(sd0: dict, sd1: dict, alpha: float) -> dict:
    """θ̂(α) = (1-α)θ₀ + αθ′ per tensor with the merge registry's ``linear`` method (exact at α ∈ {0, 1});
    non-float tensors keep θ₀."""
    from ..merge.methods import MergeParams, linear

    p = MergeParams(alpha=alpha)
    return {k: (linear(v0, [sd1[k]], p).to(v0.dtype) if torch.is_floating_point(v0) else v0.clone())
            for k, v0 in sd0.items()}


def weight_distances(sd0: dict, sd1: dict) -> list[dict]:
    acc: dict[str, list[float]] = {}
    for k, v0 in sd0.items():
        if not torch.is_floating_point(v0):
            continue
        g = layer_group(k)
        d = (sd1[k].double() - v0.double()).pow(2).sum().item()
        n = v0.double().pow(2).sum().item()
        a = acc.setdefault(g, [0.0, 0.0])
        a[0] += d
        a[1] += n
    out = []
    for g, (d, n) in acc.items():
        out.append({"group": g, "l2": d ** 0.5, "relative": (d ** 0.5) / (n ** 0.5) if n > 0 else float("nan")})
    return out


def _frames(states, frame_lens):
    """list of [B,T,F] -> list of [N,F] real frames only."""
    T = states[0].shape[1]
    mask = torch.arange(T)[None, :] < frame_lens.clamp(max=T)[:, None]
    return [s[mask] for s in states]


def layer_frames(encoders: Sequence, rows: Sequence[dict], batch_seconds: float = 40.0, device: str = "cpu",
                 desc: Optional[str] = None):
    """Per length-bucketed batch of ``rows`` (manifest rows, in order): for every encoder, its hidden
    states' real frames, a list over layers of [N, F] float CPU tensors. All encoders run in one pass per
    batch; those sharing a CNN (``cnn_key``) run it once. ``desc``: a progress bar with that label."""
    from ..data.dataset import AudioDataset, collate
    from ..data.sampler import LengthBucketSampler
    from ..models.encoder import forward_many

    ds = AudioDataset(list(rows), max_seconds=20.0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=LengthBucketSampler(ds.durations(), batch_seconds,
                                                                               shuffle=False), collate_fn=collate)
    keys = [e.cnn_key() for e in encoders]
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=desc is None):
            outs = forward_many(encoders, batch["wav"].to(device), batch["wav_lens"].to(device), keys=keys)
            yield [_frames([s.float().cpu() for s in st], fl.cpu()) for st, fl in outs]


def analyze(
    models: Sequence[str],
    manifest: str | Path,
    out_dir: str | Path,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    limit: Optional[int] = 200,
    batch_seconds: float = 40.0,
    names: Optional[Sequence[str]] = None,
    encoders: Optional[Sequence] = None,
    device: str = "cpu",
) -> list[dict]:
    """Run all analyses; ``models[0]`` is the reference θ₀. Returns the records written.

    Models of another architecture than θ₀ (e.g. another hidden size) get the similarity records only:
    LLFC and weight distances need θ₀'s tensors, and one log line says why they are skipped."""
    from ..data.validate import load_checked_rows
    from ..models.encoder import HFEncoder
    from ..models.io import load_encoder

    if len(models) < 2:
        raise ValueError("analyze needs at least two models: the reference M0 and one to compare")
    out_dir = Path(out_dir)
    check_not_input(out_dir, {"--models": list(models), "--manifest": manifest}, replaced=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names or models)
    encs = list(encoders) if encoders is not None else [load_encoder(m) for m in models]
    for e in encs:
        e.eval()
        if device != "cpu":
            e.to(device)
    rows = load_checked_rows(manifest)[: limit or None]

    ref = encs[0]
    L = ref.num_layers + 1
    sims = {i: ([MeanCosine() for _ in range(L)], [LinearCKA(ref.hidden_size, encs[i].hidden_size) for _ in range(L)])
            for i in range(1, len(encs))}
    # LLFC needs weight interpolation: only for transformers models of the reference's architecture.
    llfc_models, llfc = {}, {}
    sd0 = ref.model.state_dict() if isinstance(ref, HFEncoder) else None
    shared = {}  # i -> Mi has θ₀'s tensors (names and shapes): interpolation and weight distances apply
    for i in range(1, len(encs)):
        e = encs[i]
        why = _not_interpolable(ref, e, sd0)
        shared[i] = why is None
        if why:
            log.warning("LLFC and weight distances skipped for %s (not interpolable with %s: %s)",
                        names[i], names[0], why)
            continue
        sd1 = e.model.state_dict()
        for a in alphas:
            m = copy.deepcopy(ref)
            m.model.load_state_dict(interpolate(sd0, sd1, a))
            llfc_models[(i, a)] = m.eval()
            llfc[(i, a)] = [R2(ref.hidden_size) for _ in range(L)]

    # Every model in one pass per batch; models sharing a CNN (θ₀, Stable-FT, Speech-FT and their
    # interpolations: the CNN stays frozen) run it once.
    everyone = encs + list(llfc_models.values())
    for frames in layer_frames(everyone, rows, batch_seconds, device, desc="analyze"):
        feats = frames[: len(encs)]
        for i, (cos, cka) in sims.items():
            for layer in range(min(L, len(feats[i]))):
                x, y = feats[0][layer], feats[i][layer]
                n = min(x.shape[0], y.shape[0])
                if x.shape[1] == y.shape[1]:
                    cos[layer].update(x[:n], y[:n])
                cka[layer].update(x[:n], y[:n])
        for (i, a), fm in zip(llfc_models, frames[len(encs):]):
            for layer in range(L):
                llfc[(i, a)][layer].update(fm[layer], (1 - a) * feats[0][layer] + a * feats[i][layer])

    records = []
    for i, (cos, cka) in sims.items():
        for layer in range(L):
            if not cka[layer].n:  # Mi has fewer layers than M0
                continue
            records.append({"kind": "similarity", "reference": names[0], "model": names[i], "layer": layer,
                            "cosine": cos[layer].value() if cos[layer].n else None, "cka": cka[layer].value()})
    for (i, a), r2s in llfc.items():
        for layer in range(L):
            records.append({"kind": "llfc", "reference": names[0], "model": names[i], "alpha": a, "layer": layer,
                            "r2": r2s[layer].value()})
    for i in range(1, len(encs)):
        if shared[i]:
            for r in weight_distances(sd0, encs[i].model.state_dict()):
                records.append({"kind": "weight_distance", "reference": names[0], "model": names[i], **r})
    rewrite_jsonl(out_dir / "analysis.jsonl", records)
    plot_analysis(out_dir / "analysis.jsonl", out_dir)
    return records


def _not_interpolable(ref, enc, sd0: Optional[dict]) -> Optional[str]:
    """Why ``enc``'s weights cannot be interpolated with θ₀'s (``ref``, state dict ``sd0``), or None."""
    from ..models.encoder import HFEncoder

    if sd0 is None or not isinstance(enc, HFEncoder):
        return "not both transformers models"
    if ref.hidden_size != enc.hidden_size:
        return f"hidden size {enc.hidden_size} vs {ref.hidden_size}"
    sd1 = enc.model.state_dict()
    if sd1.keys() != sd0.keys():
        return "different tensor names"
    bad = [k for k in sd0 if sd0[k].shape != sd1[k].shape]
    return f"{bad[0]} has shape {tuple(sd1[bad[0]].shape)} vs {tuple(sd0[bad[0]].shape)}" if bad else None


def plot_analysis(records_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw similarity.png, llfc.png and weight_distance.png from the records file only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_jsonl(records_path)
    out_dir = Path(out_dir)
    written = []
    sim = [r for r in recs if r["kind"] == "similarity"]
    if sim:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for model in dict.fromkeys(r["model"] for r in sim):
            rs = sorted((r for r in sim if r["model"] == model), key=lambda r: r["layer"])
            for ax, key in zip(axes, ("cosine", "cka")):
                pts = [(r["layer"], r[key]) for r in rs if r[key] is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=model)
        for ax, title in zip(axes, ("mean frame cosine similarity to M0", "linear CKA (unbiased) to M0")):
            ax.set_xlabel("layer (0 = CNN projection)")
            integer_xticks(ax)
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        written.append(_save(fig, out_dir / "similarity.png"))
    ll = [r for r in recs if r["kind"] == "llfc"]
    if ll:
        models = list(dict.fromkeys(r["model"] for r in ll))
        fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False, sharey=True)
        for ax, model in zip(axes[0], models):
            for a in sorted({r["alpha"] for r in ll}):
                rs = sorted((r for r in ll if r["model"] == model and r["alpha"] == a), key=lambda r: r["layer"])
                ax.plot([r["layer"] for r in rs], [r["r2"] for r in rs], marker="o", label=f"α={a:g}")
            ax.set_title(f"LLFC R² — {model}", fontsize=10)
            ax.set_xlabel("layer")
            integer_xticks(ax)
            plain_yticks(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0][0].set_ylim(*_r2_limits([r["r2"] for r in ll]))
        written.append(_save(fig, out_dir / "llfc.png"))
    wd = [r for r in recs if r["kind"] == "weight_distance"]
    if wd:
        # categories, not a series: grouped bars, no line between them; upright labels never overlap
        groups, models = list(dict.fromkeys(r["group"] for r in wd)), list(dict.fromkeys(r["model"] for r in wd))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(groups) + 2), 4.2))
        width = 0.8 / len(models)
        for j, model in enumerate(models):
            value = {r["group"]: r["relative"] for r in wd if r["model"] == model}
            xs = [i for i, g in enumerate(groups) if g in value]
            ax.bar([x - 0.4 + width * (j + 0.5) for x in xs], [value[groups[x]] for x in xs], width, label=model)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=90, fontsize=8)
        ax.set_ylabel("‖θ − θ₀‖ / ‖θ₀‖")
        ax.set_title("relative weight distance per layer group", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / "weight_distance.png"))
    return written


def _r2_limits(values: list) -> tuple[float, float]:
    """R² axis: from a little below the lowest value to just above 1, spanning at least 0.01, so
    values that all round to 1 read as 1 instead of being blown up around an offset."""
    lo = min([v for v in values if v is not None and math.isfinite(v)] or [0.0])
    bottom = min(lo - 0.1 * (1.0 - lo), 0.99)
    return bottom, 1.0 + 0.05 * (1.0 - bottom)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path

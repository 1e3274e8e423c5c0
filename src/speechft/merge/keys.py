"""Which tensors are merged, which keep θ₀'s values, which are dropped — and refusing bad inputs.

Every encoder tensor is merged. Tensors of pre-training-only modules (HuBERT ``final_proj`` and
``label_embs_concat``, the mask embedding ``masked_spec_embed``, wav2vec 2.0 ``quantizer``/``project_q``/``project_hid``) and of task heads
(``lm_head``, ``classifier``, ``projector``, ...) are never mixed in: with ``excluded="keep"`` θ₀'s
values are copied unchanged, with ``excluded="drop"`` they are left out; the fine-tuned models' values of
those tensors are always ignored. Integer and 8-bit tensors cannot be interpolated and keep θ₀'s values.

A fine-tuned model saved with its head (``HubertForCTC``: ``hubert.encoder...``, ``lm_head...``) is
matched to a bare encoder (``encoder...``) by removing the base-model prefix.
"""
from __future__ import annotations

import re

from dataclasses import dataclass
from typing import Optional, Sequence

from .stream import TensorSpec

# First name component -> why the tensor is never merged.
EXCLUDED_MODULES: dict[str, str] = {
    "final_proj": "pre-training only",
    "label_embs_concat": "pre-training only",
    "label_embs": "pre-training only",
    "quantizer": "pre-training only",
    "project_q": "pre-training only",
    "project_hid": "pre-training only",
    # the learned mask vector that replaces masked frames: only used when training with masking (HuBERT
    # pre-training, SpecAugment); transformers builds it only when the config asks for masking, so two
    # models of one architecture may differ in having it (speechft-tiny has it, speechft-tiny-random not)
    "masked_spec_embed": "pre-training only",
    "lm_head": "task head",
    "classifier": "task head",
    "projector": "task head",
    "head": "task head",
    "heads": "task head",
    "downstream": "task head",
}
BASE_PREFIXES = ("hubert", "wav2vec2", "wavlm", "data2vec_audio", "unispeech", "unispeech_sat", "sew", "sew_d")
# Config fields that change what a tensor means even when shapes agree.
ARCH_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "conv_dim", "conv_kernel", "conv_stride", "conv_bias", "feat_extract_norm", "feat_extract_activation",
    "do_stable_layer_norm", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "position_embeddings_type",
    "num_buckets", "max_bucket_distance", "conv_pos_batch_norm", "use_weighted_layer_sum",
)
EXCLUDED_POLICIES = ("keep", "drop")
_SHOW = 8  # offending keys listed per category


def layer_group(key: str) -> str:
    """The coarse layer group of a parameter name: ``cnn``, ``proj``, ``pos_conv_embed``,
    ``masked_spec_embed``, ``layer1`` … ``layerN`` (transformer blocks, 1-based) or ``other``. Distance
    plots and per-layer α (``MergeParams.layer_alphas``) speak of layers in these names."""
    m = re.search(r"encoder\.layers\.(\d+)\.", key)
    if m:
        return f"layer{int(m.group(1)) + 1}"
    for name in ("feature_extractor", "feature_projection", "pos_conv_embed", "masked_spec_embed"):
        if name in key:
            return {"feature_extractor": "cnn", "feature_projection": "proj"}.get(name, name)
    return "other"


FRONT_GROUPS = ("cnn", "proj", "masked_spec_embed", "pos_conv_embed")  # the groups before the blocks, input first


def layer_group_order(group: str) -> tuple:
    """Sort key of :func:`layer_group` names in the model's order: the front groups (CNN, projection,
    masked-frame embedding, position embedding), then blocks ``layer1`` … ``layerN`` by number, then the rest."""
    if group in FRONT_GROUPS:
        return (0, FRONT_GROUPS.index(group), group)
    if group.startswith("layer") and group[5:].isdigit():
        return (1, int(group[5:]), group)
    return (2, 0, group)


def excluded_reason(key: str) -> Optional[str]:
    """Why ``key`` (prefix already removed) is never merged, or None for an encoder tensor."""
    return EXCLUDED_MODULES.get(key.split(".", 1)[0])


def strip_base_prefix(keys: Sequence[str]) -> tuple[str, dict[str, str]]:
    """(prefix, {canonical key: stored key}): removes ``hubert.``-style prefixes of models saved with a head."""
    for p in BASE_PREFIXES:
        dotted = p + "."
        if any(k.startswith(dotted) for k in keys) and all(
            k.startswith(dotted) or excluded_reason(k) for k in keys
        ):
            return p, {(k[len(dotted):] if k.startswith(dotted) else k): k for k in keys}
    return "", {k: k for k in keys}


def check_architectures(configs: Sequence[tuple[str, dict]]) -> None:
    """Refuse inputs whose configs disagree on any field in :data:`ARCH_FIELDS`."""
    ref_name, ref = configs[0]
    problems = []
    for name, cfg in configs[1:]:
        diffs = [f"{f}: {ref.get(f)!r} vs {cfg.get(f)!r}" for f in ARCH_FIELDS if ref.get(f) != cfg.get(f)]
        if diffs:
            problems.append(f"  {name} (config.json) differs from {ref_name}: " + "; ".join(diffs))
    if problems:
        raise ValueError("cannot merge models of different architectures:\n" + "\n".join(problems))


@dataclass(frozen=True)
class KeyPlan:
    """The output layout and where each output tensor comes from.

    out_specs  output tensors in file order, named as θ₀ names them (dtype = θ₀'s, before --dtype)
    merged     canonical keys that are merged
    kept       {canonical key: reason} copied from θ₀ unchanged
    dropped    {key: reason} left out of the output (θ₀'s with excluded="drop", fine-tuned-only heads)
    maps       per source (θ₀ first): {canonical key: stored key}
    """

    out_specs: tuple[TensorSpec, ...]
    merged: frozenset[str]
    kept: dict[str, str]
    dropped: dict[str, str]
    maps: tuple[dict[str, str], ...]
    canonical: dict[str, str]  # output key -> canonical key


def _listing(title: str, items: list[str]) -> str:
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"    {title} ({len(items)}): " + ", ".join(items[:_SHOW]) + more


def plan_keys(sources: Sequence, excluded: str = "keep") -> KeyPlan:
    """Check every fine-tuned source against θ₀ (``sources[0]``) and decide the output's tensors.

    Each source has ``.name`` and ``.specs`` ({stored key: TensorSpec}). Raises ValueError listing every
    missing/extra key and shape/dtype-kind mismatch; nothing is read beyond headers.
    """
    if excluded not in EXCLUDED_POLICIES:
        raise ValueError(f"excluded-key policy must be one of {', '.join(EXCLUDED_POLICIES)}, got {excluded!r}")
    maps = [strip_base_prefix(list(s.specs))[1] for s in sources]
    base_map = maps[0]
    base_enc = {c for c in base_map if not excluded_reason(c)}
    problems, dropped = [], {}
    for src, m in zip(sources[1:], maps[1:]):
        enc = {c for c in m if not excluded_reason(c)}
        for c in m:
            if excluded_reason(c) and c not in base_map:
                dropped[f"{src.name}:{m[c]}"] = f"{excluded_reason(c)} (fine-tuned model only)"
        lines = []
        if base_enc - enc:
            lines.append(_listing("missing keys", sorted(base_enc - enc)))
        if enc - base_enc:
            lines.append(_listing("extra keys", sorted(enc - base_enc)))
        shape_bad = []
        for c in sorted(base_enc & enc):
            a, b = sources[0].specs[base_map[c]], src.specs[m[c]]
            if a.shape != b.shape or a.is_float != b.is_float:
                shape_bad.append(f"{c}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        if shape_bad:
            lines.append(_listing("shape mismatches", shape_bad))
        if lines:
            problems.append(f"  {src.name} vs {sources[0].name}:\n" + "\n".join(lines))
    if problems:
        hint = ""
        if any("masked_spec_embed" in p for p in problems):
            hint = "\n(masked_spec_embed exists only in models built with mask_time_prob > 0)"
        raise ValueError("cannot merge: the fine-tuned models do not match the pre-trained model:\n"
                         + "\n".join(problems) + hint)
    merged, kept, out_specs, canonical = set(), {}, [], {}
    for c, stored in base_map.items():
        spec = sources[0].specs[stored]
        reason = excluded_reason(c)
        if reason and excluded == "drop":
            dropped[stored] = reason
            continue
        if reason:
            kept[c] = reason
        elif not spec.is_float:
            kept[c] = f"non-floating tensor ({spec.dtype})"
        else:
            merged.add(c)
        out_specs.append(spec)
        canonical[stored] = c
    if not merged:
        raise ValueError(f"{sources[0].name}: no floating-point encoder tensors to merge")
    return KeyPlan(tuple(out_specs), frozenset(merged), kept, dropped, tuple(maps), canonical)

"""Tensor names and configs of fairseq-style speech encoders, translated to transformers.

fairseq (HuBERT, wav2vec 2.0), s3prl's copies of those models and Microsoft's WavLM code share one
naming scheme. This module is the single table that maps it to transformers' ``HubertModel``,
``Wav2Vec2Model`` and ``WavLMModel`` names (and back, which tests and exports use), plus the config
translation. Names below are *after* any wrapper prefix (``model.``, ``w2v_encoder.w2v_model.``) has been
removed.

Weight-normalised positional convolution: fairseq stores ``weight_g``/``weight_v`` (``nn.utils.weight_norm``);
newer torch code stores ``parametrizations.weight.original0``/``original1``. Both spellings are read and
written in whichever spelling the target model uses.
"""
from __future__ import annotations

import ast
import re
from typing import Any, Iterable, Optional

# (fairseq template, transformers template, condition). Placeholders: {i} layer index, {p} weight|bias,
# {a} q|k|v|out. Condition "group"/"layer" applies to the CNN norm mode (feat_extract_norm), "wavlm" to
# WavLM-only tensors; None always applies.
RULES: tuple[tuple[str, str, Optional[str]], ...] = (
    ("feature_extractor.conv_layers.{i}.0.{p}", "feature_extractor.conv_layers.{i}.conv.{p}", None),
    # group-norm CNN ("default" extractor mode): a GroupNorm after the first conv only, Sequential index 2
    ("feature_extractor.conv_layers.{i}.2.{p}", "feature_extractor.conv_layers.{i}.layer_norm.{p}", "group"),
    # layer-norm CNN: Sequential(TransposeLast, LayerNorm, TransposeLast) at index 2 -> ".2.1."
    ("feature_extractor.conv_layers.{i}.2.1.{p}", "feature_extractor.conv_layers.{i}.layer_norm.{p}", "layer"),
    ("post_extract_proj.{p}", "feature_projection.projection.{p}", None),
    ("layer_norm.{p}", "feature_projection.layer_norm.{p}", None),
    ("mask_emb", "masked_spec_embed", None),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv_embed.conv.bias", None),
    ("encoder.pos_conv.0.weight_g", "encoder.pos_conv_embed.conv.weight_g", None),
    ("encoder.pos_conv.0.weight_v", "encoder.pos_conv_embed.conv.weight_v", None),
    ("encoder.layers.{i}.self_attn.{a}_proj.{p}", "encoder.layers.{i}.attention.{a}_proj.{p}", None),
    ("encoder.layers.{i}.self_attn_layer_norm.{p}", "encoder.layers.{i}.layer_norm.{p}", None),
    ("encoder.layers.{i}.fc1.{p}", "encoder.layers.{i}.feed_forward.intermediate_dense.{p}", None),
    ("encoder.layers.{i}.fc2.{p}", "encoder.layers.{i}.feed_forward.output_dense.{p}", None),
    ("encoder.layers.{i}.final_layer_norm.{p}", "encoder.layers.{i}.final_layer_norm.{p}", None),
    ("encoder.layer_norm.{p}", "encoder.layer_norm.{p}", None),
    # WavLM's gated relative position bias
    ("encoder.layers.{i}.self_attn.grep_linear.{p}", "encoder.layers.{i}.attention.gru_rel_pos_linear.{p}", "wavlm"),
    ("encoder.layers.{i}.self_attn.grep_a", "encoder.layers.{i}.attention.gru_rel_pos_const", "wavlm"),
    ("encoder.layers.{i}.self_attn.relative_attention_bias.weight",
     "encoder.layers.{i}.attention.rel_attn_embed.weight", "wavlm"),
)

# Leading name components of tensors that only pre-training (or a fairseq task head) uses: reported as
# dropped by design, never as unmapped.
DROPPED_BY_DESIGN: dict[str, str] = {
    "final_proj": "pre-training only (HuBERT/wav2vec 2.0 prediction head)",
    "label_embs_concat": "pre-training only (HuBERT cluster embeddings)",
    "label_embs": "pre-training only (HuBERT cluster embeddings)",
    "quantizer": "pre-training only (wav2vec 2.0 quantizer)",
    "project_q": "pre-training only (wav2vec 2.0 quantizer projection)",
    "project_hid": "pre-training only",
    "target_glu": "pre-training only",
    "w2v_encoder": "task head (fine-tuned CTC output layer)",
    # transformers task heads (HubertForCTC, ...ForSequenceClassification)
    "lm_head": "task head",
    "classifier": "task head",
    "projector": "task head",
}

_WEIGHT_NORM_ALIASES = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}
_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "a": r"(?P<a>q|k|v|out)"}


def _compile(template: str) -> re.Pattern:
    out = re.escape(template)
    for name, rx in _PLACEHOLDERS.items():
        out = out.replace(re.escape("{" + name + "}"), rx)
    return re.compile(out + r"\Z")


_FORWARD = [(_compile(fs), hf, cond) for fs, hf, cond in RULES]
_BACKWARD = [(_compile(hf), fs, cond) for fs, hf, cond in RULES]


def _applies(cond: Optional[str], norm: str, model_type: str, groups: dict) -> bool:
    if cond is None:
        return True
    if cond == "wavlm":
        return model_type == "wavlm"
    if cond == "group":  # the group-norm CNN only normalises its first layer
        return norm == "group" and groups.get("i") == "0"
    return norm == cond


def canonical_fairseq_key(key: str) -> str:
    """Spell weight-norm tensors the fairseq way (``weight_g``/``weight_v``)."""
    for new, old in _WEIGHT_NORM_ALIASES.items():
        if key.endswith(new):
            return key[: -len(new)] + old
    return key


def adapt_weight_norm(key: str, target_keys: Iterable[str]) -> str:
    """Rename ``weight_g``/``weight_v`` to the spelling ``target_keys`` use (torch parametrizations or not)."""
    target = set(target_keys)
    if key in target:
        return key
    for new, old in _WEIGHT_NORM_ALIASES.items():
        if key.endswith("." + old):
            alt = key[: -len(old)] + new
            if alt in target:
                return alt
        if key.endswith("." + new):
            alt = key[: -len(new)] + old
            if alt in target:
                return alt
    return key


def fairseq_to_hf_key(key: str, model_type: str, norm: str) -> Optional[str]:
    """The transformers name of a fairseq-named tensor, or None when no rule matches."""
    key = canonical_fairseq_key(key)
    for rx, template, cond in _FORWARD:
        m = rx.match(key)
        if m and _applies(cond, norm, model_type, m.groupdict()):
            return template.format(**m.groupdict())
    return None


def hf_to_fairseq_key(key: str, model_type: str, norm: str) -> Optional[str]:
    """The fairseq name of a transformers-named tensor (weight norm spelled ``weight_g``/``weight_v``)."""
    for new, old in _WEIGHT_NORM_ALIASES.items():
        if key.endswith(new):
            key = key[: -len(new)] + old
    for rx, template, cond in _BACKWARD:
        m = rx.match(key)
        if m and _applies(cond, norm, model_type, m.groupdict()):
            return template.format(**m.groupdict())
    return None


def dropped_reason(key: str) -> Optional[str]:
    """Why a fairseq-named tensor is left out on purpose (pre-training only, task head), else None."""
    return DROPPED_BY_DESIGN.get(key.split(".", 1)[0])


# --- configs ---------------------------------------------------------------------------------------

# fairseq defaults (wav2vec2/hubert base) for fields old checkpoints may omit
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2",
    "conv_bias": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "layer_norm_first": False,
    "mask_prob": 0.65,
    "mask_length": 10,
    "mask_channel_prob": 0.0,
    "mask_channel_length": 10,
    "num_buckets": 320,
    "max_distance": 800,
}
EXTRACTOR_MODES = {"default": "group", "layer_norm": "layer"}


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's ``conv_feature_layers`` string (``"[(512,10,5)] + [(512,3,2)] * 4"``) without eval:
    only list/tuple literals of integers combined with ``+`` and ``*`` are accepted."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported element {ast.dump(node)[:60]}")

    try:
        layers = ev(ast.parse(str(spec).strip(), mode="eval"))
        layers = [tuple(int(v) for v in layer) for layer in layers]
    except (SyntaxError, ValueError, TypeError) as e:
        raise ValueError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride): {e}") from None
    if not layers or any(len(layer) != 3 for layer in layers):
        raise ValueError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride)")
    return layers


def hf_config_from_fairseq(model_type: str, model_cfg: dict, normalize: bool = False):
    """A transformers config (HubertConfig / Wav2Vec2Config / WavLMConfig) from a fairseq model cfg dict."""
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    cfg = {**FAIRSEQ_DEFAULTS, **{k: v for k, v in model_cfg.items() if v is not None}}
    for key, supported in (("layer_type", ("transformer",)), ("pos_conv_depth", (1,))):
        if key in model_cfg and model_cfg[key] not in supported:
            raise ValueError(f"model cfg {key}={model_cfg[key]!r} is not supported (only {supported})")
    mode = cfg["extractor_mode"]
    if mode not in EXTRACTOR_MODES:
        raise ValueError(f"model cfg extractor_mode={mode!r}: expected one of {sorted(EXTRACTOR_MODES)}")
    layers = parse_conv_layers(cfg["conv_feature_layers"])
    kw = dict(
        hidden_size=int(cfg["encoder_embed_dim"]),
        num_hidden_layers=int(cfg["encoder_layers"]),
        num_attention_heads=int(cfg["encoder_attention_heads"]),
        intermediate_size=int(cfg["encoder_ffn_embed_dim"]),
        hidden_act=str(cfg["activation_fn"]),
        feat_extract_activation="gelu",
        feat_extract_norm=EXTRACTOR_MODES[mode],
        do_stable_layer_norm=bool(cfg["layer_norm_first"]),
        conv_dim=tuple(l[0] for l in layers),
        conv_kernel=tuple(l[1] for l in layers),
        conv_stride=tuple(l[2] for l in layers),
        conv_bias=bool(cfg["conv_bias"]),
        num_conv_pos_embeddings=int(cfg["conv_pos"]),
        num_conv_pos_embedding_groups=int(cfg["conv_pos_groups"]),
        hidden_dropout=float(cfg["dropout"]),
        attention_dropout=float(cfg["attention_dropout"]),
        activation_dropout=float(cfg["activation_dropout"]),
        feat_proj_dropout=float(cfg["dropout_input"]),
        layerdrop=float(cfg["encoder_layerdrop"]),
        mask_time_prob=float(cfg["mask_prob"]),
        mask_time_length=int(cfg["mask_length"]),
        mask_feature_prob=float(cfg["mask_channel_prob"]),
        mask_feature_length=int(cfg["mask_channel_length"]),
        layer_norm_eps=1e-5,  # fairseq LayerNorm default
    )
    if model_type == "hubert":
        config = HubertConfig(**kw)
    elif model_type == "wav2vec2":
        config = Wav2Vec2Config(**kw)
    elif model_type == "wavlm":
        config = WavLMConfig(**kw, num_buckets=int(cfg["num_buckets"]), max_bucket_distance=int(cfg["max_distance"]))
    else:
        raise ValueError(f"unknown model type {model_type!r}: expected hubert, wav2vec2 or wavlm")
    config.architectures = [type(config).__name__.replace("Config", "Model")]
    return config


def fairseq_cfg_from_hf(config) -> dict:
    """The inverse of :func:`hf_config_from_fairseq` (fairseq field names), e.g. to write test fixtures."""
    model_type = config.model_type
    convs = zip(config.conv_dim, config.conv_kernel, config.conv_stride)
    layers = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in convs)
    cfg = {
        "_name": {"hubert": "hubert", "wav2vec2": "wav2vec2", "wavlm": "wavlm"}[model_type],
        "extractor_mode": "default" if config.feat_extract_norm == "group" else "layer_norm",
        "encoder_layers": config.num_hidden_layers,
        "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.intermediate_size,
        "encoder_attention_heads": config.num_attention_heads,
        "activation_fn": config.hidden_act,
        "layer_norm_first": bool(config.do_stable_layer_norm),
        "conv_feature_layers": layers,
        "conv_bias": bool(config.conv_bias),
        "conv_pos": config.num_conv_pos_embeddings,
        "conv_pos_groups": config.num_conv_pos_embedding_groups,
        "dropout": config.hidden_dropout,
        "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout,
        "dropout_input": config.feat_proj_dropout,
        "encoder_layerdrop": config.layerdrop,
        "mask_prob": config.mask_time_prob,
        "mask_length": config.mask_time_length,
        "mask_channel_prob": config.mask_feature_prob,
        "mask_channel_length": config.mask_feature_length,
    }
    if model_type == "wavlm":
        cfg.update(num_buckets=config.num_buckets, max_distance=config.max_bucket_distance,
                   relative_position_embedding=True, gru_rel_pos=True)
    return cfg


def model_type_from_name(name: Any) -> Optional[str]:
    """hubert / wav2vec2 / wavlm from a fairseq ``_name``/``arch`` or an s3prl upstream name."""
    s = str(name or "").lower()
    for needle, kind in (("wavlm", "wavlm"), ("hubert", "hubert"), ("wav2vec", "wav2vec2")):
        if needle in s:
            return kind
    return None


def model_type_from_keys(keys: Iterable[str]) -> Optional[str]:
    """Guess the family from tensors only one family has; None when the keys do not tell."""
    keys = list(keys)
    if any(".grep_linear." in k or ".relative_attention_bias." in k for k in keys):
        return "wavlm"
    if any(k.split(".", 1)[0] in ("label_embs_concat", "label_embs") for k in keys):
        return "hubert"
    if any(k.split(".", 1)[0] in ("quantizer", "project_q") for k in keys):
        return "wav2vec2"
    return None

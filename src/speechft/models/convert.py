"""Convert fairseq, s3prl and Speech-FT release checkpoints to plain Hugging Face directories.

Layouts read (``fmt="auto"`` tells them apart from the top-level entries):

=================== ===========================================================================
fairseq             ``{"cfg": {"model": {...}, "task": {...}}, "model": state_dict, ...}``; older files
                    carry ``"args"`` (argparse.Namespace) instead of ``"cfg"``; fine-tuned CTC models
                    (``w2v_encoder.w2v_model.*``) take the architecture from ``cfg.model.w2v_args``.
                    Microsoft's WavLM files are ``{"cfg": {flat model cfg}, "model": state_dict}``.
s3prl-upstream      s3prl's converted files: ``{"task_cfg", "model_cfg", "model_weight"[, "dictionaries_symbols"]}``
s3prl-downstream    s3prl training checkpoints ``{"Upstream": {"model.<fairseq key>": ...}, "Featurizer",
                    "Downstream", "Args", "Config", ...}``: they hold no architecture, which comes from
                    ``config`` or, failing that, from ``Args.upstream_ckpt`` when that file exists here.
speechft-release    the official ``merged_model.pt``: the s3prl-upstream layout (``model_weight`` +
                    ``task_cfg``/``model_cfg``), or ``model`` + ``cfg``/``Config`` (its WavLM files)
safetensors         a ``.safetensors`` state dict (fairseq or transformers names); architecture from
                    ``config`` or a JSON ``config``/``cfg`` entry in the file's metadata
state-dict          the same, pickled with ``torch.save``
=================== ===========================================================================

Pickles are read with ``weights_only=True``; a file that needs full unpickling is refused unless
``allow_unsafe_pickle`` is set (then classes of packages that are not installed, e.g. fairseq's
``Dictionary``, are replaced by inert placeholders). After conversion every mapped tensor is compared
with its source (bit-identical; float16/bfloat16 sources are widened to float32, which is exact) and the
model runs one forward pass.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from . import keymaps as km
from .checkpoints import cfg_from_checkpoint, is_state_dict, read_checkpoint, to_plain
from .encoder import HFEncoder
from .io import SAVED_MASK_TIME_PROB, save_encoder
from ..utils.io import atomic_dir, check_not_input

log = logging.getLogger(__name__)

FORMATS = ("auto", "fairseq", "s3prl-upstream", "s3prl-downstream", "speechft-release", "safetensors", "state-dict")
# the first CNN weight, under each naming: finds the wrapper prefix and tells the namings apart
_CNN_ANCHORS = {
    "fairseq": "feature_extractor.conv_layers.0.0.weight",
    "hf": "feature_extractor.conv_layers.0.conv.weight",
}
_SHOW = 20  # keys listed per category in messages


@dataclass
class ConversionReport:
    source: str
    out_dir: str
    format: str
    model_type: str
    architecture: str
    config_source: str
    mapped: int = 0
    unmapped: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # source key or entry -> why it was left out
    synthesized: dict[str, str] = field(default_factory=dict)  # output key -> why it was made up
    notes: list[str] = field(default_factory=list)
    verified: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"source:          {self.source}",
            f"detected format: {self.format}",
            f"model:           {self.model_type} -> {self.architecture} (architecture from {self.config_source})",
            f"mapped tensors:  {self.mapped}",
            f"dropped:         {len(self.dropped)}" + "".join(f"\n  {k}: {v}" for k, v in sorted(self.dropped.items())),
            f"unmapped:        {len(self.unmapped)}" + "".join(f"\n  {k}" for k in self.unmapped),
        ]
        out += [f"synthesized:     {k} ({v})" for k, v in self.synthesized.items()]
        out += [f"note:            {n}" for n in self.notes]
        out.append(f"verified:        {'yes (tensors bit-identical, forward pass ok)' if self.verified else 'no'}")
        out.append(f"written:         {self.out_dir}")
        return out


# --- layouts ---------------------------------------------------------------------------------------

def detect_format(obj: Any, path: Path, safetensors_meta: Optional[dict] = None) -> str:
    """The layout name (see the module docstring) of a checkpoint read by :func:`read_checkpoint`."""
    if safetensors_meta is not None:
        return "safetensors"
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    if is_state_dict(obj):
        return "state-dict"
    if "Upstream" in obj:
        return "s3prl-downstream"
    release = path.name == "merged_model.pt" or _release_config(path) is not None
    if "model_weight" in obj or ("model" in obj and any(k in obj for k in ("cfg", "Config", "args"))):
        if release:
            return "speechft-release"
        return "s3prl-upstream" if "model_weight" in obj else "fairseq"
    if "Downstream" in obj:
        raise ValueError(f"{path} is an s3prl downstream checkpoint without an 'Upstream' entry: the upstream was "
                         "frozen while training, so convert the upstream checkpoint it was trained from instead")
    raise ValueError(
        f"{path}: unknown checkpoint layout (top-level entries: {sorted(map(str, obj))[:_SHOW]}); expected "
        "fairseq ('model' + 'cfg'/'args'), s3prl ('model_weight' + 'model_cfg', or 'Upstream'), or a state dict"
    )


def _release_config(path: Path) -> Optional[dict]:
    """The merge config Speech-FT writes next to ``merged_model.pt`` (recorded in the model card)."""
    p = path.with_name("config.yaml")
    if not p.is_file():
        return None
    try:
        import yaml

        cfg = yaml.safe_load(p.read_text())
    except Exception:
        return None
    return cfg if isinstance(cfg, dict) and "finetune_model_paths" in cfg else None


def _split_prefix(sd: Mapping, path: Path) -> tuple[str, str, dict, list[str]]:
    """(naming "fairseq"|"hf", wrapper prefix, {stripped key: tensor}, keys outside the prefix)."""
    for naming, anchor in _CNN_ANCHORS.items():
        prefixes = sorted({k[: -len(anchor)] for k in sd if k.endswith(anchor)}, key=len)
        if prefixes:
            p = prefixes[0]
            inside = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
            return naming, p, inside, [k for k in sd if not k.startswith(p)]
    raise ValueError(
        f"{path}: no CNN feature-extractor tensor ('...{_CNN_ANCHORS['fairseq']}' or "
        f"'...{_CNN_ANCHORS['hf']}') among its {len(sd)} tensors: not a HuBERT/wav2vec 2.0/WavLM encoder"
    )


# --- architecture ----------------------------------------------------------------------------------

@dataclass
class _Arch:
    """Where the architecture comes from: a transformers config, or a fairseq model cfg to translate."""

    source: str
    hf_config: Any = None
    model_cfg: Optional[dict] = None
    task_cfg: dict = field(default_factory=dict)
    name: Optional[str] = None  # family hint (fairseq _name / arch, s3prl upstream name)
    normalize: Optional[bool] = None


def _arch_from_ref(ref: str | Path, allow_unsafe_pickle: bool) -> _Arch:
    """``--config``: an HF model dir, a config.json (transformers or fairseq fields) or a checkpoint with a cfg."""
    from transformers import AutoConfig

    p = Path(ref).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"--config {p}: a directory without config.json")
        pre = p / "preprocessor_config.json"
        norm = bool(json.loads(pre.read_text()).get("do_normalize", False)) if pre.is_file() else False
        return _Arch(str(p), hf_config=AutoConfig.from_pretrained(p), normalize=norm)
    if not p.is_file():
        raise FileNotFoundError(f"--config {p} not found (expected an HF model dir, a config.json or a checkpoint)")
    if p.suffix == ".json":
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {p}: not valid JSON ({e})") from None
        if isinstance(d, dict) and "model_type" in d:
            return _Arch(str(p), hf_config=AutoConfig.for_model(**d))
        if isinstance(d, dict) and "encoder_layers" in d:
            return _Arch(str(p), model_cfg=d, task_cfg=d, name=d.get("_name"))
        raise ValueError(f"--config {p}: neither a transformers config (model_type) nor a fairseq cfg (encoder_layers)")
    obj, _ = read_checkpoint(p, allow_unsafe_pickle)
    model_cfg, task_cfg, name = cfg_from_checkpoint(obj) if isinstance(obj, Mapping) else (None, {}, None)
    if model_cfg is None:
        raise ValueError(f"--config {p}: the checkpoint carries no model cfg (model_cfg / cfg / args)")
    return _Arch(str(p), model_cfg=model_cfg, task_cfg=task_cfg, name=name)


def _arch_of_downstream(obj: Mapping, src: Path, allow_unsafe_pickle: bool) -> _Arch:
    args = to_plain(obj.get("Args")) or {}
    ckpt = str(args.get("upstream_ckpt") or "") if isinstance(args, dict) else ""
    name = args.get("upstream") if isinstance(args, dict) else None
    if ckpt and Path(ckpt).expanduser().is_file():
        log.info("architecture of %s taken from its Args.upstream_ckpt %s", src, ckpt)
        arch = _arch_from_ref(ckpt, allow_unsafe_pickle)
        arch.name = arch.name or name
        return arch
    raise ValueError(
        f"{src} is an s3prl downstream checkpoint: it holds the fine-tuned weights but not the architecture. "
        "Pass --config with the upstream checkpoint it was trained from (fairseq / s3prl .pt), an HF model "
        f"directory or a config.json (Args.upstream={name!r}, Args.upstream_ckpt={ckpt or None!r} is not here)"
    )


def _family(model_type: Optional[str], arch: _Arch, keys) -> str:
    hf_type = getattr(arch.hf_config, "model_type", None)
    if model_type and hf_type and model_type != hf_type:
        raise ValueError(f"--model-type {model_type} contradicts --config {arch.source} (model_type {hf_type})")
    family = model_type or hf_type or km.model_type_from_name(arch.name) or km.model_type_from_keys(keys)
    if family is None:
        raise ValueError("cannot tell whether the weights are HuBERT, wav2vec 2.0 or WavLM: pass --model-type")
    if family not in ("hubert", "wav2vec2", "wavlm"):
        raise ValueError(f"model type {family!r} is not supported (hubert, wav2vec2, wavlm)")
    return family


# --- conversion ------------------------------------------------------------------------------------

def _check_output(out_dir: Path, src: Path, config, overwrite: bool) -> None:
    """Refuse an output folder that is an input, a file, or (without ``overwrite``) a non-empty folder."""
    check_not_input(out_dir, {"checkpoint": src, "--config": config})  # --overwrite replaces out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output path {out_dir} exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {out_dir} exists and is not empty (pass --overwrite to replace it)")


def _layout(obj: dict, meta: Optional[dict], src: Path, fmt: str) -> str:
    """The checkpoint's format: the detected layout, or ``fmt`` when it is compatible with it."""
    detected = detect_format(obj, src, meta)
    groups = [{"fairseq", "s3prl-upstream", "speechft-release"}, {"safetensors", "state-dict"}, {"s3prl-downstream"}]
    if fmt != "auto" and not any(fmt in g and detected in g for g in groups):
        raise ValueError(f"{src} is not a {fmt} checkpoint: its layout is {detected} "
                         f"(top-level entries: {sorted(map(str, obj))[:_SHOW]})")
    return detected if fmt == "auto" else fmt


def _weights_and_arch(obj: dict, meta: Optional[dict], src: Path, fmt: str, arch: Optional[_Arch],
                      allow_unsafe_pickle: bool) -> tuple[dict, _Arch, dict[str, str]]:
    """The state dict inside a ``fmt`` checkpoint, its architecture (``arch`` when given, else what the file
    carries) and the top-level entries dropped by design (name -> reason)."""
    dropped: dict[str, str] = {}
    if fmt == "s3prl-downstream":
        sd = obj["Upstream"]
        for entry in ("Featurizer", "Downstream"):
            if entry in obj:
                dropped[entry] = "s3prl task head (entry), not part of the encoder"
        arch = arch or _arch_of_downstream(obj, src, allow_unsafe_pickle)
    elif fmt in ("safetensors", "state-dict"):
        sd = obj
        cfg_json = (meta or {}).get("config") or (meta or {}).get("cfg")
        if arch is None and cfg_json:
            d = json.loads(cfg_json)
            arch = _Arch(f"{src} metadata", model_cfg=d, task_cfg=d, name=d.get("_name"))
    else:
        sd = obj.get("model_weight") if "model_weight" in obj else obj.get("model")
        if arch is None:
            model_cfg, task_cfg, name = cfg_from_checkpoint(obj)
            if model_cfg is not None:
                arch = _Arch(f"{src} (checkpoint cfg)", model_cfg=model_cfg, task_cfg=task_cfg, name=name)
    if not is_state_dict(sd):
        raise ValueError(f"{src}: the weights entry of this {fmt} checkpoint is not a dict of tensors")
    if arch is None:
        raise ValueError(f"{src} ({fmt}) carries no architecture: pass --config (an HF model dir, a config.json, "
                         "or the fairseq/s3prl checkpoint the weights come from)")
    return sd, arch, dropped


def _match_masking(hf_config, has_mask: bool) -> list[str]:
    """transformers creates ``masked_spec_embed`` only when masking is on: set the config's masking so that
    the model has a mask embedding exactly when the checkpoint does. The notes on what changed."""
    masking = hf_config.mask_time_prob > 0 or hf_config.mask_feature_prob > 0
    if has_mask and not masking:
        hf_config.mask_time_prob = SAVED_MASK_TIME_PROB
        return [f"mask_time_prob set to {SAVED_MASK_TIME_PROB} so the model keeps its mask embedding"]
    if masking and not has_mask:
        hf_config.mask_time_prob = hf_config.mask_feature_prob = 0.0
        return ["the checkpoint has no mask embedding: masking disabled in the config"]
    return []


def _dtype_notes(mapped: dict) -> list[str]:
    """Notes on source tensors that were not float32 (all are stored as float32)."""
    dtypes = {str(t.dtype).replace("torch.", "") for _, t in mapped.values()} - {"float32"}
    notes = []
    if dtypes & {"float16", "bfloat16"}:
        notes.append("float16/bfloat16 source tensors stored as float32 (an exact widening)")
    if dtypes - {"float16", "bfloat16"}:
        notes.append(f"source tensors in {', '.join(sorted(dtypes - {'float16', 'bfloat16'}))} cast to float32 "
                     "(compared after the cast)")
    return notes


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    allow_unsafe_pickle: bool = False,
    model_type: Optional[str] = None,
    fmt: str = "auto",
    config: Optional[str | Path] = None,
    strict: bool = False,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert ``src`` to an HF directory ``out_dir`` (written atomically, verified before it appears).

    ``config`` (HF dir, config.json, or a checkpoint with a cfg) gives the architecture when the file has
    none (s3prl downstream, bare state dicts) and overrides it otherwise. ``strict`` refuses tensors that
    are neither mapped nor dropped by design."""
    src, out_dir = Path(src).expanduser(), Path(out_dir).expanduser()
    if fmt not in FORMATS:
        near = difflib.get_close_matches(fmt, FORMATS, n=1)
        raise ValueError(f"unknown format {fmt!r}" + (f" (did you mean {near[0]!r}?)" if near else "") +
                         f"; choose from {', '.join(FORMATS)}")
    _check_output(out_dir, src, config, overwrite)
    obj, meta = read_checkpoint(src, allow_unsafe_pickle)
    fmt = _layout(obj, meta, src, fmt)
    arch: Optional[_Arch] = _arch_from_ref(config, allow_unsafe_pickle) if config is not None else None
    sd, arch, dropped = _weights_and_arch(obj, meta, src, fmt, arch, allow_unsafe_pickle)
    naming, prefix, inside, outside = _split_prefix(sd, src)
    family = _family(model_type, arch, inside.keys())
    if arch.hf_config is not None:
        hf_config = copy.deepcopy(arch.hf_config)
    else:
        hf_config = km.hf_config_from_fairseq(family, arch.model_cfg)
    normalize = arch.normalize if arch.normalize is not None else bool(
        (arch.task_cfg or {}).get("normalize") or (arch.model_cfg or {}).get("normalize"))
    notes = _match_masking(hf_config, ("mask_emb" if naming == "fairseq" else "masked_spec_embed") in inside)

    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(hf_config)
    arch_name = type(model).__name__
    target = model.state_dict()
    mapped, unmapped = _map_tensors(inside, prefix, naming, family, hf_config, target, dropped, src, arch_name)
    for k in outside:  # keys beside the encoder's prefix: a fine-tuned model's head, or unknown
        reason = km.dropped_reason(k)
        if reason:
            dropped[k] = reason
        else:
            unmapped.append(k)
    synthesized = _synthesize(mapped, inside, naming, hf_config, target)
    missing = [k for k in target if k not in mapped and k not in synthesized]
    if missing:
        raise ValueError(f"{src}: {len(missing)} tensors of the {arch_name} built from {arch.source} are not in the "
                         f"checkpoint: {missing[:_SHOW]} (the config does not match the weights: wrong --config "
                         "or --model-type?)")
    if strict and unmapped:
        raise ValueError(f"{src}: {len(unmapped)} tensors are neither mapped nor dropped by design (--strict): "
                         f"{unmapped[:_SHOW]}")
    model.load_state_dict({**{k: t for k, (_, t) in mapped.items()}, **synthesized}, strict=True)
    notes += _dtype_notes(mapped)

    report = ConversionReport(
        source=str(src), out_dir=str(out_dir), format=fmt, model_type=family, architecture=arch_name,
        config_source=arch.source, mapped=len(mapped), unmapped=unmapped, dropped=dropped,
        synthesized={k: v for k, v in _SYNTH_REASONS.items() if k in synthesized}, notes=notes,
    )
    card = {"name": out_dir.name, "converted_from": str(src.resolve()), "source_sha256": _sha256(src),
            "source_format": fmt, "model_type": family, "architecture_from": arch.source, "mapped_tensors": len(mapped),
            "unmapped_keys": unmapped, "dropped_keys": dropped, "synthesized": report.synthesized, "notes": notes}
    if fmt == "speechft-release" and _release_config(src) is not None:
        card["speechft_merge_config"] = _release_config(src)
    enc = HFEncoder(model, name=out_dir.name)
    enc.normalize_input = normalize
    with atomic_dir(out_dir) as tmp:
        save_encoder(enc, tmp / "model", card=card)
        for p in (tmp / "model").iterdir():
            os.replace(p, tmp / p.name)
        (tmp / "model").rmdir()
        _verify(tmp, mapped, src)
    report.verified = True
    log.info("converted %s (%s, %d tensors) -> %s", src, fmt, len(mapped), out_dir)
    return report


_SYNTH_REASONS = {
    "feature_projection.projection.weight": "identity: fairseq has no post_extract_proj when the CNN width "
                                            "equals the hidden size",
    "feature_projection.projection.bias": "zeros, with the identity projection",
}


def _map_tensors(inside, prefix, naming, family, hf_config, target, dropped, src, arch_name):
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    unmapped: list[str] = []
    for k, v in inside.items():
        full = prefix + k
        reason = km.dropped_reason(k)
        if v is None:
            dropped[full] = "empty entry"
            continue
        hf = km.fairseq_to_hf_key(k, family, hf_config.feat_extract_norm) if naming == "fairseq" else k
        hf = km.adapt_weight_norm(hf, target) if hf else None
        if hf is None or hf not in target:
            if reason:
                dropped[full] = reason
            else:
                unmapped.append(full)
            continue
        if tuple(v.shape) != tuple(target[hf].shape):
            raise ValueError(f"{src}: tensor {full} has shape {tuple(v.shape)} but {hf} of the {arch_name} built "
                             f"from the config has {tuple(target[hf].shape)}: the config does not match the weights")
        mapped[hf] = (full, v)
    return mapped, unmapped


def _synthesize(mapped, inside, naming, hf_config, target) -> dict[str, torch.Tensor]:
    w, b = "feature_projection.projection.weight", "feature_projection.projection.bias"
    if (naming == "fairseq" and w in target and w not in mapped and "post_extract_proj.weight" not in inside
            and hf_config.conv_dim[-1] == hf_config.hidden_size):
        return {w: torch.eye(hf_config.hidden_size), b: torch.zeros(hf_config.hidden_size)}
    return {}


def _verify(model_dir: Path, mapped: dict, src: Path) -> None:
    """Reload with transformers alone, compare every mapped tensor with its source, run one forward."""
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(model_dir, output_loading_info=True)
    if info.get("missing_keys") or info.get("unexpected_keys"):
        raise ValueError(f"converting {src}: the written model reloads with missing {info['missing_keys'][:_SHOW]} "
                         f"/ unexpected {info['unexpected_keys'][:_SHOW]} tensors")
    state = model.state_dict()
    bad = [f"{full} -> {hf}" for hf, (full, t) in mapped.items()
           if hf not in state or not torch.equal(state[hf], t.to(state[hf].dtype))]
    if bad:
        raise ValueError(f"converting {src}: {len(bad)} tensors differ from the source after reloading: {bad[:_SHOW]}")
    enc = HFEncoder(model.eval(), name="verify")
    wav = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states, _ = enc(wav, torch.tensor([16000, 12000]))
    if len(states) != enc.num_layers + 1 or not all(torch.isfinite(s).all() for s in states):
        raise ValueError(f"converting {src}: the converted model's forward pass gave non-finite or missing states")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

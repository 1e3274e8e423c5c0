"""Load an encoder from a reference and save encoders as plain Hugging Face directories.

Model references, read by :func:`resolve_ref` for :func:`load_encoder` and for
:func:`resolve_model_dir` (merging):

* ``speechft-tiny``          the pre-trained default shipped inside the package
* ``speechft-tiny-v1``       its first version, shipped too (to compare results)
* ``speechft-tiny-v2``       its second version, shipped too
* ``speechft-tiny-random``   the same architecture, randomly initialised (fixed seed)
* ``fbank``                  log-mel filterbank frames (SUPERB's lower reference)
* a local directory          any transformers speech model saved with ``save_pretrained``
* a hub id                   ``owner/name``, e.g. ``facebook/hubert-base-ls960`` (needs network access)
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .. import paths
from ..paths import BUILTIN_NAMES, FBANK_NAME, TINY_NAME, TINY_RANDOM_NAME  # noqa: F401 (re-exported)
from ..utils.io import atomic_dir
from .encoder import HFEncoder, SpeechEncoder

log = logging.getLogger(__name__)

CARD_FILE = "speechft_card.json"
# mask_time_prob written to saved configs of models that own masked_spec_embed (hub HuBERT's value)
SAVED_MASK_TIME_PROB = 0.05


def tiny_config(**overrides):
    """The default architecture: HuBERT, 4 layers x 256 hidden, narrow (128-ch) CNN, ~3.7 M params."""
    from transformers import HubertConfig

    kw = dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_dim=(128,) * 7,
        feat_extract_norm="layer",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=64,
        num_conv_pos_embedding_groups=16,
        layerdrop=0.0,
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        vocab_size=32,
    )
    kw.update(overrides)
    return HubertConfig(**kw)


def build_model_from_config(config, seed: int = 0):
    """Instantiate a transformers model from a config with a fixed seed (tests, random baselines)."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(config)


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


@dataclass(frozen=True)
class ModelRef:
    """What a model reference names. ``kind``: ``"fbank"`` (the filterbank baseline), ``"random"``
    (speechft-tiny-random, built in memory), ``"dir"`` (a local HF directory at ``path``; the shipped
    speechft-tiny is one) or ``"hub"`` (a hub id, fetched by transformers / huggingface_hub)."""

    ref: str
    kind: str
    path: Optional[Path] = None


def looks_local(ref: str) -> bool:
    """A reference that can only be a path, never a hub id (``owner/name``): it starts with ``.``, ``/`` or
    ``~``, has a backslash, no ``/`` or more than one, ends with ``/``, or its first part exists here
    (``runs/nothere`` when ``runs/`` does). Such references are never sent to the hub."""
    if ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") != 1 or ref.endswith("/"):
        return True
    return Path(ref.split("/", 1)[0]).exists()


_RUN_FOLDERS_SAID: set = set()


def _model_dir(path: Path, ref: str) -> Path:
    """An existing folder -> the HF model directory it stands for: itself, or the ``encoder/`` of a
    fine-tuning / pre-training run folder (said once in the log)."""
    if is_hf_dir(path):
        return path
    if is_hf_dir(path / "encoder"):
        if str(path) not in _RUN_FOLDERS_SAID:
            _RUN_FOLDERS_SAID.add(str(path))
            log.info("%s is a run folder: using its encoder %s", ref, path / "encoder")
        return path / "encoder"
    if not path.is_dir():
        raise FileNotFoundError(f"model {ref!r}: not a directory (a model is a Hugging Face model folder; "
                                "use 'speechft convert' for checkpoint files)")
    if (path / "config.yaml").exists() or (path / "run.json").exists():
        raise FileNotFoundError(f"model {ref!r}: a run folder without encoder/ (unfinished? continue it with "
                                "--resume)")
    raise FileNotFoundError(
        f"{path}: not a Hugging Face model directory (no config.json); "
        "use 'speechft convert' for fairseq/s3prl/Speech-FT checkpoints"
    )


def resolve_ref(ref: Optional[str]) -> ModelRef:
    """The one reading of a model reference (module docstring); ``None`` means ``speechft-tiny``.

    A fine-tuning or pre-training run folder stands for its ``encoder/``. Raises FileNotFoundError when
    the shipped model is missing, a folder is not a Hugging Face model directory or a local-looking path
    (:func:`looks_local`) does not exist, and UnknownNameError for a short name that is neither built in
    nor a folder (with "did you mean"). Only ``owner/name`` references that are not local reach the hub.
    """
    from ..utils.names import UnknownNameError, unknown_name

    ref = str(ref or TINY_NAME)
    if ref == FBANK_NAME:
        return ModelRef(ref, "fbank")
    if ref == TINY_RANDOM_NAME:
        return ModelRef(ref, "random")
    shipped = paths.shipped_dir(ref)
    path = shipped or Path(ref).expanduser()
    if shipped and not is_hf_dir(path):
        raise FileNotFoundError(
            f"the shipped model {ref} is missing from {path}; reinstall speechft or run 'speechft pretrain' to rebuild it"
        )
    if path.exists():
        return ModelRef(ref, "dir", _model_dir(path, ref))
    if "/" not in ref and not ref.startswith((".", "~")) and "\\" not in ref:
        raise UnknownNameError(unknown_name("model", ref, BUILTIN_NAMES, known_label="built-in models")
                               + " (or give a model folder, or a hub id owner/name)")
    if not looks_local(ref):
        return ModelRef(ref, "hub")
    raise FileNotFoundError(f"model {ref!r}: no such directory")


def resolve_model_dir(ref: str) -> Path:
    """A model reference -> a local HF directory holding its weight files (what merging reads):
    speechft-tiny-random is saved once under the data home, a hub id is downloaded (json and
    safetensors files only); ``fbank`` has no weights and is a ValueError."""
    where = resolve_ref(ref)
    if where.kind == "fbank":
        raise ValueError("'fbank' is a feature baseline without weights; it cannot be merged")
    if where.kind == "random":  # built in memory by load_encoder: materialise it once
        path = paths.data_home() / "models" / TINY_RANDOM_NAME
        if not is_hf_dir(path):
            save_encoder(load_encoder(TINY_RANDOM_NAME), path, card={"name": TINY_RANDOM_NAME})
        return path
    if where.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(ref, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as e:  # offline, unknown id, ...
            raise FileNotFoundError(f"cannot fetch model {ref!r} from the hub: {e}") from None
    return where.path


def _normalize_flag(ref: str) -> bool:
    try:
        from transformers import AutoFeatureExtractor

        fe = AutoFeatureExtractor.from_pretrained(ref)
        return bool(getattr(fe, "do_normalize", False))
    except Exception:  # no preprocessor config: raw waveform
        return False


def load_encoder(ref: Optional[str] = None, freeze_feature_extractor: bool = False) -> SpeechEncoder:
    """Load a model reference (see module docstring); ``None`` means the shipped ``speechft-tiny``."""
    where = resolve_ref(ref)
    ref = where.ref
    if where.kind == "fbank":
        from .fbank import FbankEncoder

        return FbankEncoder()
    if where.kind == "random":
        enc = HFEncoder(build_model_from_config(tiny_config(), seed=0), name=TINY_RANDOM_NAME)
        enc.normalize_input = True
    else:
        src = str(where.path) if where.path is not None else ref
        if where.path is not None:
            for st in sorted(where.path.glob("*.safetensors")):
                check_safetensors(st)  # a damaged file is reported, never half-loaded
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(src)
        except OSError as e:
            raise FileNotFoundError(f"cannot load model {ref!r}: {e}") from None
        enc = HFEncoder(model, name=ref)
        enc.normalize_input = _normalize_flag(src)
    enc.eval()
    if freeze_feature_extractor:
        enc.freeze_feature_extractor(True)
    return enc


def read_card(path: str | Path) -> dict:
    p = Path(path) / CARD_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def render_card(card: dict) -> str:
    lines = ["---", "library_name: transformers", "tags: [speech, speechft]", "---", ""]
    lines.append(f"# {card.get('name', 'speechft encoder')}\n")
    lines.append("Saved by speechft. Load it with `transformers.AutoModel.from_pretrained(<this dir>)`.\n")
    lines.append("| field | value |\n|---|---|")
    for k, v in card.items():
        if k in ("name", "notes"):
            continue
        if isinstance(v, (list, dict)):
            v = json.dumps(v)
        lines.append(f"| {k} | {v} |")
    if card.get("notes"):
        lines.append("\n" + str(card["notes"]))
    return "\n".join(lines) + "\n"


def _save_model_keeping_mask_embed(model, out_dir: Path) -> None:
    """``save_pretrained``, but a model that owns ``masked_spec_embed`` is saved with a config that
    recreates it: transformers only builds that tensor when ``mask_time_prob`` or ``mask_feature_prob``
    is > 0, and HFEncoder zeroes both for inference, so the reloaded model would silently drop it."""
    cfg = model.config
    if getattr(model, "masked_spec_embed", None) is not None and not (
        getattr(cfg, "mask_time_prob", 0.0) > 0 or getattr(cfg, "mask_feature_prob", 0.0) > 0
    ):
        import copy

        saved = copy.deepcopy(cfg)
        saved.mask_time_prob = SAVED_MASK_TIME_PROB
        model.config = saved
        try:
            model.save_pretrained(out_dir, safe_serialization=True)
        finally:
            model.config = cfg
        return
    model.save_pretrained(out_dir, safe_serialization=True)


def check_safetensors(path: str | Path) -> None:
    """Raise ValueError when a ``.safetensors`` file is truncated or its header is inconsistent, so a
    damaged file is reported instead of half-loaded (the format's header gives the exact file size)."""
    import struct

    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ValueError(f"header claims {n} bytes but the file has {size - 8} after the length")
            header = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"truncated or corrupt checkpoint file {path}: {e}") from None
    if 8 + n + end != size:
        raise ValueError(
            f"truncated or corrupt checkpoint file {path}: its header describes {8 + n + end} bytes, "
            f"the file has {size}"
        )


def save_encoder(encoder: SpeechEncoder, out_dir: str | Path, card: Optional[dict] = None) -> Path:
    """Write an HF-loadable directory atomically: config.json, model.safetensors,
    preprocessor_config.json, README.md (model card) and speechft_card.json."""
    from transformers import Wav2Vec2FeatureExtractor

    if not isinstance(encoder, HFEncoder):
        raise TypeError(f"only transformers encoders can be saved, not {type(encoder).__name__}")
    out_dir = Path(out_dir)
    card = dict(card or {})
    card.setdefault("name", out_dir.name)
    card.setdefault("architecture", type(encoder.model).__name__)
    card.setdefault("parameters", sum(p.numel() for p in encoder.model.parameters()))
    with atomic_dir(out_dir) as tmp:
        _save_model_keeping_mask_embed(encoder.model, tmp)
        Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=16000,
            padding_value=0.0,
            do_normalize=bool(getattr(encoder, "normalize_input", False)),
            return_attention_mask=encoder._use_mask,
        ).save_pretrained(tmp)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(render_card(card))
    return out_dir

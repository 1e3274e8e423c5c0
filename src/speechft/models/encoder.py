"""The encoder interface every part of the toolkit uses.

A :class:`SpeechEncoder` wraps a transformers speech model (HuBERT, wav2vec 2.0, WavLM,
data2vec-audio) or the FBANK baseline and returns *all* hidden states:

    states, frame_lens = encoder(wav, wav_lens)
        wav        FloatTensor [B, S]   16 kHz, zero-padded
        wav_lens   LongTensor  [B]      real samples per row
        states     list of L+1 FloatTensor [B, T, F]: CNN projection output, then every layer
        frame_lens LongTensor  [B]      real frames per row (T = max(frame_lens) or more)

Inference never masks in time and layerdrop is always 0.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn


class SpeechEncoder(nn.Module):
    """Common interface: ``forward(wav, wav_lens) -> (list of [B,T,F], frame_lens [B])``."""

    num_layers: int  # number of hidden states returned minus one
    hidden_size: int
    frame_rate: float = 50.0  # frames per second

    def freeze_feature_extractor(self, freeze: bool = True) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def feature_extractor_parameters(self):  # pragma: no cover - interface
        return []

    def fingerprint(self) -> str:
        """Content hash of the weights (used to key feature caches)."""
        return _hash_state(type(self).__name__, self.state_dict())

    def cnn_key(self) -> Optional[str]:
        """What the CNN's output depends on besides the audio (weights, input normalisation), or None
        when the encoder has no separable CNN. Encoders with equal keys compute identical CNN outputs,
        so :func:`forward_many` runs that CNN once for all of them."""
        return None

    def cnn_output(self):
        """Context manager for :func:`forward_many`; only called when :meth:`cnn_key` is not None."""
        raise NotImplementedError  # pragma: no cover - interface


def _hash_state(tag: str, state: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(tag.encode())
    for k, v in sorted(state.items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class _CNNSlot:
    """Captures the CNN's output during a forward (``value is None``), or replays ``value`` instead
    of running the CNN (the module's ``forward`` is shadowed for the duration)."""

    def __init__(self, fe: nn.Module, value: Optional[torch.Tensor]):
        self.fe, self.value, self._handle = fe, value, None

    def __enter__(self):
        if self.value is None:
            def capture(_module, _inputs, output):
                self.value = output
            self._handle = self.fe.register_forward_hook(capture)
        else:
            replay = self.value
            self.fe.forward = lambda *args, **kwargs: replay
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
        else:
            del self.fe.forward  # the instance attribute; the class method shows through again
        return False


def forward_many(encoders, wav: torch.Tensor, wav_lens: Optional[torch.Tensor] = None, keys=None) -> list:
    """``[e(wav, wav_lens) for e in encoders]``, running each distinct CNN once.

    Encoders whose :meth:`~SpeechEncoder.cnn_key` match (a model and its Stable-FT / Speech-FT
    descendants: the CNN stays frozen, so its weights are identical) reuse the first one's CNN
    output; the results are bit-identical to separate forwards. ``keys`` (one per encoder) saves
    hashing the CNN weights on every call when the caller computed them once.
    """
    keys = list(keys) if keys is not None else [e.cnn_key() for e in encoders]
    outs, done = [], {}
    for e, key in zip(encoders, keys):
        if key is None:
            outs.append(e(wav, wav_lens))
            continue
        with e.cnn_output(done.get(key)) as slot:
            outs.append(e(wav, wav_lens))
        done.setdefault(key, slot.value)
    return outs


def _feature_extractor(model: nn.Module) -> nn.Module:
    fe = getattr(model, "feature_extractor", None)
    if fe is None:
        raise AttributeError(f"{type(model).__name__} has no feature_extractor (CNN) to freeze")
    return fe


class HFEncoder(SpeechEncoder):
    """A transformers speech model (``HubertModel``, ``Wav2Vec2Model``, ``WavLMModel``, ...)."""

    def __init__(self, model: nn.Module, name: str = ""):
        super().__init__()
        # Inference semantics: no layerdrop, no time/feature masking. The config object is shared with
        # the model by transformers, so we copy it before changing anything.
        cfg = copy.deepcopy(model.config)
        for key in ("layerdrop", "mask_time_prob", "mask_feature_prob"):
            if hasattr(cfg, key):
                setattr(cfg, key, 0.0)
        model.config = cfg
        self.model = model
        self.name = name
        self.num_layers = int(cfg.num_hidden_layers)
        self.hidden_size = int(cfg.hidden_size)
        stride = 1
        for s in cfg.conv_stride:
            stride *= int(s)
        self.frame_rate = 16000.0 / stride
        # Models whose CNN uses group norm were trained on unpadded input: HF says not to pass a mask.
        self._use_mask = getattr(cfg, "feat_extract_norm", "layer") == "layer"
        # Per-utterance zero-mean/unit-variance input (the checkpoint's feature-extractor config says).
        self.normalize_input = False

    @property
    def config(self):
        return self.model.config

    def feature_extractor_parameters(self):
        return list(_feature_extractor(self.model).parameters())

    def freeze_feature_extractor(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) the CNN; works for classes without ``freeze_feature_encoder``."""
        fe = _feature_extractor(self.model)
        for p in fe.parameters():
            p.requires_grad_(not freeze)
        # transformers' own flag skips building the autograd graph through the CNN
        if hasattr(fe, "_requires_grad"):
            fe._requires_grad = not freeze

    def cnn_key(self) -> Optional[str]:
        fe = getattr(self.model, "feature_extractor", None)
        if fe is None:
            return None
        tag = f"{type(fe).__module__}.{type(fe).__name__}|norm={int(bool(self.normalize_input))}"
        return _hash_state(tag, fe.state_dict())

    def cnn_output(self, value: Optional[torch.Tensor] = None) -> _CNNSlot:
        return _CNNSlot(_feature_extractor(self.model), value)

    def frame_lengths(self, wav_lens: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(wav_lens).long()

    def forward(self, wav: torch.Tensor, wav_lens: Optional[torch.Tensor] = None):
        if wav_lens is None:
            wav_lens = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
        valid = torch.arange(wav.shape[1], device=wav.device)[None, :] < wav_lens[:, None]
        if self.normalize_input:
            n = wav_lens.clamp(min=1).to(wav.dtype)[:, None]
            mean = (wav * valid).sum(1, keepdim=True) / n
            var = (((wav - mean) * valid) ** 2).sum(1, keepdim=True) / n
            wav = ((wav - mean) / torch.sqrt(var + 1e-7)) * valid
        mask = valid.long() if self._use_mask else None
        out = self.model(wav, attention_mask=mask, output_hidden_states=True, return_dict=True)
        return list(out.hidden_states), self.frame_lengths(wav_lens)

"""HuBERT masked prediction: the encoder, the pre-training head and the loss.

The encoder is a plain transformers model (``HubertModel`` by default; any model whose forward
takes ``mask_time_indices`` and owns ``masked_spec_embed`` works). Masked frames of the CNN
projection output are replaced by the learned ``masked_spec_embed`` -- transformers only creates it
when the config has ``mask_time_prob > 0`` at construction, so :func:`prepare_encoder` makes sure
of that on a *copy* of the config (the config object is shared with the model).

The head holds HuBERT's pre-training-only parameters, kept out of the encoder's weights:
    final_proj         Linear(hidden -> proj_dim)
    label_embs_concat  [K, proj_dim] cluster embeddings
    logits[t, c] = cos(final_proj(h_t), e_c) / temperature
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# Saved configs keep SpecAugment at the value hub HuBERT checkpoints ship with, so that
# AutoModel.from_pretrained recreates (and loads) masked_spec_embed. Inference never masks.
SAVED_MASK_TIME_PROB = 0.05


class PretrainHead(nn.Module):
    def __init__(self, hidden_size: int, proj_dim: int, num_clusters: int, temperature: float = 0.1):
        super().__init__()
        self.final_proj = nn.Linear(hidden_size, proj_dim)
        # N(0, 1) rather than fairseq's U(0, 1): all-positive embeddings start with cos ~ 0.75 to
        # every projection and the first hundreds of steps only spread them apart.
        self.label_embs_concat = nn.Parameter(torch.randn(num_clusters, proj_dim))
        self.temperature = temperature

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h [N, H]`` -> logits ``[N, K]``."""
        p = F.normalize(self.final_proj(h), dim=-1, eps=1e-6)
        e = F.normalize(self.label_embs_concat, dim=-1, eps=1e-6)
        return p @ e.t() / self.temperature


def prepare_encoder(model: nn.Module, seed: int) -> nn.Module:
    """Give ``model`` its own config with masking enabled and a ``masked_spec_embed`` (created
    uniformly as transformers does, if a checkpoint came without one); layerdrop off."""
    cfg = copy.deepcopy(model.config)
    if getattr(cfg, "mask_time_prob", 0.0) <= 0.0:
        cfg.mask_time_prob = SAVED_MASK_TIME_PROB
    cfg.layerdrop = 0.0
    cfg.apply_spec_augment = True
    model.config = cfg
    if getattr(model, "masked_spec_embed", None) is None:
        g = torch.Generator().manual_seed(seed)
        model.masked_spec_embed = nn.Parameter(torch.rand(cfg.hidden_size, generator=g))
        log.info("created masked_spec_embed (the init model had none)")
    if not hasattr(model, "_mask_hidden_states"):
        raise TypeError(f"{type(model).__name__} cannot be pre-trained here: it takes no mask_time_indices")
    return model


def span_mask(frame_lens, T: int, prob: float, length: int, min_spans: int, rng: np.random.Generator) -> torch.Tensor:
    """HuBERT span masking: each real frame starts a span of ``length`` with probability ``prob``
    (count drawn as ``int(prob * L + u)``, at least ``min_spans``), spans may overlap. ``[B, T]`` bool."""
    mask = np.zeros((len(frame_lens), T), dtype=bool)
    for b, L in enumerate(int(x) for x in frame_lens):
        if L <= 0:
            continue
        span = min(length, max(1, L // 2))  # very short rows: never mask everything
        n = max(min_spans, int(prob * L + rng.random()))
        starts = rng.choice(L - span + 1, size=min(n, L - span + 1), replace=False)
        for s in starts:
            mask[b, s:s + span] = True
    return torch.from_numpy(mask)


def normalize_wav(wav: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
    """Per-utterance zero mean / unit variance over the real samples (as ``HFEncoder`` does)."""
    valid = torch.arange(wav.shape[1])[None, :] < wav_lens[:, None]
    n = wav_lens.clamp(min=1).to(wav.dtype)[:, None]
    mean = (wav * valid).sum(1, keepdim=True) / n
    var = (((wav - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return ((wav - mean) / torch.sqrt(var + 1e-7)) * valid


def masked_prediction_loss(model: nn.Module, head: PretrainHead, batch: dict, mask_rng: np.random.Generator,
                           cfg, normalize: bool = True) -> tuple[torch.Tensor, dict]:
    """One forward pass with span masking. Returns the loss (mean CE over masked frames, plus
    ``unmasked_weight`` x mean CE over unmasked frames) and counts for logging."""
    wav, wav_lens, targets = batch["wav"], batch["wav_lens"], batch["targets"]
    if normalize:
        wav = normalize_wav(wav, wav_lens)
    frame_lens = model._get_feat_extract_output_lengths(wav_lens).long()
    T = int(model._get_feat_extract_output_lengths(torch.tensor(wav.shape[1])))
    # Targets and frames can differ by a frame or two (feature source vs CNN): trim to the shorter.
    n_tgt = (targets >= 0).sum(1)
    frame_lens = torch.minimum(frame_lens, n_tgt)
    mask = span_mask(frame_lens.tolist(), T, cfg.mask_prob, cfg.mask_length, cfg.mask_min_spans, mask_rng)
    use_mask = getattr(model.config, "feat_extract_norm", "layer") == "layer"
    attn = (torch.arange(wav.shape[1])[None, :] < wav_lens[:, None]).long() if use_mask else None
    h = model(wav, attention_mask=attn, mask_time_indices=mask, return_dict=True).last_hidden_state
    T = min(T, h.shape[1], targets.shape[1])
    h, mask, targets = h[:, :T], mask[:, :T], targets[:, :T]
    valid = torch.arange(T)[None, :] < frame_lens[:, None]
    m_sel, u_sel = mask & valid, ~mask & valid
    logits_m = head(h[m_sel])
    loss = F.cross_entropy(logits_m, targets[m_sel])
    stats = {"masked_frames": int(m_sel.sum()), "masked_correct": int((logits_m.argmax(-1) == targets[m_sel]).sum()),
             "masked_loss": float(loss.detach())}
    if cfg.unmasked_weight > 0 and u_sel.any():
        logits_u = head(h[u_sel])
        loss = loss + cfg.unmasked_weight * F.cross_entropy(logits_u, targets[u_sel])
        stats["unmasked_correct"] = int((logits_u.argmax(-1) == targets[u_sel]).sum())
        stats["unmasked_frames"] = int(u_sel.sum())
    return loss, stats

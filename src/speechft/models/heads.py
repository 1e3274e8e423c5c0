"""Task heads (the paper's task prediction model D) and the learnable weighted layer sum.

Every head takes the encoder's hidden states and frame lengths and returns logits:

    head(states, frame_lens) -> logits
        states      list of L+1 FloatTensor [B, T, F], or the same stacked in one [L+1, B, T, F]
                    tensor, or a single [B, T, F] tensor (one state: used as it is)
        frame_lens  LongTensor [B]
        logits      ctc:      FloatTensor [B, T, V]  (V = vocab incl. blank at index 0)
                    classify: FloatTensor [B, C]
                    slots:    list of FloatTensor [B, C_k], one per slot

``head.loss(logits, frame_lens, targets)`` and ``head.predict(logits, frame_lens)`` complete the
contract; targets are what :func:`speechft.tasks` target encoders produce (token-id lists, class
indices, or per-slot index lists). CTC loss is always computed in float32.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

States = Union[Sequence[torch.Tensor], torch.Tensor]


class WeightedLayerSum(nn.Module):
    """SUPERB's learnable softmax-weighted sum over hidden states (zero-init = uniform)."""

    def __init__(self, num_states: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_states))

    def forward(self, states: States) -> torch.Tensor:
        if torch.is_tensor(states) and states.dim() != 4:
            return states
        if len(states) != self.weights.numel():
            raise ValueError(f"expected {self.weights.numel()} hidden states, got {len(states)}")
        w = torch.softmax(self.weights, dim=0)
        stacked = states if torch.is_tensor(states) else torch.stack(list(states), dim=0)  # [L+1, B, T, F]
        # One [L+1] x [L+1, B·T·F] product: forward and the weights' gradient are matrix-vector
        # products, with no [L+1, B, T, F] temporary (a broadcast multiply and sum made one each way,
        # a third of a linear CTC head's training time).
        return torch.matmul(w.to(stacked.dtype), stacked.reshape(stacked.shape[0], -1)).reshape(stacked.shape[1:])

    def normalized(self) -> list[float]:
        return torch.softmax(self.weights.detach().float(), 0).tolist()


class LastLayer(nn.Module):
    """Use only the last hidden state (the fine-tuning default)."""

    def forward(self, states: States) -> torch.Tensor:
        return states if torch.is_tensor(states) and states.dim() != 4 else states[-1]


def frame_mask(frame_lens: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, T]`` bool, True on real frames."""
    return torch.arange(T, device=frame_lens.device)[None, :] < frame_lens[:, None]


def mean_pool(x: torch.Tensor, frame_lens: torch.Tensor) -> torch.Tensor:
    """Mean over real frames: ``[B, T, F] -> [B, F]``."""
    m = frame_mask(frame_lens.clamp(max=x.shape[1]), x.shape[1]).to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class _Head(nn.Module):
    def __init__(self, in_dim: int, num_states: int, layer_sum: bool):
        super().__init__()
        self.mix = WeightedLayerSum(num_states) if layer_sum else LastLayer()

    def layer_weights(self):
        return self.mix.normalized() if isinstance(self.mix, WeightedLayerSum) else None


def reverse_within(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Reverse each row of ``x`` [B, T, ...] within its first ``lens[b]`` steps; padding stays put."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = lens[:, None] - 1 - t
    idx = torch.where(idx >= 0, idx, t)
    return x.gather(1, idx.reshape(idx.shape + (1,) * (x.dim() - 2)).expand_as(x))


def bilstm_padded(rnn: nn.LSTM, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """A bidirectional ``nn.LSTM`` (batch_first) over right-padded ``x`` [B, T, D] -> [B, T, 2H],
    equal on real frames to running it on a packed sequence, with ``rnn``'s own weights.

    Why not pack: on CPU the packed LSTM's backward is several times slower than the fused padded
    kernel. The forward direction never sees padding (it sits after the real frames); the reverse
    direction runs on each row reversed within its length, so it starts at the last real frame.
    """
    out = x
    for layer in range(rnn.num_layers):
        dirs = []
        for rev in (False, True):
            sfx = f"_l{layer}" + ("_reverse" if rev else "")
            w = [getattr(rnn, f"weight_ih{sfx}"), getattr(rnn, f"weight_hh{sfx}")]
            if rnn.bias:
                w += [getattr(rnn, f"bias_ih{sfx}"), getattr(rnn, f"bias_hh{sfx}")]
            inp = reverse_within(out, lens) if rev else out
            h0 = inp.new_zeros(1, inp.shape[0], rnn.hidden_size)
            y, _, _ = torch.lstm(inp, (h0, h0), w, rnn.bias, 1, 0.0, rnn.training, False, True)
            dirs.append(reverse_within(y, lens) if rev else y)
        out = torch.cat(dirs, dim=-1)
        if layer < rnn.num_layers - 1 and rnn.dropout:
            out = F.dropout(out, rnn.dropout, rnn.training)
    return out


class CTCHead(_Head):
    """CTC over tokens. ``hidden=0``: a linear layer on the mixed states (SUPERB PR), after a linear
    projection to ``proj`` dims when ``proj`` is set (s3prl's PR recipe). Otherwise a linear
    projection to ``proj`` dims (default 256) followed by ``layers`` BiLSTM layers of ``hidden``
    units per direction (the ASR setup), ``dropout`` between them and ``final_dropout`` after the
    last (s3prl applies its dropout after every layer). ``specaugment``: an option of
    :meth:`speechft.finetune.specaug.SpecAugmentConfig.from_option`, applied to the mixed states
    in training (s3prl's ASR recipe)."""

    kind = "ctc"

    def __init__(self, in_dim, vocab_size, num_states=1, layer_sum=False, hidden=0, layers=0, proj=None, dropout=0.1,
                 final_dropout=0.0, specaugment=None):
        super().__init__(in_dim, num_states, layer_sum)
        from ..finetune.specaug import SpecAugment, SpecAugmentConfig

        self.vocab_size = vocab_size  # including blank (index 0)
        aug = SpecAugmentConfig.from_option(specaugment)
        self.augment = SpecAugment(aug) if aug is not None else None
        self.final_dropout = float(final_dropout)
        if hidden and layers:
            proj = proj or 256
            self.proj = nn.Linear(in_dim, proj)
            self.rnn = nn.LSTM(proj, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                               dropout=dropout if layers > 1 else 0.0)
            self.out = nn.Linear(2 * hidden, vocab_size)
        else:
            self.proj = nn.Linear(in_dim, proj) if proj else None
            self.rnn = None
            self.out = nn.Linear(proj or in_dim, vocab_size)

    def forward(self, states: States, frame_lens: torch.Tensor) -> torch.Tensor:
        x = self.mix(states)
        if self.augment is not None:
            x = self.augment(x, frame_lens)
        if self.proj is not None:
            x = self.proj(x)
        if self.rnn is not None:
            x = bilstm_padded(self.rnn, x, frame_lens.clamp(min=1, max=x.shape[1]).to(x.device))
            if self.final_dropout:
                x = F.dropout(x, self.final_dropout, self.training)
        return self.out(x)

    def loss(self, logits, frame_lens, targets, reduction: str = "sum"):
        """CTC loss in fp32; ``reduction='sum'`` returns the summed loss (normalise by token count)."""
        logp = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [T, B, V]
        tgt_lens = torch.tensor([len(t) for t in targets], dtype=torch.long)
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
        in_lens = frame_lens.clamp(max=logits.shape[1]).cpu()
        return F.ctc_loss(logp, flat, in_lens, tgt_lens, blank=0, reduction=reduction, zero_infinity=True)

    def num_units(self, targets) -> int:
        return sum(len(t) for t in targets)

    @torch.no_grad()
    def predict(self, logits, frame_lens) -> list[list[int]]:
        """Greedy CTC decoding: collapse repeats, drop blanks."""
        best = logits.argmax(-1).cpu()
        out = []
        for b in range(best.shape[0]):
            runs = torch.unique_consecutive(best[b, : int(frame_lens[b])])  # one token per run of frames
            out.append(runs[runs != 0].tolist())
        return out


def projector(in_dim: int, proj: int) -> nn.Module:
    """s3prl's utterance-level projector (a linear map to ``proj`` dims), or the identity for 0.
    A linear map commutes with mean pooling, so it is applied to the pooled vector: the same
    result as projecting every frame, and cached pooled features still serve the head."""
    return nn.Linear(in_dim, proj) if proj else nn.Identity()


class PoolClassifier(_Head):
    """Mean-pool over real frames + linear (SUPERB KS/SID/ER/LID); ``proj``: a linear projection
    to that many dims first (s3prl's ``projector_dim``)."""

    kind = "classify"

    def __init__(self, in_dim, num_classes, num_states=1, layer_sum=False, proj=0):
        super().__init__(in_dim, num_states, layer_sum)
        self.proj = projector(in_dim, proj)
        self.out = nn.Linear(proj or in_dim, num_classes)

    def forward(self, states, frame_lens):
        return self.out(self.proj(mean_pool(self.mix(states), frame_lens)))

    def loss(self, logits, frame_lens, targets, reduction: str = "sum"):
        return F.cross_entropy(logits.float(), torch.as_tensor(list(targets), dtype=torch.long, device=logits.device),
                               reduction=reduction)

    def num_units(self, targets) -> int:
        return len(targets)

    @torch.no_grad()
    def predict(self, logits, frame_lens) -> list[int]:
        return logits.argmax(-1).tolist()


class SlotsClassifier(_Head):
    """Mean-pool + one linear softmax per slot (SUPERB IC); a prediction is right when all slots are.
    ``proj``: as :class:`PoolClassifier`."""

    kind = "slots"

    def __init__(self, in_dim, slot_sizes: Sequence[int], num_states=1, layer_sum=False, proj=0):
        super().__init__(in_dim, num_states, layer_sum)
        self.proj = projector(in_dim, proj)
        self.outs = nn.ModuleList(nn.Linear(proj or in_dim, n) for n in slot_sizes)

    def forward(self, states, frame_lens):
        pooled = self.proj(mean_pool(self.mix(states), frame_lens))
        return [o(pooled) for o in self.outs]

    def loss(self, logits, frame_lens, targets, reduction: str = "sum"):
        t = torch.as_tensor([list(x) for x in targets], dtype=torch.long, device=logits[0].device)
        return sum(F.cross_entropy(lg.float(), t[:, k], reduction=reduction) for k, lg in enumerate(logits))

    def num_units(self, targets) -> int:
        return len(targets)

    @torch.no_grad()
    def predict(self, logits, frame_lens) -> list[list[int]]:
        return torch.stack([lg.argmax(-1) for lg in logits], dim=1).tolist()


def build_head(task, in_dim: int, num_states: int, vocab, layer_sum: bool = True, **overrides) -> _Head:
    """Head for ``task`` (:class:`speechft.tasks.Task`). ``vocab`` is the :class:`speechft.vocab.Vocab`
    built from the train manifest (tokens for CTC, classes, or per-slot classes)."""
    opts = {**task.head_options(), **overrides}
    if task.kind == "ctc":
        if task.head == "linear_ctc":
            opts.setdefault("hidden", 0)
            opts.setdefault("layers", 0)
        return CTCHead(in_dim, len(vocab), num_states=num_states, layer_sum=layer_sum, **opts)
    if task.kind == "classify":
        return PoolClassifier(in_dim, len(vocab), num_states=num_states, layer_sum=layer_sum, **opts)
    return SlotsClassifier(in_dim, vocab.slot_sizes(), num_states=num_states, layer_sum=layer_sum, **opts)

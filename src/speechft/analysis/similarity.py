"""Per-layer representation similarity, accumulated in streaming fashion.

Features are frames: for one layer, X [N, D1] (model A) and Y [N, D2] (model B) over the same audio,
N = all real frames of all utterances. Nothing of size N is kept in memory: every statistic below is
a running sum over mini-batches of frames, in float64.

* mean frame-level cosine similarity: mean_i cos(x_i, y_i) (needs D1 == D2)
* linear CKA with the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021):

      HSIC_u(K, L) = [tr(K~L~) + 1'K~1 * 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))

  with K = XX', L = YY' and K~, L~ their diagonals zeroed. For linear kernels every term reduces to
  feature-space sums (derivation in the comments of :meth:`LinearCKA.hsic`), so the n x n Gram
  matrices are never formed.
"""
from __future__ import annotations

import torch


class _Moments:
    """Running sums for one feature matrix X: X'X, sum x, sum |x|^2, sum |x|^4."""

    def __init__(self, d: int):
        self.xtx = torch.zeros(d, d, dtype=torch.float64)
        self.s = torch.zeros(d, dtype=torch.float64)
        self.sq = 0.0  # sum_i |x_i|^2
        self.sq2 = 0.0  # sum_i |x_i|^4
        self.x_sq = torch.zeros(d, dtype=torch.float64)  # sum_i x_i |x_i|^2

    def update(self, x: torch.Tensor, nx: torch.Tensor) -> None:
        self.xtx += x.T @ x
        self.s += x.sum(0)
        self.sq += float(nx.sum())
        self.sq2 += float((nx * nx).sum())
        self.x_sq += (x * nx[:, None]).sum(0)


class LinearCKA:
    """Streaming unbiased linear CKA between two feature sets over the same frames."""

    def __init__(self, d1: int, d2: int):
        self.n = 0
        self.a, self.b = _Moments(d1), _Moments(d2)
        self.xty = torch.zeros(d1, d2, dtype=torch.float64)
        self.cross_sq = 0.0  # sum_i |x_i|^2 |y_i|^2
        self.x_ysq = torch.zeros(d1, dtype=torch.float64)  # sum_i x_i |y_i|^2
        self.y_xsq = torch.zeros(d2, dtype=torch.float64)  # sum_i y_i |x_i|^2

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x: [N, D1], y: [N, D2] — the same N frames through both models."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"frame counts differ: {x.shape[0]} vs {y.shape[0]}")
        x, y = x.double(), y.double()
        nx, ny = (x * x).sum(1), (y * y).sum(1)
        self.n += x.shape[0]
        self.a.update(x, nx)
        self.b.update(y, ny)
        self.xty += x.T @ y
        self.cross_sq += float((nx * ny).sum())
        self.x_ysq += (x * ny[:, None]).sum(0)
        self.y_xsq += (y * nx[:, None]).sum(0)

    def _hsic(self, tr_kl, sum_k, sum_l, ones_kl) -> float:
        n = self.n
        return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * ones_kl) / (n * (n - 3))

    def hsic(self, which: str) -> float:
        """Unbiased HSIC for ("xx", "yy", "xy"). With K~ = XX' minus its diagonal:
        tr(K~L~)  = |X'Y|_F^2 - sum_i |x_i|^2 |y_i|^2
        1'K~1     = |sum_i x_i|^2 - sum_i |x_i|^2
        1'K~L~1   = sum_i (x_i.s_x - |x_i|^2)(y_i.s_y - |y_i|^2)
                  = s_x' X'Y s_y - s_x' sum_i x_i|y_i|^2 - s_y' sum_i y_i|x_i|^2 + sum_i |x_i|^2|y_i|^2
        """
        a, b = self.a, self.b
        if which == "xx":
            m, sa, sb, diag, ca, cb, xtyv = a.xtx, a, a, a.sq2, a.x_sq, a.x_sq, a.xtx
        elif which == "yy":
            m, sa, sb, diag, ca, cb, xtyv = b.xtx, b, b, b.sq2, b.x_sq, b.x_sq, b.xtx
        else:
            m, sa, sb, diag, ca, cb, xtyv = self.xty, a, b, self.cross_sq, self.x_ysq, self.y_xsq, self.xty
        tr_kl = float((m * m).sum()) - diag
        sum_k = float(sa.s @ sa.s) - sa.sq
        sum_l = float(sb.s @ sb.s) - sb.sq
        ones_kl = float(sa.s @ xtyv @ sb.s) - float(sa.s @ ca) - float(sb.s @ cb) + diag
        return self._hsic(tr_kl, sum_k, sum_l, ones_kl)

    def value(self) -> float:
        if self.n < 4:
            raise ValueError(f"unbiased CKA needs at least 4 frames, got {self.n}")
        denom = (self.hsic("xx") * self.hsic("yy")) ** 0.5
        return float(self.hsic("xy") / denom) if denom > 0 else float("nan")


class MeanCosine:
    """Streaming mean of frame-level cosine similarity."""

    def __init__(self):
        self.total, self.n = 0.0, 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape != y.shape:
            raise ValueError(f"cosine similarity needs equal shapes, got {tuple(x.shape)} vs {tuple(y.shape)}")
        self.total += float(torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=1, eps=1e-12).sum())
        self.n += x.shape[0]

    def value(self) -> float:
        return self.total / self.n if self.n else float("nan")


class R2:
    """Streaming coefficient of determination of predictions ŷ for targets y (all features pooled):
    R² = 1 - Σ(y-ŷ)² / Σ(y-ȳ)², ȳ the per-feature mean over frames."""

    def __init__(self, d: int):
        self.res = 0.0
        self.s = torch.zeros(d, dtype=torch.float64)
        self.s2 = torch.zeros(d, dtype=torch.float64)
        self.n = 0

    def update(self, y: torch.Tensor, y_hat: torch.Tensor) -> None:
        y, y_hat = y.double(), y_hat.double()
        self.res += float(((y - y_hat) ** 2).sum())
        self.s += y.sum(0)
        self.s2 += (y * y).sum(0)
        self.n += y.shape[0]

    def value(self) -> float:
        tot = float((self.s2 - self.s * self.s / max(self.n, 1)).sum())
        return 1.0 - self.res / tot if tot > 0 else float("nan")

"""Aggregation: the mean of per-image scores with a 95% confidence interval.

Two intervals:

* ``method="t"`` (default): Student's t interval of the mean,
  $\\bar x \\pm t_{1-\\alpha/2,\\, n-1}\\, s / \\sqrt{n}$, exact for normal scores and close
  for the sample sizes metrics use (the scores are bounded, so the mean is near-normal);
* ``method="bootstrap"``: the percentile bootstrap (Efron 1979): resample the scores with
  replacement ``n_boot`` times and take the $\\alpha/2$ and $1-\\alpha/2$ quantiles of the
  resampled means; no normality assumption, better for skewed scores such as 0/1 hits.

NaN scores (an empty mask, say) are left out and counted in ``n_missing``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from cnnlens.core.checks import check_int
from cnnlens.errors import InputError

__all__ = ["Summary", "aggregate"]


@dataclass(frozen=True)
class Summary:
    """Mean of a score with its confidence interval.

    Attributes:
        mean: the mean of the finite scores (NaN when there are none).
        low: lower end of the interval (NaN for fewer than two scores).
        high: upper end of the interval.
        std: sample standard deviation (n - 1 in the denominator).
        n: number of finite scores used.
        n_missing: number of NaN scores left out.
        confidence: the interval's level, e.g. 0.95.
        method: ``"t"`` or ``"bootstrap"``.
    """

    mean: float
    low: float
    high: float
    std: float
    n: int
    n_missing: int
    confidence: float
    method: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}] (n={self.n})"


def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t  # scipy comes with scikit-learn, a cnnlens dependency

    return float(t.ppf(q, df))


def aggregate(
    values: Tensor | Sequence[float],
    *,
    confidence: float = 0.95,
    method: str = "t",
    n_boot: int = 10000,
    seed: int = 0,
) -> Summary:
    """Mean and confidence interval of per-image scores (see the module docstring).

    Args:
        values: scores, any shape (flattened); NaN entries are left out.
        confidence: level of the interval, in (0, 1).
        method: ``"t"`` (Student's t) or ``"bootstrap"`` (percentile bootstrap).
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap resampling.

    Returns:
        The :class:`Summary`.

    Example:
        >>> aggregate(deletion(model, x, maps).auc)         # doctest: +SKIP
        Summary(mean=0.21, low=0.17, high=0.25, ...)
    """
    if method not in ("t", "bootstrap"):
        raise InputError(f"method must be 't' or 'bootstrap', got {method!r}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence!r}")
    check_int("n_boot", n_boot)
    v = torch.as_tensor(values).detach().flatten().double().cpu()
    finite = v[~torch.isnan(v)]
    n, missing = int(finite.numel()), int(v.numel() - finite.numel())
    nan = float("nan")
    if n == 0:
        return Summary(nan, nan, nan, nan, 0, missing, confidence, method)
    mean = float(finite.mean())
    if n < 2:
        return Summary(mean, nan, nan, nan, n, missing, confidence, method)
    std = float(finite.std(correction=1))
    alpha = 1 - confidence
    if method == "t":
        half = _t_quantile(1 - alpha / 2, n - 1) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        g = torch.Generator().manual_seed(int(seed))
        chunk = max(1, 4_000_000 // n)  # bounded memory for long score lists
        means = torch.cat(
            [
                finite[torch.randint(0, n, (min(chunk, n_boot - i), n), generator=g)].mean(1)
                for i in range(0, n_boot, chunk)
            ]
        )
        qs = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
        low, high = (float(q) for q in torch.quantile(means, qs))
    return Summary(mean, low, high, std, n, missing, confidence, method)

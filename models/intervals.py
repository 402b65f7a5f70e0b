"""95% confidence intervals for the numbers PocketTune reports: accuracy and perplexity.

A held-out score without its uncertainty cannot tell two configurations apart: on 100 articles
an accuracy of 0.84 has a standard error of about 0.037, so 0.82 and 0.85 are the same result.
Every accuracy and perplexity is therefore reported with an interval over the evaluated
examples (the held-out examples are the sample; the model is fixed):

- **accuracy**: the Wilson score interval of a binomial proportion (``scipy.stats.binomtest``),
  which stays inside [0, 1] and keeps its coverage near 0 and 1 and at small n, where the
  normal approximation does not;
- **perplexity**: ``exp(sum of token NLL / sum of tokens)`` is a ratio over examples of unequal
  length, so its interval comes from a seeded percentile bootstrap that resamples whole
  examples (``scipy.stats.bootstrap``, paired: each example's NLL travels with its token count).

Across seeds (several training runs), :func:`mean_interval` gives a t interval of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def accuracy_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson interval of ``correct / total``."""
    from scipy.stats import binomtest

    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total >= 1, got {correct} of {total}")
    interval = binomtest(int(correct), int(total)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def perplexity_interval(example_nll: Sequence[float], example_tokens: Sequence[int], *,
                        confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``exp(sum nll / sum tokens)``, resampling examples."""
    from scipy.stats import bootstrap

    nll = np.asarray(example_nll, dtype=np.float64)
    tokens = np.asarray(example_tokens, dtype=np.float64)
    if nll.shape != tokens.shape or nll.ndim != 1 or nll.size < 1 or (tokens <= 0).any():
        raise ValueError("need one NLL sum and a positive token count per example")
    if nll.size == 1:
        value = math.exp(nll[0] / tokens[0])
        return value, value

    def perplexity(nll_sample, token_sample, axis=-1):
        return np.exp(nll_sample.sum(axis=axis) / token_sample.sum(axis=axis))

    result = bootstrap((nll, tokens), perplexity, paired=True, vectorized=True, n_resamples=resamples,
                       confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (e.g. one score per seed)."""
    from scipy.stats import t

    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        raise ValueError("a mean's interval needs at least two values")
    half = t.ppf(0.5 + confidence / 2, data.size - 1) * data.std(ddof=1) / math.sqrt(data.size)
    return float(data.mean() - half), float(data.mean() + half)


def formatted(value: float, interval: Sequence[float] | None, metric: str) -> str:
    """``0.842 [0.80, 0.88]`` for accuracy, ``17.5 [16.9, 18.2]`` for perplexity."""
    if metric == "accuracy":
        text = f"{value:.3f}"
        return text if not interval else f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]"
    text = f"{value:.2f}"
    return text if not interval else f"{text} [{interval[0]:.2f}, {interval[1]:.2f}]"

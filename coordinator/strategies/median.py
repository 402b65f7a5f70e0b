"""Coordinate-wise median: the most robust of the per-element rules, at some cost in noise.

Each element of the global adapter is the median of the values the devices that trained it
sent (Yin et al., ICML 2018): fewer than half of them can be arbitrarily bad without moving it
outside the honest values' range. It is the trimmed mean with the most trimming, and like it
counts every update once, whatever number of examples it claims
(:mod:`~coordinator.strategies.trimmed_mean` says why). With honest, non-IID devices the median
of few updates is noisier than their mean: it is the rule for a fleet one cannot trust.
"""

from __future__ import annotations

import warnings

import numpy as np

from coordinator.strategies.base import register
from coordinator.strategies.trimmed_mean import TrimmedMean


@register
class Median(TrimmedMean):
    """Per element, the median of the covering updates' values."""

    name = "median"

    def reduce(self, values: np.ndarray, covered: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN elements: nothing covers them
            return np.nanmedian(np.where(covered, values, np.nan), axis=0)

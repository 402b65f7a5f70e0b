"""Privacy spent by a DP job, from Google's dp-accounting (Renyi DP accountant).

Each round that releases a new global adapter is one Gaussian mechanism on the sum of clipped
changes (sensitivity C, noise z*C: ``GaussianDpEvent(z)``), Poisson-subsampled with the job's
``sampling_rate`` q when q < 1. Rounds compose: after ``r`` released rounds the event is that
one ``r`` times (``SelfComposedDpEvent``), and epsilon is the RDP accountant's at the job's
delta. A round that aggregated no update releases nothing new (the adapter carries over, no
noise is drawn) and is not counted.

Under local DP the same numbers bound each device's own release: its clipped change plus its
own noise, once per round it takes part (q = 1 from its point of view, as it knows it took
part); a device in every round is the worst case, which is what is reported.
"""

from __future__ import annotations

import functools
import logging

from coordinator.privacy.settings import PrivacySettings


def dp_event(settings: PrivacySettings, released_rounds: int):
    """The dp-accounting event of ``released_rounds`` rounds of the job's mechanism."""
    from dp_accounting import dp_event as events

    gaussian = events.GaussianDpEvent(settings.noise_multiplier)
    one_round = gaussian
    if settings.sampling_rate < 1.0 and not settings.local_noise:
        one_round = events.PoissonSampledDpEvent(settings.sampling_rate, gaussian)
    return events.SelfComposedDpEvent(one_round, released_rounds)


@functools.lru_cache(maxsize=4096)
def _epsilon(noise_multiplier: float, sampling_rate: float, local_noise: bool, delta: float, rounds: int) -> float:
    from dp_accounting import rdp

    settings = PrivacySettings(mode="local" if local_noise else "central", clip_norm=1.0,
                               noise_multiplier=noise_multiplier, delta=delta, sampling_rate=sampling_rate)
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event(settings, rounds))
    return float(accountant.get_epsilon(delta))


def epsilon_after(released_rounds: int, settings: PrivacySettings) -> float:
    """Epsilon at ``settings.delta`` after ``released_rounds`` released rounds (0.0 for none)."""
    if released_rounds <= 0:
        return 0.0
    # dp-accounting logs a warning per RDP order it cannot evaluate at small q; the orders left
    # still bound epsilon, so the warnings are not the user's concern.
    logging.getLogger("absl").setLevel(logging.ERROR)
    return _epsilon(settings.noise_multiplier, settings.sampling_rate, settings.local_noise, settings.delta,
                    released_rounds)


def rounds_within(settings: PrivacySettings, limit: int) -> int:
    """How many released rounds (at most ``limit``) keep epsilon within the budget."""
    if settings.epsilon_budget is None:
        return limit
    low, high = 0, limit            # epsilon grows with rounds: bisect for the last one within budget
    while low < high:
        middle = (low + high + 1) // 2
        if epsilon_after(middle, settings) <= settings.epsilon_budget:
            low = middle
        else:
            high = middle - 1
    return low

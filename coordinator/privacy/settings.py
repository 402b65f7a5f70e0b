"""A job's ``privacy`` settings: client-level DP, central or local, and its budget.

``POST /api/v1/jobs`` takes an optional ``privacy`` object:

=====================  ==================================================================
``mode``               ``"central"``: devices clip, the coordinator adds the noise to the
                       sum (it sees single clipped updates); ``"local"``: each device adds
                       its own noise to its clipped update (the coordinator never sees an
                       update without it)
``clip_norm``          C > 0: the L2 norm every device's change is clipped to
``noise_multiplier``   z > 0: the Gaussian noise's standard deviation over C
``delta``              the delta epsilon is stated at (default 1e-5; below 1 / devices)
``epsilon_budget``     optional: the job completes before a round would spend more
``sampling_rate``      q in (0, 1]: the probability that a given device takes part in a
                       round, for amplification by sampling (default 1: none assumed;
                       see docs/privacy.md for when a smaller q is honest)
=====================  ==================================================================

DP jobs aggregate with ``fedavg`` only, unweighted with a fixed denominator (the round's
``devices_per_round``), because a device's claimed example count would otherwise scale its
influence past C (see ``central_noise.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from coordinator import fields
from coordinator.errors import ApiError

MODES = ("central", "local")
DEFAULT_DELTA = 1e-5
MAX_CLIP_NORM = 1e6
MAX_NOISE_MULTIPLIER = 1e3
MAX_EPSILON = 1e4
#: The strategies whose sensitivity the accounting bounds (the mean of clipped changes).
DP_STRATEGIES = ("fedavg",)


@dataclass(frozen=True)
class PrivacySettings:
    mode: str
    clip_norm: float
    noise_multiplier: float
    delta: float = DEFAULT_DELTA
    epsilon_budget: float | None = None
    sampling_rate: float = 1.0

    @property
    def local_noise(self) -> bool:
        return self.mode == "local"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict | None) -> "PrivacySettings | None":
        return None if not value else cls(**value)

    def device_section(self) -> dict:
        """What a device needs in its task's ``train.privacy``: clip to C, and under local DP add
        noise of standard deviation ``z * C`` itself."""
        return {"clip_norm": self.clip_norm,
                "noise_multiplier": self.noise_multiplier if self.local_noise else 0.0}


def _bad(field: str, message: str) -> ApiError:
    return ApiError("invalid_field", f"privacy.{field}: {message}")


def parse_privacy(value, *, strategy: str, rounds: int) -> PrivacySettings | None:
    """Validate a job's ``privacy`` object (None: no DP); raises a 422 naming the field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError("invalid_field", "privacy must be a JSON object (mode, clip_norm, noise_multiplier, ...)")
    fields.unknown_keys(value, set(PrivacySettings.__dataclass_fields__), "privacy")
    mode = value.get("mode")
    if mode not in MODES:
        raise _bad("mode", f"must be one of {', '.join(MODES)}, got {fields.shown(mode)}")
    for required in ("clip_norm", "noise_multiplier"):
        if required not in value:
            raise _bad(required, "is required")
    clip_norm = fields.number("privacy.clip_norm", value["clip_norm"], 0.0, MAX_CLIP_NORM, exclusive_minimum=True)
    noise = fields.number("privacy.noise_multiplier", value["noise_multiplier"], 0.0, MAX_NOISE_MULTIPLIER,
                          exclusive_minimum=True)
    delta = fields.number("privacy.delta", value.get("delta", DEFAULT_DELTA), 0.0, 0.1, exclusive_minimum=True)
    rate = fields.number("privacy.sampling_rate", value.get("sampling_rate", 1.0), 0.0, 1.0, exclusive_minimum=True)
    budget = value.get("epsilon_budget")
    if budget is not None:
        budget = fields.number("privacy.epsilon_budget", budget, 0.0, MAX_EPSILON, exclusive_minimum=True)
    if strategy not in DP_STRATEGIES:
        raise ApiError("invalid_field", f"privacy: DP jobs aggregate with {', '.join(DP_STRATEGIES)} only (the "
                                        f"accounting bounds the mean of clipped changes); got strategy {strategy!r}")
    settings = PrivacySettings(mode=mode, clip_norm=clip_norm, noise_multiplier=noise, delta=delta,
                               epsilon_budget=budget, sampling_rate=rate)
    if budget is not None:
        from coordinator.privacy.accountant import epsilon_after

        first = epsilon_after(1, settings)
        if first > budget:
            raise _bad("epsilon_budget", f"one round already spends epsilon {first:.3g} at delta {delta:g} with "
                                         f"noise multiplier {noise:g}: raise the budget or the noise multiplier")
    return settings

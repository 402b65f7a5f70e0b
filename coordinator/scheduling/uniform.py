"""The baseline: every device trains the job's reference tier for the job's local steps."""

from __future__ import annotations

from coordinator.scheduling.configurator import Configurator, DeviceView, JobView, TierChoice, register
from models.tier_algebra import normalized_tier


@register
class Uniform(Configurator):
    """One tier for the whole fleet, as a homogeneous federation would run."""

    name = "uniform"
    always_reference_tier = True

    def choose(self, job: JobView, device: DeviceView) -> list[TierChoice]:
        return [TierChoice(tier=normalized_tier(job.reference_tier), local_steps=job.local_steps, arm="reference")]

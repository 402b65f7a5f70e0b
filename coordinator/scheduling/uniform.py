"""The baseline: every device trains the job's reference tier for the job's local steps."""

from __future__ import annotations

from coordinator.scheduling.configurator import (Configurator, DeviceView, JobView, TierChoice, normalized_tier,
                                                 register)


@register
class Uniform(Configurator):
    """One tier for the whole fleet, as a homogeneous federation would run."""

    name = "uniform"

    def choose(self, job: JobView, device: DeviceView) -> list[TierChoice]:
        return [TierChoice(tier=normalized_tier(job.reference_tier), local_steps=job.local_steps, arm="reference")]

"""First come, first served: eligible devices fill a round's places in the order they ask."""

from __future__ import annotations

from coordinator.scheduling.selector import Selector, register


@register
class FirstCome(Selector):
    name = "first_come"

    def admit(self, capabilities: dict, taken: int, devices_per_round: int) -> bool:
        return taken < devices_per_round

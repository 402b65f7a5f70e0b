"""Simulated device profiles: how fast, how much RAM, how fast a link, how often gone.

A profile turns one machine into many unequal phones, on the virtual clock only
(``fleet/virtual_clock.py``): ``slowdown`` divides the reference device's sustained FLOP rates
(:data:`fleet.virtual_clock.REFERENCE_SUSTAINED_GFLOPS`, per program kind, calibrated once) and
its matmul peak, so a 3x device's compute takes three times as long on the virtual clock
whatever the host is doing; ``bandwidth_mbps`` and ``latency_s`` set transfer time (bytes over
the link, a round trip per request); ``ram_mb`` is what the device reports, so the coordinator
decides which tiers fit it; ``dropout`` is the chance a device vanishes during a task (drawn
from the simulation's seed, the device and the round: it keeps its place and never uploads, as
a phone that lost power or network does).

The numbers are orders of magnitude from the seed papers' fleets (Jetson/phone classes:
roughly 1x/3x/10x compute spread, 1-50 Mbit/s links, 2-12 GB RAM), not measurements of any
particular handset. The reference (``flagship`` and ``native``, slowdown 1) is one thread of
the calibration machine, as before the virtual clock stopped reading the host ("1 = this
machine's speed"), now frozen into constants.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    #: how many times slower than the reference device this one computes (every program kind)
    slowdown: float = 1.0
    ram_mb: int = 8192
    bandwidth_mbps: float = 50.0
    dropout: float = 0.0
    battery: float | None = 80.0
    charging: bool | None = True
    #: one-way request latency on the virtual clock (a round trip is two)
    latency_s: float = 0.05

    def validate(self) -> "DeviceProfile":
        if self.slowdown < 1:
            raise ValueError(f"profile {self.name}: slowdown must be >= 1 (1 = the reference device's speed)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"profile {self.name}: dropout must be in [0, 1)")
        if self.bandwidth_mbps <= 0 or self.ram_mb <= 0:
            raise ValueError(f"profile {self.name}: bandwidth and RAM must be positive")
        if self.latency_s < 0:
            raise ValueError(f"profile {self.name}: latency must be >= 0")
        return self

    def sustained_gflops(self, kind: str) -> float:
        """GFLOP/s this profile sustains in training steps of a program of ``kind``."""
        from fleet.virtual_clock import REFERENCE_SUSTAINED_GFLOPS

        if kind not in REFERENCE_SUSTAINED_GFLOPS:
            raise ValueError(f"no calibrated rate for program kind {kind!r}")
        return REFERENCE_SUSTAINED_GFLOPS[kind] / self.slowdown

    @property
    def peak_gflops(self) -> float:
        """The fp32 matmul peak this profile reports (the reference's over its slowdown)."""
        from fleet.virtual_clock import REFERENCE_PEAK_GFLOPS

        return REFERENCE_PEAK_GFLOPS / self.slowdown

    def transfer_seconds(self, nbytes: int) -> float:
        """Virtual time to move ``nbytes`` over this profile's link (one way of one request)."""
        return self.latency_s + nbytes * 8 / (self.bandwidth_mbps * 1e6)

    def to_dict(self) -> dict:
        return asdict(self)


#: Device classes; a fleet mixes them.
PROFILES = {
    "native": DeviceProfile("native", slowdown=1.0, ram_mb=16384, bandwidth_mbps=1000.0, latency_s=0.001),
    "flagship": DeviceProfile("flagship", slowdown=1.0, ram_mb=12288, bandwidth_mbps=50.0, battery=90.0),
    "midrange": DeviceProfile("midrange", slowdown=3.0, ram_mb=6144, bandwidth_mbps=10.0, battery=60.0),
    "budget": DeviceProfile("budget", slowdown=10.0, ram_mb=2048, bandwidth_mbps=1.0, battery=40.0,
                            charging=False),
}

#: Fleets: (profile, share) lists; ``mixed`` is the heterogeneous fleet the issues study.
#: ``flagship_midrange`` is ``mixed`` without its budget phones, in the same 3:4 proportion: a
#: fleet where every device has the RAM for an fp32 tier (about 2.1 GB for SmolLM2's), so that a
#: comparison of aggregation against centralized training is not confounded by data on devices
#: that can never train.
FLEETS = {
    "uniform": [("flagship", 1.0)],
    "mixed": [("flagship", 0.3), ("midrange", 0.4), ("budget", 0.3)],
    "flagship_midrange": [("flagship", 3 / 7), ("midrange", 4 / 7)],
    "native": [("native", 1.0)],
}


def fleet_profiles(fleet: str, num_devices: int, dropout: float = 0.0, seed: int = 0) -> list[DeviceProfile]:
    """``num_devices`` profiles in the fleet's proportions (largest remainder), shuffled by seed."""
    if fleet not in FLEETS:
        raise ValueError(f"unknown fleet profile {fleet!r}; use one of {', '.join(FLEETS)}")
    if num_devices < 1:
        raise ValueError("a fleet needs at least one device")
    shares = FLEETS[fleet]
    counts = [int(num_devices * share) for _, share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: num_devices * shares[i][1] - counts[i], reverse=True)
    for i in by_remainder[: num_devices - sum(counts)]:
        counts[i] += 1
    profiles = [PROFILES[name] for (name, _), count in zip(shares, counts) for _ in range(count)]
    random.Random(seed).shuffle(profiles)
    return [replace(p, dropout=dropout).validate() for p in profiles]

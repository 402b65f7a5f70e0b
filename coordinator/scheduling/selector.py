"""Client selection: which devices may join a round, and which of them get its places.

PocketTune's protocol is pull-based: a device asks ``GET /api/v1/tasks/next`` and the
coordinator decides on the spot, under the round's lock, whether this device gets a place.
A selector answers two questions:

- :meth:`Selector.ineligibility`: can this device train this job's artifact at all (the
  artifact's runtime among the device's runtimes, enough RAM for the tier, the tier's
  optimizer among the device's ``optimizers``)? The reason is
  returned to the device in a header so a device that never gets work can say why.
- :meth:`Selector.admit`: given the places already taken in the round, does this eligible
  device get one? (A bandit would score the device from its history here.)

One file per selector, registered by name in :data:`SELECTORS` as strategies are. (This is
the *selector* base; the tier configurator's is :mod:`coordinator.scheduling.configurator`.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from models.plugin_registry import Registry


#: What a device that declares no ``optimizers`` capability can train with.
DEFAULT_OPTIMIZERS = ("sgd",)


@dataclass(frozen=True)
class Requirements:
    """What a device needs for a job: a runtime for the artifact's format, RAM for its tier, and
    the tier's optimizer in its trainer (a device given a task it cannot run would refuse it)."""

    runtime: str
    min_ram_mb: int
    optimizer: str = "sgd"
    #: a DP job's device-side step (``"clip"``, or ``"local_noise"`` under local DP), or None.
    privacy: str | None = None
    #: the job's update encoding when not ``fp32`` (``models/update_codecs``), or None.
    update_encoding: str | None = None


class Selector(ABC):
    """Decides which eligible devices get a round's places; stateless, one instance per use."""

    #: The name the coordinator is configured with (``"first_come"``).
    name: ClassVar[str]

    def ineligibility(self, capabilities: dict, requirements: Requirements) -> str | None:
        """Why a device with ``capabilities`` cannot take part (None: it can)."""
        runtimes = capabilities.get("runtimes") or []
        if requirements.runtime not in runtimes:
            return f"the job's artifact needs the {requirements.runtime} runtime; the device has {runtimes}"
        if capabilities.get("ram_mb", 0) < requirements.min_ram_mb:
            return (f"the job's tier needs about {requirements.min_ram_mb} MB of RAM; the device reports "
                    f"{capabilities.get('ram_mb', 0)} MB")
        optimizers = capabilities.get("optimizers") or list(DEFAULT_OPTIMIZERS)
        if requirements.optimizer not in optimizers:
            return (f"the job trains with {requirements.optimizer}; the device's trainer offers {optimizers} "
                    "(capabilities.optimizers)")
        if requirements.privacy is not None and requirements.privacy not in (capabilities.get("privacy") or []):
            return (f"the job is differentially private and its devices must {requirements.privacy.replace('_', ' ')} "
                    f"their updates; the device does not declare {requirements.privacy!r} in capabilities.privacy")
        encoding = requirements.update_encoding
        if encoding is not None and encoding not in (capabilities.get("update_encodings") or []):
            return (f"the job's devices send updates as {encoding}; the device does not declare it in "
                    "capabilities.update_encodings")
        return None

    @abstractmethod
    def admit(self, capabilities: dict, taken: int, devices_per_round: int) -> bool:
        """Whether an eligible device gets one of the round's places (``taken`` already given)."""


#: Every client selector, by the name the coordinator is configured with.
SELECTORS: Registry[Selector] = Registry("selector")

#: Class decorator: make a :class:`Selector` subclass available under its ``name``.
register = SELECTORS.register


def selector_names() -> list[str]:
    """Names of the registered selectors, sorted."""
    return SELECTORS.names()


def get_selector(name: str) -> Selector:
    """A fresh instance of the selector registered as ``name`` (``KeyError`` if unknown)."""
    return SELECTORS.get(name)

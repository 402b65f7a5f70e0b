"""Tier configuration: which sub-tier of a job's reference tier a device trains, and for how long.

A job names a *reference tier*; devices of unequal speed get *sub-tiers* of it whose adapters
map onto the reference adapter (:mod:`models.tier_algebra` derives and compares them), which
is what lets heterogeneous updates be aggregated.

Each time a device asks for work the coordinator calls :meth:`Configurator.choose` with a
:class:`JobView` and a :class:`DeviceView`. The answer is a list of :class:`TierChoice` in
preference order; the coordinator gives the device the first one whose artifact is built and
fits its RAM, so fallbacks come last. :meth:`Configurator.candidate_tiers` lists every tier a
configurator can hand out so that artifacts can be built ahead of time.

Configurators are stateless: everything they know comes from the two views (the device's
past tasks in this job are in :attr:`DeviceView.history`), so a coordinator restart loses
nothing and a configurator is testable by hand. One file per algorithm, registered by name in
:data:`CONFIGURATORS` as strategies are. What they share lives beside this interface, one
concern a module: the tier algebra (:mod:`models.tier_algebra`), the cost model for those
that plan by device capability (:mod:`fleet.task_cost`) and the option checks
(:mod:`coordinator.scheduling.options`). (The client *selector* base is
:mod:`coordinator.scheduling.selector`.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from models.plugin_registry import Registry
from models.tier_algebra import unique_tiers


# --- what a configurator sees and answers --------------------------------------------------------

@dataclass(frozen=True)
class PastTask:
    """One of a device's earlier tasks in the job.

    ``seconds`` is the whole task as the device lived it (download, compute, upload) and
    ``compute_seconds`` its training part; both are None when the device never submitted.
    ``tier`` is the full tier dict it trained, ``arm`` the label its configurator gave it.
    """

    round: int
    arm: str
    tier: dict
    local_steps: int
    submitted: bool
    loss_before: float | None = None
    loss_after: float | None = None
    seconds: float | None = None
    compute_seconds: float | None = None
    upload_bytes: int | None = None
    download_bytes: int | None = None
    #: the loss on a batch the device held out of its training data, before and after the task
    #: (reported when the configurator asks for it: :attr:`Configurator.wants_probe_loss`)
    probe_loss_before: float | None = None
    probe_loss_after: float | None = None
    #: the part of ``seconds`` spent downloading the artifact, which a device pays once per tier
    #: (0 when the artifact was already on the device or it did not say)
    one_off_seconds: float = 0.0
    #: the highest LoRA rank the accepted update used, read from its tensors (None: not submitted
    #: or not recorded); below the tier's rank when the device pruned its own (HetLoRA)
    effective_rank: int | None = None


@dataclass(frozen=True)
class DeviceView:
    """The device asking for work: its registered capabilities and its past tasks in this job.

    ``capabilities`` has ``ram_mb``, ``gflops`` (measured matmul GFLOP/s), ``bandwidth_mbps``
    (may be missing: :data:`fleet.task_cost.DEFAULT_BANDWIDTH_MBPS` is assumed) and ``runtimes``.
    """

    device_id: int
    capabilities: dict
    history: tuple[PastTask, ...] = ()


@dataclass(frozen=True)
class JobView:
    """The job as a configurator needs it.

    ``model_shape`` is the *unpruned* model's ``num_hidden_layers``, ``hidden_size``,
    ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` and
    ``vocab_size``; ``fleet`` the capabilities of every registered device;
    ``fleet_compute_slowdown`` how much slower than their reported peaks the job's devices
    really trained (median over its recent results, :func:`fleet.task_cost.compute_slowdown`;
    1.0 before any, and for configurators that do not read it), so that targets set from
    reported figures compare with times measured on devices.
    """

    job_id: int
    model: str
    reference_tier: dict
    local_steps: int
    round_number: int
    model_shape: dict
    fleet: tuple[dict, ...] = ()
    fleet_compute_slowdown: float = 1.0


@dataclass(frozen=True)
class TierChoice:
    """One answer: a full ``Tier.to_dict()``, the local steps to run and a short stable arm label.

    ``local_steps`` is carried here rather than in ``tier["train"]`` so that tiers that differ
    only in steps share one artifact.
    """

    tier: dict
    local_steps: int
    arm: str


# --- the interface -------------------------------------------------------------------------------

class Configurator(ABC):
    """Chooses, per device request, a sub-tier of the job's reference tier and its local steps."""

    #: The name jobs use (``"configurator": "legend"``).
    name: ClassVar[str]
    #: Every option this configurator takes, with its default; others are refused.
    option_defaults: ClassVar[Mapping[str, object]] = {}
    #: Whether ``choose`` reads ``JobView.fleet_compute_slowdown`` (measured from the job's
    #: recent results: a query the coordinator only makes for configurators that use it).
    uses_fleet_slowdown: ClassVar[bool] = False
    #: Whether :meth:`choose` always answers the job's own reference tier at the job's local
    #: steps, whatever the device: the coordinator then has nothing to choose per device and no
    #: other tier to prepare, so it may skip building the views and placing the device.
    always_reference_tier: ClassVar[bool] = False
    #: Whether devices should measure the loss on a batch held out of their training data, before
    #: and after each task (``PastTask.probe_loss_*``): one more loss pass each, on the device.
    wants_probe_loss: ClassVar[bool] = False

    @property
    def prunes_from_tuned_model(self) -> bool:
        """Whether a pruned tier this configurator hands out should be cut by the importance of
        the *tuned* model (a global adapter merged into the base; which one a device gets:
        ``coordinator.services.pruning_sources``) rather than the base alone. Such tiers cannot
        be prepared before training, so they are built on demand."""
        return False

    @property
    def tuned_pruning_refresh_rounds(self) -> int | None:
        """With :attr:`prunes_from_tuned_model`: after how many rounds a device moving up to a
        ratio gets a fresh cut of the tuned model rather than the ratio's newest (None: never)."""
        return None

    def lr_schedule_window(self, round_number: int, rounds: int) -> tuple[int, int]:
        """The rounds the job's learning-rate schedule runs over for ``round_number``: (its first
        round, how many). The whole job by default; a configurator that changes the model under
        the adapter mid-job (FedSpine's sparsity steps) may restart the schedule there."""
        return 1, rounds

    def tuned_pruning_cut_since(self, round_number: int, prune_ratio: float) -> int | None:
        """With :attr:`prunes_from_tuned_model`: the oldest round whose start adapter may still
        have cut the base a device trains at ``prune_ratio`` in ``round_number``; a device on an
        older cut, even one staying at its ratio, gets a newer one (None: any cut will do)."""
        return None

    def __init__(self, options: dict | None = None):
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ValueError(f"configurator options must be an object, got {options!r}")
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            known = ", ".join(sorted(self.option_defaults)) or "none"
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for configurator "
                             f"{self.name!r}; it takes: {known}")
        self.options = self.check_options({**self.option_defaults, **options})

    def check_options(self, options: dict) -> dict:
        """``options`` (defaults filled in) validated and normalized; ``ValueError`` if bad."""
        return options

    def candidate_tiers(self, job: JobView) -> list[dict]:
        """Every tier :meth:`choose` can return for ``job``, without repeats (override when it
        can return more than the reference tier). A tier cut from the tuned model is listed as
        cut from the base; the coordinator adds its pruning source when it hands it out."""
        return unique_tiers([job.reference_tier])

    def preparable_tiers(self, job: JobView) -> list[dict]:
        """The candidate tiers that can be exported before training starts (``prepare_tiers:
        "all"``); a tier cut from the tuned model (:attr:`prunes_from_tuned_model`) cannot."""
        return self.candidate_tiers(job)

    @abstractmethod
    def choose(self, job: JobView, device: DeviceView) -> list[TierChoice]:
        """Tiers for ``device`` in preference order (best first, then smaller fallbacks).

        Every tier is a full ``Tier.to_dict()`` and a sub-tier of ``job.reference_tier``.
        """


#: Every tier configurator, by the name jobs use. Its members are imported on the first lookup,
#: not by ``coordinator/scheduling/__init__.py`` as selectors are: they load torch (through
#: :mod:`models.tier`), which the coordinator must not pay for at start-up. A new configurator is
#: one file with a ``@register``-ed subclass of :class:`Configurator` and one line here.
CONFIGURATORS: Registry[Configurator] = Registry("configurator", lazy_members=(
    "coordinator.scheduling.uniform",
    "coordinator.scheduling.legend",
    "coordinator.scheduling.fedspine",
    "coordinator.scheduling.hetlora",
))

#: Class decorator: make a :class:`Configurator` subclass available to jobs under its ``name``.
register = CONFIGURATORS.register


def configurator_names() -> list[str]:
    """Names of the registered configurators, sorted."""
    return CONFIGURATORS.names()


def configurator_class(name: str) -> type[Configurator]:
    """The configurator class registered as ``name`` (``KeyError`` if unknown), for questions
    about the algorithm, such as :attr:`Configurator.always_reference_tier`, that need no options."""
    return CONFIGURATORS.class_of(name)


def get_configurator(name: str, options: dict | None = None) -> Configurator:
    """A configurator registered as ``name`` with ``options`` (``KeyError`` if unknown,
    ``ValueError`` if an option is unknown or bad)."""
    return CONFIGURATORS.get(name, options)

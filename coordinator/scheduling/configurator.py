"""Tier configuration: which sub-tier of a job's reference tier a device trains, and for how long.

A job names a *reference tier*: the largest configuration (LoRA on the last ``K`` layers at
rank ``R``, no pruning). Devices of unequal speed get *sub-tiers* of it: a pruning ratio at
least the reference's, LoRA on the last ``k <= K`` layers, each layer's rank at most the
reference rank of the same layer (see :func:`is_sub_tier`); their adapters map onto the
reference adapter, which is what lets heterogeneous updates be aggregated.

Each time a device asks for work the coordinator calls :meth:`Configurator.choose` with a
:class:`JobView` and a :class:`DeviceView`. The answer is a list of :class:`TierChoice` in
preference order; the coordinator gives the device the first one whose artifact is built and
fits its RAM, so fallbacks come last. :meth:`Configurator.candidate_tiers` lists every tier a
configurator can hand out so that artifacts can be built ahead of time.

Configurators are stateless: everything they know comes from the two views (the device's
past tasks in this job are in :attr:`DeviceView.history`), so a coordinator restart loses
nothing and a configurator is testable by hand. One file per algorithm, registered by name as
strategies are; :func:`estimate_task_seconds` is the shared cost model for those that plan by
device capability.
"""

from __future__ import annotations

import importlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from fleet.hardware import training_flops
from models.lora import rank_schedule
from models.pruning import attention_shape, kept_count
from models.tier import Tier

#: Assumed when a device reports no usable ``bandwidth_mbps`` (missing or 0): a mid-range
#: phone's link (megabits per second), the order of magnitude of the simulator's midrange profile.
DEFAULT_BANDWIDTH_MBPS = 10.0
#: Assumed when a device reports no usable ``gflops`` (missing or 0): deliberately low, so an
#: unmeasured device is planned as a slow one until its own task times say otherwise.
DEFAULT_GFLOPS = 1.0
#: Adapters travel as float32.
ADAPTER_BYTES_PER_VALUE = 4

_REGISTRY: dict[str, type["Configurator"]] = {}

#: Configurators shipped with PocketTune, imported on the first lookup by name.
_BUILTIN_MODULES = ("coordinator.scheduling.uniform", "coordinator.scheduling.legend",
                    "coordinator.scheduling.fedspine")


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


@dataclass(frozen=True)
class DeviceView:
    """The device asking for work: its registered capabilities and its past tasks in this job.

    ``capabilities`` has ``ram_mb``, ``gflops`` (measured matmul GFLOP/s), ``bandwidth_mbps``
    (may be missing: :data:`DEFAULT_BANDWIDTH_MBPS` is assumed) and ``runtimes``.
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
    really trained (median over its recent results, :func:`compute_slowdown`; 1.0 before any,
    and for configurators that do not read it),
    so that targets set from reported figures compare with times measured on devices.
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


# --- tiers ---------------------------------------------------------------------------------------

def normalized_tier(tier: dict) -> dict:
    """``tier`` as ``Tier.to_dict()`` writes it (every field present, lists for tuples)."""
    return Tier.from_dict(tier).to_dict()


def tier_ranks(tier: dict) -> tuple[int, ...]:
    """Rank of each LoRA layer of ``tier``, bottom to top."""
    t = Tier.from_dict(tier)
    return rank_schedule(t.lora_rank, t.lora_layers, t.rank_pattern)


def sub_tier(reference: dict, ranks: tuple[int, ...], prune_ratio: float | None = None) -> dict:
    """The tier that is ``reference`` with LoRA on the last ``len(ranks)`` layers at ``ranks``.

    A single rank is written as a ``uniform`` pattern and anything else as an explicit tuple
    (with ``lora_rank`` its top layer's rank), so that one layout always gives the same dict
    and so the same artifact. ``prune_ratio`` replaces the reference's when given.
    """
    ranks = tuple(int(r) for r in ranks)
    fields = dict(normalized_tier(reference))
    fields["lora_layers"] = len(ranks)
    if len(set(ranks)) == 1:
        fields["lora_rank"], fields["rank_pattern"] = ranks[0], "uniform"
    else:
        fields["lora_rank"], fields["rank_pattern"] = ranks[-1], list(ranks)
    if prune_ratio is not None:
        fields["prune_ratio"] = float(prune_ratio)
    return normalized_tier(fields)


def is_sub_tier(tier: dict, reference: dict) -> bool:
    """Whether ``tier``'s adapter maps onto ``reference``'s and its artifact is comparable.

    Nesting: pruning ratio at least the reference's (same method), LoRA depth at most the
    reference's, targets a subset, and each LoRA layer's rank at most the reference rank of
    the same layer (layers counted from the top, where both put LoRA). Equal: base
    quantization, batch, sequence length and kernels, which decide what a training step is.
    Training hyper-parameters and prefix caching are free: they change how a step runs, not
    what the adapter is. An invalid tier is never a sub-tier.
    """
    try:
        sub, ref = Tier.from_dict(tier), Tier.from_dict(reference)
        sub.validate()
        ref.validate()
        sub_ranks = tier_ranks(tier)
        ref_ranks = tier_ranks(reference)
    except (TypeError, ValueError, KeyError):
        return False
    if (sub.quantize, sub.batch, sub.seq, sub.kernels, sub.prune_method) != \
            (ref.quantize, ref.batch, ref.seq, ref.kernels, ref.prune_method):
        return False
    if sub.prune_ratio < ref.prune_ratio or sub.lora_layers > ref.lora_layers:
        return False
    if not set(sub.lora_targets) <= set(ref.lora_targets):
        return False
    top_of_reference = ref_ranks[len(ref_ranks) - len(sub_ranks):]
    return all(s <= r for s, r in zip(sub_ranks, top_of_reference))


def unique_tiers(tiers) -> list[dict]:
    """``tiers`` without repeats (compared as normalized dicts), first occurrence kept."""
    seen, out = set(), []
    for tier in tiers:
        tier = normalized_tier(tier)
        key = json.dumps(tier, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(tier)
    return out


# --- what a tier costs on a device ---------------------------------------------------------------

@dataclass(frozen=True)
class TaskTimeEstimate:
    """Estimated seconds of one task: training steps, and adapter download plus upload."""

    compute_seconds: float
    transfer_seconds: float

    @property
    def total(self) -> float:
        return self.compute_seconds + self.transfer_seconds


def pruned_shape(model_shape: dict, prune_ratio: float, prune_method: str = "width") -> dict:
    """The shape a pruned model will have, from the counts :mod:`models.pruning` keeps.

    Width pruning keeps the same number of heads and MLP channels in every layer
    (:func:`~models.pruning.attention_shape`, :func:`~models.pruning.kept_count`); layer
    pruning drops ``round(ratio * L)`` layers, never the first or the last. Only the counts are
    predicted here; which heads, channels or layers survive is decided at export.
    """
    shape = dict(model_shape)
    shape.setdefault("head_dim", shape["hidden_size"] // shape["num_attention_heads"])
    if prune_ratio <= 0:
        return shape
    if prune_method == "layers":
        layers = shape["num_hidden_layers"]
        shape["num_hidden_layers"] = layers - min(max(layers - 2, 0), int(math.floor(prune_ratio * layers + 0.5)))
        return shape
    kv, per_group = attention_shape(shape["num_attention_heads"], shape["num_key_value_heads"],
                                    shape["hidden_size"], prune_ratio)
    shape["num_attention_heads"], shape["num_key_value_heads"] = kv * per_group, kv
    shape["intermediate_size"] = kept_count(shape["intermediate_size"], prune_ratio)
    return shape


def _target_features(shape: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each LoRA-targetable projection of a decoder layer of ``shape``."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def adapter_bytes(tier: dict, model_shape: dict) -> int:
    """Bytes of ``tier``'s LoRA adapter (A: r x in and B: out x r per target and layer, float32)."""
    t = Tier.from_dict(tier)
    features = _target_features(pruned_shape(model_shape, t.prune_ratio, t.prune_method))
    values = sum(r * (features[name][0] + features[name][1]) for r in tier_ranks(tier) for name in t.lora_targets)
    return values * ADAPTER_BYTES_PER_VALUE


def step_flops(tier: dict, model_shape: dict) -> float:
    """Analytical FLOPs of one training step of ``tier`` (:func:`fleet.hardware.training_flops`).

    The manifest an export would write is stood in for by the parts ``training_flops`` reads,
    with the pruned shape from :func:`pruned_shape`. It is an estimate before export: the
    exported manifest has the exact shapes.
    """
    t = Tier.from_dict(tier)
    shape = pruned_shape(model_shape, t.prune_ratio, t.prune_method)
    ranks = tier_ranks(tier)
    if len(ranks) > shape["num_hidden_layers"]:
        raise ValueError(f"{len(ranks)} LoRA layers requested but the pruned model has only "
                         f"{shape['num_hidden_layers']} layers")
    manifest = {"pruned_model": shape, "base_model": dict(model_shape),
                "tier": {"batch": t.batch, "seq": t.seq},
                "lora": {"layout": {"ranks": list(ranks), "first_layer": shape["num_hidden_layers"] - len(ranks),
                                    "targets": list(t.lora_targets)}},
                "prefix": {"cached": True} if t.prefix_cache else None}
    return training_flops(manifest).total


def _positive(capabilities: dict, key: str, default: float) -> float:
    value = capabilities.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        return default
    return float(value)


def reported_speed(capabilities: dict) -> tuple[float, float]:
    """(GFLOP/s, Mbit/s) a device reports, with :data:`DEFAULT_GFLOPS` and
    :data:`DEFAULT_BANDWIDTH_MBPS` standing in for missing or zero figures."""
    return (_positive(capabilities, "gflops", DEFAULT_GFLOPS),
            _positive(capabilities, "bandwidth_mbps", DEFAULT_BANDWIDTH_MBPS))


def estimate_task_time(tier: dict, local_steps: int, model_shape: dict, capabilities: dict) -> TaskTimeEstimate:
    """Seconds ``local_steps`` steps of ``tier`` take on a device, and its adapter's round trip.

    Compute: ``local_steps * step_flops / (gflops * 1e9)``, i.e. as if the device trained at its
    measured matmul peak; real steps are slower by a roughly constant factor per device, which
    a configurator with task history can calibrate. Transfer: the adapter down and back up
    at ``bandwidth_mbps`` (:data:`DEFAULT_BANDWIDTH_MBPS` when unreported). Artifact
    downloads are not counted: a device fetches an artifact once and keeps it.
    """
    gflops, mbps = reported_speed(capabilities)
    compute = local_steps * step_flops(tier, model_shape) / (gflops * 1e9)
    transfer = 2 * adapter_bytes(tier, model_shape) * 8 / (mbps * 1e6)
    return TaskTimeEstimate(compute_seconds=compute, transfer_seconds=transfer)


def compute_slowdown(tier: dict, local_steps: int, model_shape: dict, capabilities: dict,
                     compute_seconds: float) -> float | None:
    """Measured compute time over :func:`estimate_task_time`'s (None when either is not positive)."""
    try:
        estimate = estimate_task_time(tier, local_steps, model_shape, capabilities).compute_seconds
    except (TypeError, ValueError, KeyError):
        return None
    if estimate <= 0 or not compute_seconds or compute_seconds <= 0:
        return None
    return compute_seconds / estimate


def slowed(capabilities: dict, slowdown: float) -> dict:
    """``capabilities`` with its GFLOP/s divided by ``slowdown`` (what it really achieves)."""
    gflops, _ = reported_speed(capabilities)
    return {**capabilities, "gflops": gflops / slowdown}


def estimate_task_seconds(tier: dict, local_steps: int, model_shape: dict, capabilities: dict) -> float:
    """Total of :func:`estimate_task_time`: compute plus adapter download and upload, in seconds."""
    return estimate_task_time(tier, local_steps, model_shape, capabilities).total


# --- options -------------------------------------------------------------------------------------

def number_option(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                  exclusive_minimum: bool = False, integer: bool = False):
    """``value`` checked as a (finite) number in range, or ``ValueError`` naming option ``name``."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
            or not math.isfinite(value):
        raise ValueError(f"option {name!r} must be {kind}, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise ValueError(f"option {name!r} must be {'>' if exclusive_minimum else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"option {name!r} must be <= {maximum}, got {value!r}")
    return value


def list_option(name: str, value, **number_checks) -> list:
    """A non-empty list of numbers, each checked as :func:`number_option` does, repeats dropped."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"option {name!r} must be a non-empty list, got {value!r}")
    items = [number_option(f"{name}[{i}]", v, **number_checks) for i, v in enumerate(value)]
    return list(dict.fromkeys(items))


def bool_option(name: str, value) -> bool:
    """``value`` checked as true or false."""
    if not isinstance(value, bool):
        raise ValueError(f"option {name!r} must be true or false, got {value!r}")
    return value


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
        can return more than the reference tier)."""
        return unique_tiers([job.reference_tier])

    @abstractmethod
    def choose(self, job: JobView, device: DeviceView) -> list[TierChoice]:
        """Tiers for ``device`` in preference order (best first, then smaller fallbacks).

        Every tier is a full ``Tier.to_dict()`` and a sub-tier of ``job.reference_tier``.
        """


def register(cls: type[Configurator]) -> type[Configurator]:
    """Class decorator: make ``cls`` available to jobs under ``cls.name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two configurators named {cls.name!r}: {_REGISTRY[cls.name].__name__} and {cls.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def configurator_names() -> list[str]:
    """Names of the registered configurators, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_configurator(name: str, options: dict | None = None) -> Configurator:
    """A configurator registered as ``name`` with ``options`` (``KeyError`` if unknown,
    ``ValueError`` if an option is unknown or bad)."""
    _load_builtins()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown configurator {name!r}; known: {', '.join(configurator_names())}") from None
    return cls(options)

"""The job an admin posts (``POST /api/v1/jobs``): fields, defaults and validation.

A job names a base model and a tier (what devices train), a task (a name in the task
registry, ``models.tasks``: the dataset devices train on and the held-out split each global
adapter is evaluated on), and how rounds run. Its ``lr`` and ``local_steps`` become the
tier's training hyper-parameters; they are not compiled into the artifact, so they go to
devices in each task's ``train`` section. Every problem is a 422 ``invalid_field`` naming
the field, and unknown fields are refused (a typo must not silently become a default). A tier
with a label-position head (``loss_positions`` K) is refused for a task whose examples carry
more than K labelled positions under the model's tokenizer (devices would refuse every batch).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from coordinator import fields, strict_json
from coordinator.errors import ApiError
from coordinator.privacy.settings import parse_privacy
from coordinator.services.heavy_imports import ensure_heavy_imports
from coordinator.services.label_positions import check_task_fits
from coordinator.services.norm_clipping import DEFAULT_FACTOR as DEFAULT_NORM_CLIP_FACTOR
from coordinator.strategies import strategy_names

MAX_ROUNDS = 100_000
MAX_DEVICES_PER_ROUND = 100_000
DEFAULT_DEVICES_PER_ROUND = 10
DEFAULT_ROUND_DEADLINE_S = 600.0
MAX_ROUND_DEADLINE_S = 30 * 24 * 3600.0
MAX_UPDATE_NORM = 1e6
MAX_RAM_MB = 10**7
MAX_NORM_CLIP_FACTOR = 1000.0
MAX_EVAL_EXAMPLES = 100_000
#: By default every held-out example is scored (the limit exceeds any built-in held-out split):
#: 100 examples leave a standard error of 4-5 accuracy points.
DEFAULT_EVAL_EXAMPLES = MAX_EVAL_EXAMPLES
_TIER_TRAIN_KEYS = {"optimizer", "momentum", "weight_decay", "betas", "eps", "lr_schedule", "lr_min", "local_sampling"}
PREPARE_TIERS = ("on_demand", "all")


@dataclass
class JobSpec:
    name: str
    model: str
    task: str
    tier: dict
    rounds: int
    devices_per_round: int
    min_updates: int
    round_deadline_s: float
    local_steps: int
    lr: float
    strategy: str
    max_update_norm: float
    min_ram_mb: int | None
    eval_examples: int
    eval_every: int = 1
    norm_clip_factor: float | None = DEFAULT_NORM_CLIP_FACTOR
    configurator: str = "uniform"
    configurator_options: dict | None = None
    prepare_tiers: str = "on_demand"
    #: client-level DP (``coordinator/privacy/settings.py``) as stored, or None.
    privacy: dict | None = None
    #: how devices send updates (``models/update_codecs``), as stored; None: fp32.
    update_encoding: dict | None = None


def _bad(field: str, message: str) -> ApiError:
    return ApiError("invalid_field", f"{field}: {message}")


def _string(body: dict, field: str, default=None, max_len: int = 200) -> str:
    value = body.get(field, default)
    if value is None:
        raise _bad(field, "is required")
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise _bad(field, f"must be a non-empty string of at most {max_len} characters")
    return value.strip()


def _integer(body: dict, field: str, default, minimum: int, maximum: int) -> int:
    value = body.get(field, default)
    if value is None:
        raise _bad(field, "is required")
    return fields.integer(field, value, minimum, maximum)


def _positive(body: dict, field: str, default, maximum: float) -> float:
    value = body.get(field, default)
    return fields.number(field, value, 0.0, maximum, exclusive_minimum=True)


def parse_job_spec(body, default_max_update_norm: float) -> JobSpec:
    """Validate a job request body; raises ``ApiError`` (422) naming the first bad field."""
    ensure_heavy_imports()
    from models.registry import PRESETS, is_known_model
    from models.tasks import task_names
    from models.tier import MAX_LOCAL_STEPS, MAX_LR, Tier, TrainingHyperparameters

    if not isinstance(body, dict):
        raise ApiError("invalid_field", "the job must be a JSON object")
    known = set(JobSpec.__dataclass_fields__)
    fields.unknown_keys(body, known, "the job")
    # Free-form parts (tier, configurator_options) are stored as JSON: no infinity may hide there.
    non_finite = strict_json.first_non_finite(body)
    if non_finite is not None:
        raise _bad(non_finite, "must be a finite number")
    model = _string(body, "model", max_len=500)
    if not is_known_model(model):
        raise _bad("model", f"unknown model {model!r}: use one of {', '.join(PRESETS)} or a directory "
                            "on the coordinator with a Hugging Face config.json")
    task = _string(body, "task")
    if task not in task_names():
        raise _bad("task", f"unknown task {task!r}; known: {', '.join(task_names())}")
    rounds = _integer(body, "rounds", None, 1, MAX_ROUNDS)
    devices_per_round = _integer(body, "devices_per_round", DEFAULT_DEVICES_PER_ROUND, 1, MAX_DEVICES_PER_ROUND)
    min_updates = _integer(body, "min_updates", devices_per_round, 1, devices_per_round)
    round_deadline_s = _positive(body, "round_deadline_s", DEFAULT_ROUND_DEADLINE_S, MAX_ROUND_DEADLINE_S)
    local_steps = _integer(body, "local_steps", TrainingHyperparameters.local_steps, 1, MAX_LOCAL_STEPS)
    lr = _positive(body, "lr", TrainingHyperparameters.lr, MAX_LR)
    strategy = _string(body, "strategy", "fedavg")
    if strategy not in strategy_names():
        raise _bad("strategy", f"unknown strategy {strategy!r}; known: {', '.join(strategy_names())}")
    max_update_norm = _positive(body, "max_update_norm", default_max_update_norm, MAX_UPDATE_NORM)
    norm_clip_factor = body.get("norm_clip_factor", DEFAULT_NORM_CLIP_FACTOR)
    if norm_clip_factor is not None:
        norm_clip_factor = fields.number("norm_clip_factor", norm_clip_factor, 1.0, MAX_NORM_CLIP_FACTOR)
    min_ram_mb = body.get("min_ram_mb")
    if min_ram_mb is not None:
        min_ram_mb = _integer(body, "min_ram_mb", None, 0, MAX_RAM_MB)
    eval_examples = _integer(body, "eval_examples", DEFAULT_EVAL_EXAMPLES, 0, MAX_EVAL_EXAMPLES)
    eval_every = _integer(body, "eval_every", 1, 1, MAX_ROUNDS)
    privacy = parse_privacy(body.get("privacy"), strategy=strategy, rounds=rounds)
    update_encoding = _update_encoding(body.get("update_encoding"))

    tier_body = body.get("tier", {})
    if not isinstance(tier_body, dict):
        raise _bad("tier", "must be a JSON object of models.tier.Tier fields")
    tier_body = dict(tier_body)
    if "prune_importance_adapter" in tier_body:
        raise _bad("tier.prune_importance_adapter", "is set by the coordinator on the pruned tiers it cuts from a "
                   "job's tuned model (configurator fedspine); a job's own tier cannot name one")
    train = tier_body.pop("train", {}) or {}
    if not isinstance(train, dict) or set(train) - _TIER_TRAIN_KEYS:
        raise _bad("tier.train", f"may only set {sorted(_TIER_TRAIN_KEYS)}; lr and local_steps are job fields")
    try:
        tier = Tier.from_dict({**tier_body, "train": {**train, "lr": lr, "local_steps": local_steps}})
        tier.validate()
    except (TypeError, ValueError) as exc:
        raise _bad("tier", str(exc)) from None
    configurator, options, prepare_tiers = _configurator_fields(body)
    name = _string(body, "name", f"{model} / {task}")
    # Last, as it may load the model's tokenizer: a label-position head refuses rows labelled at
    # more than K positions, so the task must fit it (every tier the configurator derives keeps
    # the job's K; see services/label_positions.py).
    check_task_fits(task, model, tier.seq, tier.loss_positions)
    return JobSpec(configurator=configurator, configurator_options=options, prepare_tiers=prepare_tiers,
                   name=name, model=model, task=task, tier=tier.to_dict(), rounds=rounds,
                   devices_per_round=devices_per_round, min_updates=min_updates,
                   round_deadline_s=round_deadline_s, local_steps=local_steps, lr=lr, strategy=strategy,
                   max_update_norm=max_update_norm, norm_clip_factor=norm_clip_factor, min_ram_mb=min_ram_mb,
                   eval_examples=eval_examples, eval_every=eval_every,
                   privacy=None if privacy is None else privacy.to_dict(), update_encoding=update_encoding)


def _update_encoding(value) -> dict | None:
    """A job's ``update_encoding`` (``{"name": "int8"}``, ``{"name": "topk", "fraction": 0.1}``),
    checked by building the codec; None for fp32, the default."""
    from models.update_codecs import codec_names, get_codec

    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise _bad("update_encoding", f"must be an object with a name, one of {', '.join(codec_names())}")
    try:
        codec = get_codec(value)
    except (TypeError, ValueError) as exc:
        raise _bad("update_encoding", str(exc)) from None
    return None if codec.name == "fp32" else {"name": codec.name, **codec.options()}


def _configurator_fields(body: dict) -> tuple[str, dict | None, str]:
    """The job's configurator name and options (checked by building it) and ``prepare_tiers``."""
    from coordinator.scheduling.configurator import configurator_names, get_configurator

    name = _string(body, "configurator", "uniform", max_len=100)
    if name not in configurator_names():
        raise _bad("configurator", f"unknown configurator {name!r}; known: {', '.join(configurator_names())}")
    options = body.get("configurator_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("configurator_options", "must be a JSON object of the configurator's options")
    try:
        get_configurator(name, options)
    except (TypeError, ValueError) as exc:
        raise _bad("configurator_options", str(exc)) from None
    prepare = _string(body, "prepare_tiers", "on_demand", max_len=20)
    if prepare not in PREPARE_TIERS:
        raise _bad("prepare_tiers", f"must be one of {', '.join(PREPARE_TIERS)}, got {prepare!r}")
    return name, options or None, prepare

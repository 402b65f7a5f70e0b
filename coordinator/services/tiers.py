"""Per-device tiers: ask the job's configurator, find (or order) the artifact, cut the adapter.

A job's ``configurator`` (``coordinator/scheduling``) ranks tiers for a device from its
capabilities and its history in the job. :func:`place_device` takes the first choice that

1. has an exported artifact (otherwise the export is queued with the artifact worker and the
   next choice is tried: a tier is built on demand, once, content-addressed by
   ``artifact_key``), and
2. the device can run (the selector's runtime and RAM checks against *that* artifact).

The artifact's *format* follows the device's runtimes, in the device's order of preference:
a device that declares only ``onnxruntime`` gets the tier compiled for ONNX Runtime (ordered
and built like any tier), and its update joins the same aggregation: both formats train the
same LoRA tensors, under the same names, from the same start adapter (sent as ``.ptd`` to
ExecuTorch and as safetensors to ONNX Runtime).

A configurator that prunes from the tuned model (FedSpine) gets its pruned tiers cut by one of
the job's recorded pruning sources (``services/pruning_sources.py`` says which device gets
which); while such a tier's export runs, the device is not moved to a still more pruned one.

The chosen tier's start adapter is the round's global adapter cut to the tier
(:func:`~coordinator.services.adapter_mapping.project`), stored as blobs like any adapter.
A choice equal to the job's own tier is the plain, unmapped path: the task then carries no
tier of its own, exactly as under the ``uniform`` configurator.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from sqlalchemy import select

from coordinator.models import Artifact, Device, GlobalAdapter, Job, Round, RoundStatus, Task, TaskStatus, Update
from coordinator.scheduling import Requirements
from coordinator.services.adapter_mapping import project
from coordinator.services.artifacts import artifact_key, compiled_tier
from coordinator.services.pruning_sources import needs_pruning_source, with_pruning_source
from coordinator.services.state import ServiceState
from export.formats import DEFAULT_FORMAT, FORMATS, get_format

log = logging.getLogger(__name__)

#: Capabilities of at most this many recently seen devices make up a job's view of its fleet.
_FLEET_VIEW = 1000
#: Results a job's fleet-wide compute slowdown is measured over.
_SLOWDOWN_WINDOW = 200


@dataclass(frozen=True)
class Placement:
    """The tier a device gets for a task (``artifact_id`` None: the job's own tier)."""

    arm: str | None
    tier: dict
    local_steps: int
    artifact_id: int | None = None
    start_weights_sha256: str | None = None
    start_ptd_sha256: str | None = None
    start_ptd_size: int | None = None

    def task_columns(self) -> dict:
        return dict(arm=self.arm, tier=self.tier if self.artifact_id else None, local_steps=self.local_steps,
                    artifact_id=self.artifact_id, start_weights_sha256=self.start_weights_sha256,
                    start_ptd_sha256=self.start_ptd_sha256, start_ptd_size=self.start_ptd_size)


_WIDTH_KEYS = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")


def model_shape(manifest: dict) -> dict:
    """The unpruned model's shape, from the job's reference artifact manifest (pruned or not).

    Configurators prune this shape themselves (``pruned_shape``), so it must be the original
    one even when the reference is width-pruned. Exports record it in ``base_model``; older
    manifests only have the pruned width, which is the original one unless the artifact was
    width-pruned. For a width-pruned one without it there is no way back: the pruning report
    keeps which heads survived and how many MLP channels, and several original head counts
    and intermediate sizes prune to the same, so the artifact must be exported again.
    """
    base, pruned = manifest["base_model"], manifest["pruned_model"]
    shape = {key: base[key] for key in ("num_hidden_layers", "hidden_size", "vocab_size")}
    if all(base.get(key) for key in _WIDTH_KEYS):
        return {**shape, **{key: base[key] for key in _WIDTH_KEYS}}
    report = pruned.get("pruning") or {}
    if report.get("method", "width") == "width" and float(report.get("ratio", 0) or 0) > 0:
        raise ValueError(f"the reference artifact of {base.get('id', 'this model')} is width-pruned "
                         f"(ratio {report['ratio']}) and its manifest predates recording the unpruned width "
                         "in base_model: export it again")
    return {**shape, "intermediate_size": pruned["intermediate_size"],
            "num_attention_heads": pruned["num_attention_heads"],
            "num_key_value_heads": pruned["num_key_value_heads"],
            "head_dim": pruned.get("head_dim") or base["hidden_size"] // pruned["num_attention_heads"]}


def job_view(state: ServiceState, session, job: Job, round_number: int, reference_artifact_id: int | None = None):
    """What a configurator may know of a job (``reference_artifact_id``: before the job records it)."""
    from coordinator.scheduling.configurator import JobView, get_configurator

    manifest = state.artifact_info(reference_artifact_id or job.artifact_id).artifact.manifest
    fleet = session.scalars(select(Device.capabilities).order_by(Device.last_seen_at.desc()).limit(_FLEET_VIEW)).all()
    shape = model_shape(manifest)
    slowdown = (fleet_compute_slowdown(session, job, shape)
                if get_configurator(job.configurator, job.configurator_options).uses_fleet_slowdown else 1.0)
    return JobView(job_id=job.id, model=job.model, reference_tier=job.tier, local_steps=job.local_steps,
                   round_number=round_number, model_shape=shape, fleet=tuple(fleet),
                   fleet_compute_slowdown=slowdown)


def fleet_compute_slowdown(session, job: Job, shape: dict) -> float:
    """Median, over the job's last :data:`_SLOWDOWN_WINDOW` results, of measured compute time
    over the estimate from the device's reported peak (1.0 while there are none)."""
    import statistics

    # (Imported here: the cost model reads models.tier, which loads torch; see place_device.)
    from fleet.task_cost import compute_slowdown

    rows = session.execute(
        select(Task.tier, Task.local_steps, Update.train_seconds, Update.metrics, Device.capabilities)
        .join(Update, Update.task_id == Task.id).join(Round, Task.round_id == Round.id)
        .join(Device, Task.device_id == Device.id)
        .where(Round.job_id == job.id).order_by(Update.id.desc()).limit(_SLOWDOWN_WINDOW)).all()
    ratios = []
    for tier, steps, train_seconds, metrics, capabilities in rows:
        compute = (metrics or {}).get("compute_seconds", train_seconds)
        ratio = compute_slowdown(tier or job.tier, steps or job.local_steps, shape, capabilities or {},
                                 float(compute) if isinstance(compute, (int, float)) else 0.0)
        if ratio is not None:
            ratios.append(ratio)
    return statistics.median(ratios) if ratios else 1.0


def device_history(session, job: Job, device_id: int) -> tuple:
    """The device's earlier tasks in ``job`` that are over (submitted, or their round closed)."""
    from coordinator.scheduling.configurator import PastTask

    rows = session.execute(
        select(Task, Round.number, Round.status, Update)
        .join(Round, Task.round_id == Round.id)
        .outerjoin(Update, Update.task_id == Task.id)
        .where(Round.job_id == job.id, Task.device_id == device_id)
        .order_by(Round.number)).all()
    history = []
    for task, number, round_status, update in rows:
        submitted = task.status == TaskStatus.SUBMITTED and update is not None
        if not submitted and round_status == RoundStatus.OPEN:
            continue  # still training: neither a result nor a dropout yet
        metrics = (update.metrics or {}) if update is not None else {}
        seconds = compute = None
        one_off = 0.0
        if submitted:
            compute = float(metrics.get("compute_seconds", update.train_seconds))
            seconds = float(metrics.get("virtual_seconds") or update.train_seconds)
            artifact_bytes, download_seconds = metrics.get("artifact_bytes_downloaded"), metrics.get("download_seconds")
            if artifact_bytes and download_seconds and update.bytes_downloaded > 0:
                one_off = min(seconds, download_seconds * artifact_bytes / update.bytes_downloaded)
        history.append(PastTask(
            round=number, arm=task.arm or "reference", tier=task.tier or job.tier,
            local_steps=task.local_steps or job.local_steps, submitted=submitted,
            loss_before=update.loss_before if submitted else None,
            loss_after=update.loss_after if submitted else None, seconds=seconds, compute_seconds=compute,
            upload_bytes=update.bytes_uploaded if submitted else None,
            download_bytes=update.bytes_downloaded if submitted else None,
            effective_rank=update.effective_rank if submitted else None,
            probe_loss_before=metrics.get("probe_loss_before"), probe_loss_after=metrics.get("probe_loss_after"),
            one_off_seconds=one_off))
    return tuple(history)


def _artifact_id_for(state: ServiceState, session, model: str, tier: dict,
                     artifact_format: str = DEFAULT_FORMAT) -> int | None:
    key = artifact_key(model, tier, artifact_format)
    return session.scalars(select(Artifact.id).where(Artifact.key == key)).one_or_none()


def device_formats(capabilities: dict | None) -> list[str]:
    """The artifact formats a device can train, in its own order of preference."""
    runtimes = (capabilities or {}).get("runtimes") or []
    return [runtime for runtime in runtimes if runtime in FORMATS]


def artifact_for_device(state: ServiceState, job: Job, device: Device, tier: dict) -> tuple[int | None, list[str]]:
    """The artifact of ``tier`` in the first format ``device`` runs that is exported already.

    Formats not exported yet are ordered from the artifact worker (once) and skipped for now.
    A device with no runtime we build for gets the job's format, so that the selector's
    eligibility check names what it lacks. Returns (artifact id or None, why formats were skipped).
    """
    job_format = state.artifact_info(job.artifact_id).format
    reasons = []
    for artifact_format in device_formats(device.capabilities) or [job_format]:
        if artifact_format == job_format and compiled_tier(tier) == compiled_tier(job.tier):
            return job.artifact_id, reasons
        # A tier the format cannot compile (e.g. ONNX Runtime's compiled SGD has no momentum) is
        # skipped, rather than ordering an export that must fail.
        why_not = get_format(artifact_format).unsupported(tier)
        if why_not:
            reasons.append(f"{artifact_format}: {why_not}")
            continue
        with state.db.read() as session:
            artifact_id = _artifact_id_for(state, session, job.model, tier, artifact_format)
        if artifact_id is not None:
            return artifact_id, reasons
        state.worker.request_tier(job.model, tier, artifact_format)
        reasons.append(f"{artifact_format} artifact being exported")
    return None, reasons


def ineligibility(state: ServiceState, job: Job, device: Device, artifact_id: int, tier: dict) -> str | None:
    """Why ``device`` cannot train artifact ``artifact_id`` of ``tier`` for ``job`` (its runtime,
    its RAM, the tier's optimizer), or None."""
    info = state.artifact_info(artifact_id)
    return state.selector.ineligibility(device.capabilities, Requirements(
        runtime=info.format, min_ram_mb=info.required_ram_mb if job.min_ram_mb is None else job.min_ram_mb,
        optimizer=(tier.get("train") or {}).get("optimizer", "sgd"), privacy=_privacy_step(job),
        update_encoding=(job.update_encoding or {}).get("name")))


def _privacy_step(job: Job) -> str | None:
    """What a DP job needs a device to do to its update before upload (None: not a DP job)."""
    privacy = job.privacy or None
    if privacy is None:
        return None
    return "local_noise" if privacy.get("mode") == "local" else "clip"


def place_on_job_tier(state: ServiceState, job: Job, device: Device) -> tuple[Placement | None, str]:
    """Under ``uniform``: the job's own artifact (returns (None, "")), the job's tier in another
    format the device runs (a placement), or (None, why the device cannot take part now)."""
    artifact_id, skipped = artifact_for_device(state, job, device, job.tier)
    if artifact_id is None:
        return None, "; ".join(skipped)
    why = ineligibility(state, job, device, artifact_id, job.tier)
    if why is not None:
        return None, why
    if artifact_id == job.artifact_id:
        return None, ""
    return Placement(arm=None, tier=job.tier, local_steps=job.local_steps, artifact_id=artifact_id), ""


def place_device(state: ServiceState, job: Job, device: Device, round_number: int) -> tuple[Placement | None, str]:
    """The tier ``device`` trains in ``round_number`` of ``job``, or (None, why none fits now)."""
    # (Imported here: configurators estimate costs with models/, which loads torch; the
    # coordinator starts without it and warms it up in the background.)
    from coordinator.scheduling.configurator import DeviceView, get_configurator

    configurator = get_configurator(job.configurator, job.configurator_options)
    with state.db.read() as session:
        try:
            view = job_view(state, session, job, round_number)
        except ValueError as exc:  # the reference's shape is unknown (model_shape)
            return None, f"the job's tiers cannot be chosen: {exc}"
        history = device_history(session, job, device.id)
    choices = configurator.choose(view, DeviceView(device_id=device.id, capabilities=device.capabilities,
                                                   history=history))
    reasons = []
    tuned_pruning = configurator.prunes_from_tuned_model
    waiting_ratio = None   # a tuned-pruned ratio whose artifact is being built
    for choice in choices:
        tuned_ratio = float(choice.tier["prune_ratio"]) if tuned_pruning and needs_pruning_source(job, choice.tier) \
            else None
        if tuned_ratio is not None:
            if waiting_ratio is not None and tuned_ratio >= waiting_ratio:
                # Not past the ratio the device is waiting for: it would fix (and build) a more
                # pruned base before the model has been tuned any further.
                reasons.append(f"{choice.arm}: waiting for the p{waiting_ratio:g} tier's export")
                continue
            choice = dataclasses.replace(choice, tier=with_pruning_source(
                state, job, round_number, choice.tier, history, configurator.tuned_pruning_refresh_rounds,
                configurator.tuned_pruning_cut_since(round_number, tuned_ratio)))
        artifact_id, skipped = artifact_for_device(state, job, device, choice.tier)
        reasons.extend(f"{choice.arm}: {why}" for why in skipped)
        if artifact_id is None:
            if tuned_ratio is not None:
                waiting_ratio = tuned_ratio if waiting_ratio is None else min(waiting_ratio, tuned_ratio)
            continue
        why = ineligibility(state, job, device, artifact_id, choice.tier)
        if why is not None:
            reasons.append(f"{choice.arm}: {why}")
            continue
        if artifact_id == job.artifact_id:
            return Placement(arm=choice.arm, tier=job.tier, local_steps=choice.local_steps), ""
        if compiled_tier(choice.tier) == compiled_tier(job.tier):
            # The job's tier in another format: the global adapter fits it as it is.
            return Placement(arm=choice.arm, tier=choice.tier, local_steps=choice.local_steps,
                             artifact_id=artifact_id), ""
        try:
            return _cut_start_adapter(state, job, round_number, artifact_id, choice), ""
        except ValueError as exc:  # the tier has no place in the reference adapter (adapter_mapping)
            reasons.append(f"{choice.arm}: {exc}")
    return None, "no tier fits this device now (" + "; ".join(reasons or ["the configurator offered none"]) + ")"


def _cut_start_adapter(state: ServiceState, job: Job, round_number: int, artifact_id: int, choice) -> Placement:
    with state.db.read() as session:
        start = session.scalars(select(GlobalAdapter).where(GlobalAdapter.job_id == job.id,
                                                            GlobalAdapter.round == round_number - 1)).one()
    reference = state.artifact_info(job.artifact_id).layout
    tier_layout = state.artifact_info(artifact_id).layout
    tensors = project(state.adapters.tensors(start.weights_sha256), reference, tier_layout)
    weights_ref, ptd_ref = state.adapters.store(tensors)
    return Placement(arm=choice.arm, tier=choice.tier, local_steps=choice.local_steps, artifact_id=artifact_id,
                     start_weights_sha256=weights_ref.sha256, start_ptd_sha256=ptd_ref.sha256,
                     start_ptd_size=ptd_ref.size)


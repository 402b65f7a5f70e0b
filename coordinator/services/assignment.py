"""``GET /api/v1/tasks/next``: which task (if any) a device gets.

Candidates are the open rounds of running jobs, oldest job first. For each, the selector
first checks eligibility without any lock (the device's runtimes and RAM against the job's
artifact and tier, in the format the device runs: ``services/tiers.py``); under a
configurator other than ``uniform`` the job's configurator first picks the device's tier,
and eligibility is checked against that tier's artifact. Then, under the round's lock: a
device that already holds an unsubmitted task in the round gets the same task again (asking
twice, or after losing the response, never takes two places); a device that already
submitted in this round is not selected again; otherwise it gets a place if the selector
admits it with the places already taken (at most ``devices_per_round``). The unique
``(round, device)`` constraint backs this up.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from coordinator.models import Device, GlobalAdapter, Job, JobStatus, Round, RoundStatus, Task, TaskStatus, utcnow
from coordinator.privacy.settings import PrivacySettings
from coordinator.scheduling.configurator import configurator_class, get_configurator
from coordinator.services import lifecycle
from coordinator.services.payloads import task_payload
from coordinator.services.state import ServiceState
from coordinator.services.validation import max_update_norm
from coordinator.services.tiers import Placement, place_device, place_on_job_tier
from coordinator.strategies import get_strategy
from export.formats import get_format
from models.lr_schedule import lr_for_round

log = logging.getLogger(__name__)

NO_OPEN_ROUND = "no running job has an open round"
#: The start-adapter encodings stored for every global adapter (an ``ArtifactFormat.start_adapter_kind``).
PTD = "ptd"
SAFETENSORS = "safetensors"


def next_task(state: ServiceState, device: Device) -> tuple[dict | None, str]:
    """The task payload for ``device``, or (None, why there is none)."""
    db = state.db
    with db.read() as session:
        candidates = session.execute(
            select(Round.id, Round.number, Job).join(Job, Round.job_id == Job.id)
            .where(Round.status == RoundStatus.OPEN, Job.status == JobStatus.RUNNING)
            .order_by(Job.id, Round.number)).all()
        # Rounds where this device already has a task: it gets that task again (or is told it
        # submitted), so no new tier is chosen for it.
        held = set(session.scalars(select(Task.round_id).join(Round, Task.round_id == Round.id).where(
            Task.device_id == device.id, Round.status == RoundStatus.OPEN)).all())
    reason = NO_OPEN_ROUND
    for round_id, round_number, job in candidates:
        job_id, devices_per_round = job.id, job.devices_per_round
        placement = None
        if round_id in held:
            pass  # the device's task in this round is handed out again below
        elif configurator_class(job.configurator).always_reference_tier:
            placement, why = place_on_job_tier(state, job, device)
            if placement is None and why:
                reason = f"job {job_id}: {why}"
                continue
        else:
            placement, why = place_device(state, job, device, round_number)
            if placement is None:
                reason = f"job {job_id}: {why}"
                continue
        task_id, froze = None, False
        with db.write() as session:
            round_ = db.lock(session, Round, round_id)
            now = utcnow()
            if round_.status != RoundStatus.OPEN:
                reason = f"job {job_id}: round {round_.number} is no longer open"
            elif lifecycle.freeze_if_overdue(round_, now):
                froze = True
                reason = f"job {job_id}: round {round_.number} reached its deadline"
            else:
                mine = session.scalars(select(Task).where(Task.round_id == round_id,
                                                          Task.device_id == device.id)).one_or_none()
                if mine is not None:
                    if mine.status == TaskStatus.ASSIGNED:
                        task_id = mine.id
                    else:
                        reason = f"job {job_id}: this device already submitted in round {round_.number}"
                else:
                    taken = session.scalar(select(func.count(Task.id)).where(Task.round_id == round_id))
                    if state.selector.admit(device.capabilities, taken, devices_per_round):
                        task = Task(round_id=round_id, device_id=device.id, status=TaskStatus.ASSIGNED,
                                    assigned_at=now, **_task_columns(placement, job))
                        session.add(task)
                        session.flush()
                        task_id = task.id
                        session.get(Device, device.id).last_seen_at = now
                    else:
                        reason = f"job {job_id}: round {round_.number} has all its {devices_per_round} devices"
        if froze:
            state.close_round(round_id)
        if task_id is not None:
            return task_offer(state, task_id), ""
    return None, reason


def _task_columns(placement: Placement | None, job: Job) -> dict:
    if placement is None:
        return {}
    return placement.task_columns()


def task_offer(state: ServiceState, task_id: int) -> dict:
    """The JSON a device gets for task ``task_id`` (artifact, start adapter, training settings)."""
    with state.db.read() as session:
        task = session.get(Task, task_id)
        round_ = session.get(Round, task.round_id)
        job = session.get(Job, round_.job_id)
        start = session.scalars(select(GlobalAdapter).where(GlobalAdapter.job_id == job.id,
                                                            GlobalAdapter.round == round_.number - 1)).one()
    info = state.artifact_info(task.artifact_id or job.artifact_id)
    tier = task.tier or job.tier
    tier_train = tier.get("train", {})
    # The schedule is the job's (a configurator's per-device tier never changes it); the
    # configurator may restart it where it changes the model under the adapter (FedSpine's steps).
    job_train = job.tier.get("train", {})
    configurator = get_configurator(job.configurator, job.configurator_options)
    first, span = configurator.lr_schedule_window(round_.number, job.rounds)
    lr = lr_for_round(job.lr, job_train.get("lr_schedule", "constant"), job_train.get("lr_min", 0.0),
                      round_.number - first + 1, span)
    train = {"steps": task.local_steps or job.local_steps, "lr": lr, "batch": tier["batch"], "seq": tier["seq"],
             "optimizer": tier_train.get("optimizer", "sgd"), "momentum": tier_train.get("momentum", 0.0),
             "weight_decay": tier_train.get("weight_decay", 0.0)}
    if train["optimizer"] == "adamw":
        train.update(betas=list(tier_train.get("betas", (0.9, 0.999))), eps=tier_train.get("eps", 1e-8))
    if job_train.get("local_sampling", "sequential") != "sequential":
        train["sampling"] = job_train["local_sampling"]    # absent = sequential, as before the setting existed
    if configurator.wants_probe_loss:
        train["probe_loss"] = True     # measure a held-out batch's loss before and after training
    train = get_strategy(job.strategy).configure_train(round_.number, train)
    privacy = PrivacySettings.from_dict(job.privacy)
    if privacy is not None:
        train["privacy"] = privacy.device_section()     # clip (and under local DP, noise) on the device
    adapter = _start_adapter(state, get_format(info.format).start_adapter_kind, task, start)
    return task_payload(task, round_, job, info.artifact, info.files, start.round, adapter, train,
                        info.max_update_bytes, max_num_examples(task, job), max_update_norm(job, info.tensors))


def _start_adapter(state: ServiceState, kind: str, task: Task, start: GlobalAdapter) -> tuple[str, int, str]:
    """(sha256, size, kind) of the start adapter blob a device of a format with ``start_adapter_kind``
    ``kind`` loads: the task's own (cut to its tier) or else the round's global adapter.

    Both encodings are stored for every global adapter (``services/adapters.py``), so the format
    only chooses which one to send: ``ptd`` for ExecuTorch, PEFT ``safetensors`` (the form every
    update comes back in) for runtimes that read it.
    """
    if kind == PTD:
        if task.start_ptd_sha256:
            return task.start_ptd_sha256, task.start_ptd_size, PTD
        return start.ptd_sha256, start.ptd_size, PTD
    if kind == SAFETENSORS:
        weights = task.start_weights_sha256 or start.weights_sha256
        return weights, state.blobs.path(weights).stat().st_size, SAFETENSORS
    raise ValueError(f"no stored start adapter of kind {kind!r} (stored: {PTD}, {SAFETENSORS})")


def max_num_examples(task: Task, job: Job) -> int:
    """The most training examples a result of ``task`` may claim: its local steps times its batch.

    FedAvg weights a device by its examples; a device sees at most one batch per step, so a
    larger claim is false (and would let one device outweigh the rest of the round).
    """
    return (task.local_steps or job.local_steps) * (task.tier or job.tier)["batch"]

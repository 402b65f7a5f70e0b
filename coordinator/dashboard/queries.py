"""What the dashboard pages show, read from the database in a few aggregate queries each.

Pages must stay fast with a real fleet (1,000 devices, 100 rounds: ``bench/dashboard_pages.py``),
so nothing here loads rows per device or per round in a loop: every page is a handful of
``GROUP BY`` queries whose results are joined in Python by key. The functions return plain
dataclasses and dicts (no ORM objects escape the session), so templates cannot trigger lazy
loads, and the same values feed the HTML tables and the chart specs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coordinator.models import (Device, Evaluation, GlobalAdapter, Job, JobStatus, Rejection, Round, RoundStatus,
                                Task, Update, utcnow)
from models.eval_schedule import is_evaluated_round

#: Job statuses in which rounds may still change (pages showing them keep polling).
ACTIVE_JOB_STATUSES = (JobStatus.PREPARING, JobStatus.RUNNING, JobStatus.PAUSED)


def tier_label(tier: dict | None, arm: str | None = None) -> str:
    """A tier in a few characters: ``p0.5 r8 k4 int8`` (pruning, LoRA rank, LoRA depth, base dtype).

    A configurator's arm name, when the task has one, says it better than the fields.
    """
    if arm:
        return arm
    if not tier:
        return ""
    parts = []
    if tier.get("prune_ratio"):
        parts.append(f"p{tier['prune_ratio']:g}")
    if tier.get("lora_rank") is not None:
        pattern = tier.get("rank_pattern", "uniform")
        if isinstance(pattern, (list, tuple)):
            parts.append("r" + "/".join(str(r) for r in pattern))
        else:
            parts.append(f"r{tier['lora_rank']}" + ("" if pattern in ("uniform", None) else f"-{pattern}"))
    if tier.get("lora_layers") is not None:
        parts.append(f"k{tier['lora_layers']}")
    if tier.get("quantize") not in (None, "", "none"):
        parts.append(str(tier["quantize"]))
    return " ".join(parts)


def _metric(metrics: dict | None, name: str) -> float | None:
    value = (metrics or {}).get(name)
    return float(value) if isinstance(value, (int, float)) else None


def step_seconds(metrics: dict | None, train_seconds: float | None, local_steps: int | None) -> float | None:
    """Seconds per training step: from the device's own timing when it sent it."""
    compute, steps = _metric(metrics, "compute_seconds"), _metric(metrics, "steps")
    if compute is not None and steps:
        return compute / steps
    if train_seconds is not None and local_steps:
        return train_seconds / local_steps
    return None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# --- fleet -------------------------------------------------------------------------------------

@dataclass
class FleetRow:
    id: int
    name: str
    platform: str
    capabilities: dict
    battery: float | None
    charging: bool | None
    online: bool
    last_seen_at: datetime
    tier: str = ""
    tier_job_id: int | None = None
    last_round: str = ""
    last_train_seconds: float | None = None
    last_round_seconds: float | None = None
    flop_utilization: float | None = None
    updates: int = 0
    rejections: int = 0


def fleet(session: Session, offline_after_s: float) -> list[FleetRow]:
    """Every device with its latest assignment and latest accepted result."""
    cutoff = utcnow() - timedelta(seconds=offline_after_s)
    # Plain column tuples, not ORM objects: a thousand devices must not cost a thousand identity-map entries.
    rows = {d.id: FleetRow(id=d.id, name=d.name, platform=d.platform, capabilities=d.capabilities or {},
                           battery=d.battery, charging=d.charging, online=d.last_seen_at >= cutoff,
                           last_seen_at=d.last_seen_at)
            for d in session.execute(select(Device.id, Device.name, Device.platform, Device.capabilities,
                                            Device.battery, Device.charging, Device.last_seen_at)
                                     .order_by(Device.id))}
    latest_task = select(func.max(Task.id)).group_by(Task.device_id).scalar_subquery()
    for task_id, device_id, arm, tier, job_id, job_tier in session.execute(
            select(Task.id, Task.device_id, Task.arm, Task.tier, Job.id, Job.tier)
            .join(Round, Task.round_id == Round.id).join(Job, Round.job_id == Job.id)
            .where(Task.id.in_(latest_task))):
        row = rows.get(device_id)
        if row is not None:
            row.tier, row.tier_job_id = tier_label(tier or job_tier, arm), job_id
    latest_update = select(func.max(Update.id)).group_by(Update.device_id).scalar_subquery()
    for device_id, train_s, metrics, assigned, received, job_id, number in session.execute(
            select(Update.device_id, Update.train_seconds, Update.metrics, Task.assigned_at, Update.received_at,
                   Round.job_id, Round.number)
            .join(Task, Update.task_id == Task.id).join(Round, Update.round_id == Round.id)
            .where(Update.id.in_(latest_update))):
        row = rows.get(device_id)
        if row is not None:
            row.last_round = f"job {job_id} round {number}"
            row.last_train_seconds = train_s
            row.last_round_seconds = (received - assigned).total_seconds()
            row.flop_utilization = _metric(metrics, "flop_utilization")
    for device_id, count in session.execute(select(Update.device_id, func.count()).group_by(Update.device_id)):
        if device_id in rows:
            rows[device_id].updates = count
    for device_id, count in session.execute(select(Rejection.device_id, func.count())
                                            .group_by(Rejection.device_id)):
        if device_id in rows:
            rows[device_id].rejections = count
    return list(rows.values())


# --- jobs --------------------------------------------------------------------------------------

@dataclass
class JobSummary:
    id: int
    name: str
    status: str
    model: str
    task: str
    strategy: str
    configurator: str
    rounds: int
    rounds_closed: int
    current_round: int | None
    devices: int
    updates: int
    metric: str | None
    value: float | None
    initial_value: float | None
    created_at: datetime
    error: str | None


def jobs(session: Session, job_ids: list[int] | None = None) -> list[JobSummary]:
    """Every job (or those in ``job_ids``) with its progress and latest evaluation."""
    query = select(Job).order_by(Job.id.desc())
    if job_ids is not None:
        query = query.where(Job.id.in_(job_ids))
    found = list(session.scalars(query))
    ids = [j.id for j in found]
    if not ids:
        return []
    closed = dict(session.execute(select(Round.job_id, func.count()).where(
        Round.job_id.in_(ids), Round.status == RoundStatus.CLOSED).group_by(Round.job_id)).all())
    current = dict(session.execute(select(Round.job_id, func.max(Round.number)).where(
        Round.job_id.in_(ids), Round.status.in_((RoundStatus.OPEN, RoundStatus.AGGREGATING)))
        .group_by(Round.job_id)).all())
    participation = {job_id: (devices, updates) for job_id, devices, updates in session.execute(
        select(Round.job_id, func.count(func.distinct(Update.device_id)), func.count(Update.id))
        .join(Round, Update.round_id == Round.id).where(Round.job_id.in_(ids)).group_by(Round.job_id))}
    evaluations: dict[int, dict[int, Evaluation]] = {}
    latest_eval = (select(Evaluation.job_id, func.max(Evaluation.round).label("round"))
                   .where(Evaluation.job_id.in_(ids), Evaluation.value.is_not(None))
                   .group_by(Evaluation.job_id).subquery())
    for evaluation in session.scalars(select(Evaluation).where(
            Evaluation.job_id.in_(ids), Evaluation.value.is_not(None),
            (Evaluation.round == 0) | Evaluation.round.in_(select(latest_eval.c.round).where(
                latest_eval.c.job_id == Evaluation.job_id).scalar_subquery()))):
        evaluations.setdefault(evaluation.job_id, {})[evaluation.round] = evaluation
    summaries = []
    for job in found:
        scored = evaluations.get(job.id, {})
        latest = scored[max(scored)] if scored else None
        devices, updates = participation.get(job.id, (0, 0))
        summaries.append(JobSummary(
            id=job.id, name=job.name, status=job.status, model=job.model, task=job.task, strategy=job.strategy,
            configurator=job.configurator, rounds=job.rounds, rounds_closed=closed.get(job.id, 0),
            current_round=current.get(job.id), devices=devices, updates=updates,
            metric=latest.metric if latest else None, value=latest.value if latest else None,
            initial_value=scored[0].value if 0 in scored else None, created_at=job.created_at, error=job.error))
    return summaries


@dataclass
class RoundRow:
    number: int
    status: str
    opened_at: datetime
    closed_at: datetime | None
    deadline_at: datetime
    close_reason: str | None
    #: why the round's aggregation failed (status ``failed``)
    error: str | None = None
    assigned: int = 0
    accepted: int = 0
    rejected: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    mean_loss_before: float | None = None
    mean_loss_after: float | None = None
    eval_value: float | None = None
    #: 95% interval of ``eval_value`` over the held-out examples (None for older rows)
    eval_ci: tuple[float, float] | None = None
    eval_loss: float | None = None
    eval_error: str | None = None
    metric: str | None = None
    #: whether the job's ``eval_every`` schedules this round's adapter for scoring
    scored: bool = True
    #: DP jobs: epsilon spent once this round's adapter was released (at the job's delta)
    epsilon: float | None = None

    @property
    def awaiting_score(self) -> bool:
        """Closed, scheduled for scoring, and neither scored nor failed yet."""
        return (self.status == RoundStatus.CLOSED and self.scored and self.eval_value is None
                and self.eval_error is None)

    @property
    def seconds(self) -> float | None:
        return None if self.closed_at is None else (self.closed_at - self.opened_at).total_seconds()


@dataclass
class DeviceInJob:
    id: int
    name: str
    platform: str
    updates: int
    rejections: int
    mean_step_seconds: float | None
    mean_flop_utilization: float | None
    mean_train_seconds: float | None
    last_tier: str
    tiers: list[str] = field(default_factory=list)


@dataclass
class JobDetail:
    job: Job
    summary: JobSummary
    rounds: list[RoundRow]
    initial_evaluation: Evaluation | None
    metric: str | None
    devices: list[DeviceInJob]

    @property
    def active(self) -> bool:
        """Still changing: rounds to play, or a global adapter still to be scored."""
        if self.job.status in ACTIVE_JOB_STATUSES:
            return True
        return self.job.status == JobStatus.COMPLETED and self.job.eval_examples > 0 and any(
            r.awaiting_score for r in self.rounds)


def _interval(evaluation: Evaluation) -> tuple[float, float] | None:
    return None if evaluation.ci_low is None else (evaluation.ci_low, evaluation.ci_high)


def job_detail(session: Session, job_id: int) -> JobDetail | None:
    """A job, each of its rounds with aggregates, and each device that took part in it."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    session.expunge(job)
    rounds = {r.id: RoundRow(number=r.number, status=r.status, opened_at=r.opened_at, closed_at=r.closed_at,
                             deadline_at=r.deadline_at, close_reason=r.close_reason, error=r.error,
                             scored=is_evaluated_round(r.number, job.rounds, job.eval_every))
              for r in session.scalars(select(Round).where(Round.job_id == job_id).order_by(Round.number))}
    in_job = select(Round.id).where(Round.job_id == job_id)
    for round_id, count in session.execute(select(Task.round_id, func.count()).where(Task.round_id.in_(in_job))
                                           .group_by(Task.round_id)):
        rounds[round_id].assigned = count
    for round_id, count, up, down, before, after in session.execute(
            select(Update.round_id, func.count(), func.sum(Update.bytes_uploaded), func.sum(Update.bytes_downloaded),
                   func.avg(Update.loss_before), func.avg(Update.loss_after))
            .where(Update.round_id.in_(in_job)).group_by(Update.round_id)):
        row = rounds[round_id]
        row.accepted, row.bytes_up, row.bytes_down = count, int(up or 0), int(down or 0)
        row.mean_loss_before, row.mean_loss_after = before, after
    for round_id, count in session.execute(select(Rejection.round_id, func.count())
                                           .where(Rejection.round_id.in_(in_job)).group_by(Rejection.round_id)):
        rounds[round_id].rejected = count
    by_number = {row.number: row for row in rounds.values()}
    if job.privacy:
        for number, epsilon in session.execute(select(GlobalAdapter.round, GlobalAdapter.epsilon)
                                               .where(GlobalAdapter.job_id == job_id, GlobalAdapter.round >= 1)):
            if number in by_number:
                by_number[number].epsilon = epsilon
    initial, metric = None, None
    for evaluation in session.scalars(select(Evaluation).where(Evaluation.job_id == job_id)):
        session.expunge(evaluation)
        metric = metric or evaluation.metric
        if evaluation.round == 0:
            initial = evaluation
        elif evaluation.round in by_number:
            row = by_number[evaluation.round]
            row.eval_value, row.eval_loss, row.eval_error = evaluation.value, evaluation.loss, evaluation.error
            row.eval_ci = _interval(evaluation)
    return JobDetail(job=job, summary=jobs(session, [job_id])[0],
                     rounds=sorted(rounds.values(), key=lambda r: r.number), initial_evaluation=initial,
                     metric=metric, devices=_devices_in_job(session, job, in_job))


def _devices_in_job(session: Session, job: Job, in_job) -> list[DeviceInJob]:
    """Per-device means over the job's accepted results, computed by the database.

    The metrics are read inside SQL (``json_extract`` on SQLite, ``->>`` on PostgreSQL, both
    through SQLAlchemy's JSON index), so a 100-round job's thousands of results are never
    decoded in Python. A step's time is the device's own compute time over its steps, or,
    for a device that sent no metrics, its training time over the task's local steps.
    """
    compute, steps = Update.metrics["compute_seconds"].as_float(), Update.metrics["steps"].as_float()
    fallback = Update.train_seconds / func.coalesce(Task.local_steps, job.local_steps)
    step = func.coalesce(compute / func.nullif(steps, 0), fallback)
    stats = {device_id: (count, mean_step, mean_util, mean_train) for device_id, count, mean_step, mean_util, mean_train
             in session.execute(select(Update.device_id, func.count(Update.id), func.avg(step),
                                       func.avg(Update.metrics["flop_utilization"].as_float()),
                                       func.avg(Update.train_seconds))
                                .join(Task, Update.task_id == Task.id).where(Update.round_id.in_(in_job))
                                .group_by(Update.device_id))}
    # Tiers: one row per (device, arm); tasks without an arm ran the job's tier or their own.
    tiers: dict[int, list[tuple[int, str]]] = {}
    custom: dict[int, int] = {}
    for device_id, arm, latest, has_tier in session.execute(
            select(Task.device_id, Task.arm, func.max(Task.id), func.max(Task.artifact_id))
            .where(Task.round_id.in_(in_job)).group_by(Task.device_id, Task.arm)):
        if arm is None and has_tier is not None:
            custom[latest] = device_id
        else:
            tiers.setdefault(device_id, []).append((latest, arm or tier_label(job.tier)))
    if custom:
        for task_id, tier in session.execute(select(Task.id, Task.tier).where(Task.id.in_(list(custom)))):
            tiers.setdefault(custom[task_id], []).append((task_id, tier_label(tier or job.tier)))
    rejections = dict(session.execute(select(Rejection.device_id, func.count())
                                      .where(Rejection.round_id.in_(in_job)).group_by(Rejection.device_id)).all())
    ids = set(stats) | set(tiers) | set(rejections)
    if not ids:
        return []
    devices = {d.id: d for d in session.execute(select(Device.id, Device.name, Device.platform)
                                                .where(Device.id.in_(ids)))}
    rows = []
    for device_id in sorted(ids):
        count, mean_step, mean_util, mean_train = stats.get(device_id, (0, None, None, None))
        seen = sorted(tiers.get(device_id, []))
        device = devices[device_id]
        rows.append(DeviceInJob(id=device_id, name=device.name, platform=device.platform, updates=count,
                                rejections=rejections.get(device_id, 0),
                                mean_step_seconds=None if mean_step is None else float(mean_step),
                                mean_flop_utilization=None if mean_util is None else float(mean_util),
                                mean_train_seconds=None if mean_train is None else float(mean_train),
                                last_tier=seen[-1][1] if seen else "", tiers=sorted({label for _, label in seen})))
    return rows


# --- one round ---------------------------------------------------------------------------------

@dataclass
class TaskRow:
    task_id: int
    device_id: int
    device_name: str
    status: str
    tier: str
    assigned_at: datetime
    submitted_at: datetime | None
    num_examples: int | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    train_seconds: float | None = None
    step_seconds: float | None = None
    flop_utilization: float | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None
    delta_norm: float | None = None


@dataclass
class RejectionRow:
    id: int
    task_id: int
    device_id: int
    device_name: str
    status: int
    code: str
    message: str
    size: int
    received_at: datetime


@dataclass
class RoundDetail:
    job: Job
    round: RoundRow
    tasks: list[TaskRow]
    rejections: list[RejectionRow]

    @property
    def accepted(self) -> list[TaskRow]:
        return [t for t in self.tasks if t.status == "submitted"]

    @property
    def active(self) -> bool:
        return self.round.status in (RoundStatus.OPEN, RoundStatus.AGGREGATING) or (
            self.round.awaiting_score and self.job.eval_examples > 0
            and self.job.status in ACTIVE_JOB_STATUSES + (JobStatus.COMPLETED,))


def round_detail(session: Session, job_id: int, number: int) -> RoundDetail | None:
    """A round's tasks (with each accepted result) and its rejected uploads with their reasons."""
    job = session.get(Job, job_id)
    round_ = session.scalars(select(Round).where(Round.job_id == job_id, Round.number == number)).one_or_none()
    if job is None or round_ is None:
        return None
    session.expunge(job)
    row = RoundRow(number=round_.number, status=round_.status, opened_at=round_.opened_at,
                   closed_at=round_.closed_at, deadline_at=round_.deadline_at, close_reason=round_.close_reason,
                   error=round_.error, scored=is_evaluated_round(round_.number, job.rounds, job.eval_every))
    evaluation = session.scalars(select(Evaluation).where(Evaluation.job_id == job_id,
                                                          Evaluation.round == number)).one_or_none()
    if evaluation is not None:
        row.eval_value, row.eval_loss, row.eval_error = evaluation.value, evaluation.loss, evaluation.error
        row.eval_ci = _interval(evaluation)
        row.metric = evaluation.metric
    tasks = []
    for task, name, update in session.execute(
            select(Task, Device.name, Update).join(Device, Task.device_id == Device.id)
            .outerjoin(Update, Update.task_id == Task.id).where(Task.round_id == round_.id).order_by(Task.id)):
        item = TaskRow(task_id=task.id, device_id=task.device_id, device_name=name, status=task.status,
                       tier=tier_label(task.tier or job.tier, task.arm), assigned_at=task.assigned_at,
                       submitted_at=task.submitted_at)
        if update is not None:
            item.num_examples, item.loss_before, item.loss_after = (update.num_examples, update.loss_before,
                                                                    update.loss_after)
            item.train_seconds = update.train_seconds
            item.step_seconds = step_seconds(update.metrics, update.train_seconds, task.local_steps or job.local_steps)
            item.flop_utilization = _metric(update.metrics, "flop_utilization")
            item.bytes_up, item.bytes_down = update.bytes_uploaded, update.bytes_downloaded
            item.delta_norm = update.delta_norm
            row.accepted += 1
            row.bytes_up += update.bytes_uploaded
            row.bytes_down += update.bytes_downloaded
        tasks.append(item)
    row.assigned = len(tasks)
    rejections = [RejectionRow(id=r.id, task_id=r.task_id, device_id=r.device_id, device_name=name, status=r.status,
                               code=r.code, message=r.message, size=r.size, received_at=r.received_at)
                  for r, name in session.execute(select(Rejection, Device.name)
                                                 .join(Device, Rejection.device_id == Device.id)
                                                 .where(Rejection.round_id == round_.id).order_by(Rejection.id))]
    row.rejected = len(rejections)
    return RoundDetail(job=job, round=row, tasks=tasks, rejections=rejections)


def overview_counts(session: Session, offline_after_s: float) -> dict:
    """Headline numbers for the front page."""
    cutoff = utcnow() - timedelta(seconds=offline_after_s)
    return {
        "devices": session.scalar(select(func.count(Device.id))),
        "online": session.scalar(select(func.count(Device.id)).where(Device.last_seen_at >= cutoff)),
        "jobs": session.scalar(select(func.count(Job.id))),
        "active_jobs": session.scalar(select(func.count(Job.id)).where(Job.status.in_(ACTIVE_JOB_STATUSES))),
        "updates": session.scalar(select(func.count(Update.id))),
        "rejections": session.scalar(select(func.count(Rejection.id))),
    }

"""Which tuned model a job's pruned tier is cut from (FedSpine's iterative prune-and-tune).

A configurator whose :attr:`~coordinator.scheduling.configurator.Configurator.prunes_from_tuned_model`
is on hands out pruned tiers whose pruning is chosen on the model *as tuned so far*: a global
adapter merged into the base decides which heads and channels stay
(``models.pruning.prune_model``'s ``importance_model``); the kept weights stay the base's, so
every device keeps training one adapter over one base, and each pruned artifact's own layout
lifts its updates back into the reference (devices at one ratio on different cuts aggregate
like devices on different tiers).

Sources are recorded per (job, ratio, round) in ``pruning_sources``, and which one a device
gets follows :func:`with_pruning_source`: a device that moves up to a more pruned ratio gets a
cut of the tuned model, one that stays keeps the base it has downloaded, and one that can only
run the pruned tier from the start (a 2 GB phone) takes whatever cut exists. A source once
recorded serves every later mover (option ``prune_refresh_rounds`` makes movers re-cut after
that many rounds): every new source is a new export of minutes and a new download for the
devices that take it. A configurator may also require a cut at least as new as some round
(``cut_since``: FedSpine's sparsity schedule re-cuts every device of a ratio at each step).

Only when the job's reference tier is unpruned: the global adapter then lives on the unpruned
base, which is what the merge needs. A job with a pruned reference prunes further from the
base alone.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from coordinator.models import GlobalAdapter, Job, PruningSource, utcnow
from coordinator.services.state import ServiceState

#: Ratios are compared at this many decimals (they come from JSON options: 0.25, 0.5, ...).
_RATIO_DECIMALS = 6


def needs_pruning_source(job: Job, tier: dict) -> bool:
    """Whether ``tier`` prunes beyond the job's reference and can be cut from the tuned model."""
    return _ratio_of(job.tier) == 0.0 and _ratio_of(tier) > 0.0


def with_pruning_source(state: ServiceState, job: Job, round_number: int, tier: dict, history: tuple = (),
                        refresh_rounds: int | None = None, cut_since: int | None = None) -> dict:
    """``tier`` with ``prune_importance_adapter`` set to the base the device should train at its ratio.

    - A device whose latest task was at this ratio keeps the base it has (no new download).
    - A device *moving up* to this ratio from a less pruned one gets a base cut from the tuned
      model: the ratio's newest source, unless that is still round 0's untrained adapter or
      older than ``refresh_rounds`` rounds, in which case this round's start adapter is
      recorded as a new source.
    - A device at this ratio for the first time without having trained a less pruned tier (one
      that can run nothing larger) gets the ratio's newest source, recording this round's
      start adapter only if there is none yet.
    - With ``cut_since``, every device (stayers too) whose cut would be older than round
      ``cut_since``'s start adapter gets the ratio's newest source if that is new enough, else
      this round's start adapter recorded as a new one.

    ``tier`` is returned unchanged when it needs no source or its source is round 0's adapter.
    """
    if not needs_pruning_source(job, tier):
        return tier
    ratio = _ratio_of(tier)
    latest = max(history, key=lambda task: task.round) if history else None
    oldest = None if cut_since is None else cut_since - 1   # the oldest acceptable source round
    if latest is not None and _ratio_of(latest.tier) == ratio and (
            oldest is None or _source_round(state, job.id, ratio, latest.tier.get("prune_importance_adapter")) >= oldest):
        adapter = latest.tier.get("prune_importance_adapter")
    else:
        moving_up = any(_ratio_of(task.tier) < ratio for task in history)
        newest = _newest(state, job.id, ratio)
        stale = newest is None or (moving_up and (
            newest.adapter_sha256 is None
            or (refresh_rounds is not None and round_number - 1 - newest.round >= refresh_rounds)))
        stale = stale or (oldest is not None and newest.round < oldest)
        if stale and (newest is None or newest.round < round_number - 1):
            newest = record_source(state, job.id, ratio, round_number)
        adapter = newest.adapter_sha256
    return {**tier, "prune_importance_adapter": adapter} if adapter else tier


def _ratio_of(tier: dict) -> float:
    return round(float(tier.get("prune_ratio", 0.0) or 0.0), _RATIO_DECIMALS)


def record_source(state: ServiceState, job_id: int, prune_ratio: float, round_number: int) -> PruningSource:
    """Record round ``round_number``'s start adapter as a source for ``prune_ratio`` (or return
    the one a concurrent request recorded for the same round first)."""
    ratio = round(prune_ratio, _RATIO_DECIMALS)
    with state.db.read() as session:
        start = session.scalars(select(GlobalAdapter).where(GlobalAdapter.job_id == job_id,
                                                            GlobalAdapter.round == round_number - 1)).one()
        source = PruningSource(job_id=job_id, prune_ratio=ratio, round=start.round,
                               adapter_sha256=start.weights_sha256 if start.round > 0 else None,
                               created_at=utcnow())
    try:
        with state.db.write() as session:
            session.add(source)
        return source
    except IntegrityError:
        # Another request (or coordinator process) recorded this ratio and round first.
        with state.db.read() as session:
            return session.scalars(select(PruningSource).where(
                PruningSource.job_id == job_id, PruningSource.prune_ratio == ratio,
                PruningSource.round == round_number - 1)).one()


def _source_round(state: ServiceState, job_id: int, ratio: float, adapter_sha256: str | None) -> int:
    """The round of the source that cut a base from ``adapter_sha256`` (0: cut from the base alone)."""
    if adapter_sha256 is None:
        return 0
    with state.db.read() as session:
        rounds = session.scalars(select(PruningSource.round).where(
            PruningSource.job_id == job_id, PruningSource.prune_ratio == ratio,
            PruningSource.adapter_sha256 == adapter_sha256)).all()
    return min(rounds, default=0)


def _newest(state: ServiceState, job_id: int, ratio: float) -> PruningSource | None:
    with state.db.read() as session:
        return session.scalars(select(PruningSource).where(PruningSource.job_id == job_id,
                                                           PruningSource.prune_ratio == ratio)
                               .order_by(PruningSource.round.desc()).limit(1)).one_or_none()


def job_pruning_sources(session, job_id: int) -> list[dict]:
    """A job's recorded sources, for its API payload and the benches: ratio, round, adapter."""
    rows = session.scalars(select(PruningSource).where(PruningSource.job_id == job_id)
                           .order_by(PruningSource.prune_ratio, PruningSource.round)).all()
    return [{"prune_ratio": row.prune_ratio, "round": row.round, "adapter_sha256": row.adapter_sha256}
            for row in rows]

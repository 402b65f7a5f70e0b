"""Which tuned model a job's pruned tier is cut from (FedSpine's iterative prune-and-tune).

A configurator whose :attr:`~coordinator.scheduling.configurator.Configurator.prunes_from_tuned_model`
is on hands out pruned tiers whose pruning is chosen on the model *as tuned so far*: the
global adapter at the start of the round in which the job first hands out that pruning ratio,
merged into the base (``models.pruning.prune_model``'s ``importance_model``). The choice is
recorded once per (job, ratio) in ``pruning_sources`` and every later device at that ratio gets
the same tier, hence the same artifact: a device that moves up to a higher ratio later in the
job receives a base pruned from a model tuned for longer, while devices at one ratio never
split over several bases that their updates would have to be reconciled across.

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
    reference_ratio = float(job.tier.get("prune_ratio", 0.0) or 0.0)
    return reference_ratio == 0.0 and float(tier.get("prune_ratio", 0.0) or 0.0) > 0.0


def with_pruning_source(state: ServiceState, job: Job, round_number: int, tier: dict) -> dict:
    """``tier`` with ``prune_importance_adapter`` set to the job's recorded source for its ratio
    (recording the start adapter of ``round_number`` if this is the ratio's first hand-out);
    ``tier`` unchanged when it needs none or the source is round 0's untrained adapter."""
    if not needs_pruning_source(job, tier):
        return tier
    source = pruning_source(state, job.id, float(tier["prune_ratio"]), round_number)
    if source.adapter_sha256 is None:
        return tier
    return {**tier, "prune_importance_adapter": source.adapter_sha256}


def pruning_source(state: ServiceState, job_id: int, prune_ratio: float, round_number: int) -> PruningSource:
    """The job's recorded source for ``prune_ratio``, recorded now (round ``round_number``'s
    start adapter) if there is none yet; the first of two concurrent recorders wins."""
    ratio = round(prune_ratio, _RATIO_DECIMALS)
    existing = _recorded(state, job_id, ratio)
    if existing is not None:
        return existing
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
        # Another request (or coordinator process) recorded this ratio first; its choice stands.
        return _recorded(state, job_id, ratio)


def _recorded(state: ServiceState, job_id: int, ratio: float) -> PruningSource | None:
    with state.db.read() as session:
        return session.scalars(select(PruningSource).where(PruningSource.job_id == job_id,
                                                           PruningSource.prune_ratio == ratio)).one_or_none()


def job_pruning_sources(session, job_id: int) -> list[dict]:
    """A job's recorded sources, for its API payload and the benches: ratio, round, adapter."""
    rows = session.scalars(select(PruningSource).where(PruningSource.job_id == job_id)
                           .order_by(PruningSource.prune_ratio)).all()
    return [{"prune_ratio": row.prune_ratio, "round": row.round, "adapter_sha256": row.adapter_sha256}
            for row in rows]

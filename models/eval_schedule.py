"""Which of a federated job's global adapters are scored on the held-out split.

Scoring a global adapter costs about as much host time as the round that made it (the whole
held-out split through the trained layers), so a long job may score only every ``eval_every``-th
round. Round 0 (the zero-shot adapter) and the last round are always scored: the first is the
baseline every curve starts from, the last is the result. No torch: the coordinator's request
path and the fleet simulator both ask.
"""

from __future__ import annotations


def is_evaluated_round(round_number: int, rounds: int, eval_every: int) -> bool:
    """True if global adapter ``round_number`` (0 = the initial one) of a ``rounds``-round job is scored."""
    if eval_every < 1:
        raise ValueError(f"eval_every must be at least 1, got {eval_every}")
    return round_number == 0 or round_number == rounds or round_number % eval_every == 0


def evaluated_rounds(rounds: int, eval_every: int) -> list[int]:
    """Every scored round of a ``rounds``-round job, in order (round 0 first)."""
    return [r for r in range(rounds + 1) if is_evaluated_round(r, rounds, eval_every)]

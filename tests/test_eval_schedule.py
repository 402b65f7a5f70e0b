"""Which global adapters a job with ``eval_every`` scores (models/eval_schedule.py)."""

from __future__ import annotations

import pytest

from models.eval_schedule import evaluated_rounds, is_evaluated_round


def test_round_0_every_kth_round_and_the_last_are_scored():
    assert evaluated_rounds(10, 1) == list(range(11))
    assert evaluated_rounds(10, 3) == [0, 3, 6, 9, 10]
    assert evaluated_rounds(15, 5) == [0, 5, 10, 15]
    assert evaluated_rounds(4, 100) == [0, 4]
    assert not is_evaluated_round(1, 10, 3)


def test_eval_every_below_1_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        is_evaluated_round(1, 10, 0)

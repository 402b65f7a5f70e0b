"""One split-learning step on the server: validation of what workers send, the deadline, the
merged top step and each worker's gradient slice (a fake top for the rules, the real top for the
slices)."""

from __future__ import annotations

import pytest
import torch

from coordinator.split.step import SplitStep, StepError

SEQ, HIDDEN, VOCAB = 8, 16, 100


class FakeTopForTests:
    """TEST DOUBLE for ``coordinator.split.top.SplitTop``: loss = mean of the features, gradient =
    2 x features, and it records the merged batch it was given."""

    def __init__(self):
        self.seen = None

    def step(self, features, labels):
        self.seen = (features.clone(), labels.clone())
        return float(features.mean()), 2 * features


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def features(size, value=1.0):
    return torch.full((size, SEQ, HIDDEN), value, dtype=torch.float32)


def labels(size):
    out = torch.randint(0, VOCAB, (size, SEQ))
    out[:, 0] = -100
    return out


def step(clock=None, sizes=None):
    return SplitStep(3, sizes or {"a": 2, "b": 4}, SEQ, HIDDEN, VOCAB, deadline_s=10.0, clock=clock or Clock())


def test_every_planned_worker_in_runs_one_merged_step_and_each_gets_its_own_slice():
    s, top = step(), FakeTopForTests()
    s.submit("b", features(4, 2.0), labels(4))     # arrival order does not matter
    assert not s.ready()
    s.submit("a", features(2, 1.0), labels(2))
    assert s.ready()
    outcome = s.run(top)
    assert outcome.merged == ["a", "b"] and outcome.merged_batch == 6 and outcome.dropped == []
    assert torch.equal(top.seen[0][:2], features(2, 1.0)) and torch.equal(top.seen[0][2:], features(4, 2.0))
    assert torch.equal(s.gradient_for("a"), features(2, 2.0)) and torch.equal(s.gradient_for("b"), features(4, 4.0))
    assert sum(outcome.label_counts.values()) == 6 * (SEQ - 1)


def test_a_late_worker_is_dropped_never_waited_on_and_its_features_refused():
    clock = Clock()
    s = step(clock)
    s.submit("a", features(2), labels(2))
    assert not s.ready()
    clock.now = 11.0
    assert s.ready()
    with pytest.raises(StepError) as late:
        s.submit("b", features(4), labels(4))
    assert (late.value.status, late.value.code) == (409, "step_closed")
    outcome = s.run(FakeTopForTests())
    assert outcome.merged == ["a"] and outcome.dropped == ["b"]
    with pytest.raises(StepError, match="missed step 3's deadline"):
        s.gradient_for("b")
    nobody = step(clock)
    clock.now = 30.0
    assert not nobody.ready()        # past the deadline with nothing to merge: nothing to run


@pytest.mark.parametrize("worker, sent, sent_labels, status, code", [
    ("c", features(2), labels(2), 403, "not_in_step"),
    ("a", features(3), labels(3), 422, "bad_features"),                                  # not the planned batch
    ("a", torch.zeros(2, SEQ, HIDDEN + 1), labels(2), 422, "bad_features"),               # wrong width
    ("a", features(2).double(), labels(2), 422, "bad_features"),
    ("a", features(2, float("nan")), labels(2), 422, "bad_features"),
    ("a", features(2), labels(2).float(), 422, "bad_labels"),
    ("a", features(2), torch.full((2, SEQ), VOCAB), 422, "bad_labels"),                   # beyond the vocabulary
    ("a", features(2), torch.full((2, SEQ), -5), 422, "bad_labels"),
    ("a", features(2), torch.full((2, SEQ), -100), 422, "bad_labels"),                    # nothing to learn
    ("a", "not a tensor", labels(2), 422, "bad_features"),
])
def test_bad_submissions_are_refused_and_change_nothing(worker, sent, sent_labels, status, code):
    s = step()
    with pytest.raises(StepError) as refused:
        s.submit(worker, sent, sent_labels)
    assert (refused.value.status, refused.value.code) == (status, code), refused.value.message
    s.submit("a", features(2), labels(2))        # the refused request left room for the real one
    with pytest.raises(StepError, match="already sent"):
        s.submit("a", features(2), labels(2))
    with pytest.raises(StepError, match="has not run yet"):
        s.gradient_for("a")
    with pytest.raises(StepError, match="waiting for features"):
        s.run(FakeTopForTests())


def test_the_real_top_gives_each_worker_the_gradient_of_its_rows():
    from conftest import tiny_lora_everywhere

    from coordinator.split.top import SplitTop

    peft = tiny_lora_everywhere()
    hidden, vocab = peft.config.hidden_size, peft.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    sent = {w: (torch.randn(n, SEQ, hidden, generator=generator),
                torch.randint(0, vocab, (n, SEQ), generator=generator)) for w, n in (("a", 1), ("b", 3))}
    s = SplitStep(1, {"a": 1, "b": 3}, SEQ, hidden, vocab, deadline_s=60.0)
    for worker, (f, l) in sent.items():
        s.submit(worker, f, l)
    s.run(SplitTop(peft, 2, lr=0.0))
    reference = SplitTop(peft, 2, lr=0.0)
    _, whole = reference.loss_and_feature_grad(torch.cat([sent["a"][0], sent["b"][0]]),
                                               torch.cat([sent["a"][1], sent["b"][1]]))
    torch.testing.assert_close(s.gradient_for("a"), whole[:1])
    torch.testing.assert_close(s.gradient_for("b"), whole[1:])


def test_labels_with_more_labelled_positions_than_the_top_scores_are_refused():
    s = SplitStep(1, {"a": 2}, SEQ, HIDDEN, VOCAB, deadline_s=10.0, clock=Clock(), loss_positions=1)
    two_labelled = torch.full((2, SEQ), -100)
    two_labelled[:, -2:] = 5
    with pytest.raises(StepError) as refused:
        s.submit("a", features(2), two_labelled)
    assert refused.value.code == "bad_labels" and "loss_positions=1" in refused.value.message
    assert not s.submitted("a")
    one_labelled = torch.full((2, SEQ), -100)
    one_labelled[:, -1] = 5
    s.submit("a", features(2), one_labelled)
    assert s.ready()

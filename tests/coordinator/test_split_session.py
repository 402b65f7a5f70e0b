"""A split job's server loop (coordinator/split/session.py) with a fake top and a manual clock.

The top is a fake here (``FakeTop``: loss = mean of the features, gradient = ones) because what
is under test is the session's bookkeeping: plans, lock-step order, deadlines, dropped workers,
averaging, measurements taken by the server's clock. The real top and the real device
programs run together in tests/test_split_http.py.
"""

from __future__ import annotations

import pytest
import torch

from coordinator.split.session import SplitSession
from coordinator.split.step import StepError

SEQ, HIDDEN, VOCAB = 4, 3, 10
KEYS = {"layers.0.lora_A": (2, HIDDEN), "layers.0.lora_B": (HIDDEN, 2)}


class FakeTop:
    """Stands in for coordinator.split.top.SplitTop: counts calls and their batch sizes."""

    def __init__(self):
        self.calls: list[int] = []

    def step(self, features, labels):
        self.calls.append(features.size(0))
        return float(features.mean()), torch.ones_like(features)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def session(mode="mergesfl", steps=4, average_every=2, sizes=(1, 2, 4), target=4, clock=None, top=None):
    return SplitSession(top or FakeTop(), start_adapter=adapter(0.0), seq=SEQ, hidden=HIDDEN, vocab_size=VOCAB,
                        compiled_sizes=sizes, target_batch=target, steps=steps, average_every=average_every,
                        step_deadline_s=10.0, mode=mode, clock=clock or Clock())


def adapter(value=1.0):
    return {key: torch.full(shape, value) for key, shape in KEYS.items()}


def batch(size, label=1):
    labels = torch.full((size, SEQ), -100, dtype=torch.long)
    labels[:, -1] = label
    return torch.zeros(size, SEQ, HIDDEN), labels


def send(job, worker, label=1):
    action = job.next_action(worker)
    assert action["kind"] == "features", action
    features, labels = batch(action["batch_size"], label)
    job.submit_features(worker, action["step"], features, labels, size_bytes=features.numel() * 4)
    return action


def test_lock_step_round_trip_with_averaging():
    clock = Clock()
    job = session(clock=clock, steps=2, average_every=2)
    for worker in ("a", "b"):
        job.join(worker)
    assert job.next_action("b")["kind"] == "features"      # step 1 opens at 0
    clock.now = 1.0
    first = send(job, "a")
    assert first["batch_size"] == 2            # no measurement yet: the target shared equally
    assert job.next_action("a") == {"kind": "wait"}
    send(job, "b")
    assert job.top.calls == [4]                 # one merged top step
    assert job.history[0].bytes_up == 2 * 2 * SEQ * HIDDEN * 4 and job.history[0].bytes_down == 4 * SEQ * HIDDEN * 4
    for worker in ("a", "b"):
        assert job.next_action(worker) == {"kind": "gradient", "step": 1}
        assert torch.equal(job.gradient(worker, 1), torch.ones(2, SEQ, HIDDEN))
    clock.now = 2.0                             # equal speeds measured: equal sizes again
    for worker in ("a", "b"):
        assert send(job, worker)["batch_size"] == 2
    for worker in ("a", "b"):
        job.gradient(worker, 2)
    assert job.next_action("a") == {"kind": "upload_adapter", "averaging": 1}
    job.submit_adapter("a", 1, adapter(1.0), 100)
    assert job.next_action("a") == {"kind": "wait"}
    job.submit_adapter("b", 1, adapter(3.0), 100)
    assert job.next_action("a") == {"kind": "download_adapter", "averaging": 1}
    averaged = job.averaged_adapter("a", 1)
    assert torch.allclose(averaged["layers.0.lora_A"], torch.full(KEYS["layers.0.lora_A"], 2.0))
    assert job.next_action("a") == {"kind": "done"}
    assert job.next_action("b")["kind"] == "download_adapter"


def test_a_late_worker_is_dropped_and_refused_afterwards():
    clock = Clock()
    job = session(clock=clock)
    for worker in ("a", "b", "c"):
        job.join(worker)
    send(job, "a")
    send(job, "b")
    clock.now = 11.0                            # past the step's deadline
    assert job.next_action("c") == {"kind": "wait"} or job.next_action("c")["kind"] == "features"
    assert job.history[0].merged == ["a", "b"] and job.history[0].dropped == ["c"]
    features, labels = batch(job.history[0].planned["c"])
    with pytest.raises(StepError) as refused:
        job.submit_features("c", 1, features, labels, 0)
    assert refused.value.status == 409
    with pytest.raises(StepError) as other:
        job.gradient("c", 1)
    assert other.value.code == "dropped"


def test_refusals_change_nothing():
    job = session()
    job.join("a")
    job.join("b")
    action = job.next_action("a")
    for bad_features, bad_labels, code in [
        (torch.zeros(action["batch_size"], SEQ, HIDDEN + 1), batch(action["batch_size"])[1], "bad_features"),
        (torch.full((action["batch_size"], SEQ, HIDDEN), float("nan")), batch(action["batch_size"])[1], "bad_features"),
        (batch(action["batch_size"])[0], torch.full((action["batch_size"], SEQ), VOCAB), "bad_labels"),
    ]:
        with pytest.raises(StepError) as refused:
            job.submit_features("a", action["step"], bad_features, bad_labels, 0)
        assert refused.value.code == code and refused.value.status == 422
    assert job.workers["a"].samples == type(job.workers["a"].samples)(maxlen=8) and job.workers["a"].bytes_up == 0
    assert job.next_action("a")["kind"] == "features"
    with pytest.raises(StepError) as stranger:
        job.next_action("mallory")
    assert stranger.value.status == 403
    send(job, "a")
    with pytest.raises(StepError) as early:
        job.gradient("a", 1)                    # b has not sent: not ready
    assert early.value.code == "step_not_ready"
    with pytest.raises(StepError) as other_slice:
        job.gradient("b", 1)
    assert other_slice.value.status == 409


def test_bad_adapters_are_refused_and_change_nothing():
    job = session(steps=1, average_every=1)
    job.join("a")
    send(job, "a")
    job.gradient("a", 1)
    assert job.next_action("a") == {"kind": "upload_adapter", "averaging": 1}
    for bad in ({"layers.0.lora_A": torch.ones(KEYS["layers.0.lora_A"])},
                {**adapter(), "layers.0.lora_B": torch.ones(2, 2)},
                {**adapter(), "layers.0.lora_B": torch.full(KEYS["layers.0.lora_B"], float("inf"))}):
        with pytest.raises(StepError) as refused:
            job.submit_adapter("a", 1, bad, 10)
        assert refused.value.code == "bad_adapter"
    assert job.averaging.received == {} and job.workers["a"].bytes_up > 0
    job.submit_adapter("a", 1, adapter(), 10)
    assert job.next_action("a")["kind"] == "download_adapter"


def test_mergesfl_regulates_batch_sizes_from_the_servers_measurements():
    clock = Clock()
    job = session(clock=clock, steps=6, average_every=6, sizes=(1, 2, 3, 4), target=6)
    for worker in ("fast", "slow"):
        job.join(worker)
    for _ in range(3):                          # fast takes 1 s per step, slow 4 s, at equal sizes
        send(job, "fast", label=1)
        clock.now += 3.0
        send(job, "slow", label=2)
        clock.now += 1.0
        for worker in ("fast", "slow"):
            job.gradient(worker, job.history[-1].number)
    planned = job.step.batch_sizes
    assert planned["fast"] > planned.get("slow", 0), planned


def test_plain_split_learning_steps_the_top_per_worker():
    top = FakeTop()
    job = session(mode="plain", top=top)
    for worker in ("a", "b"):
        job.join(worker)
    send(job, "a")
    send(job, "b")
    assert top.calls == [2, 2]


def test_a_step_nobody_sent_is_abandoned_and_the_next_one_planned():
    clock = Clock()
    job = session(clock=clock)
    job.join("a")
    first = job.next_action("a")
    clock.now = 20.0
    second = job.next_action("a")
    assert second["kind"] == "features" and second["step"] == first["step"] + 1
    assert job.steps_run == 0


def test_a_language_modelling_task_keeps_a_bounded_label_histogram():
    from coordinator.split.session import MAX_LABELS, OTHER_LABELS, SplitSession

    job = SplitSession(FakeTop(), start_adapter=adapter(0.0), seq=SEQ, hidden=HIDDEN, vocab_size=1000,
                       compiled_sizes=(32,), target_batch=32, steps=1, average_every=1, step_deadline_s=10.0,
                       clock=Clock())
    job.join("a")
    action = job.next_action("a")
    labels = torch.arange(32 * SEQ).reshape(32, SEQ) * 7 % 1000          # many distinct token ids
    job.submit_features("a", action["step"], torch.zeros(32, SEQ, HIDDEN), labels, 0)
    counts = job.workers["a"].label_counts
    assert len(counts) == MAX_LABELS and OTHER_LABELS in counts
    assert sum(counts.values()) == 32 * (SEQ - 1)


def test_a_vanished_worker_is_left_out_after_missing_steps_and_back_when_it_asks():
    clock = Clock()
    job = session(mode="plain", clock=clock, steps=10, average_every=10)   # plain plans everyone it has
    for worker in ("a", "ghost"):
        job.join(worker)
    for _ in range(2):                           # ghost never sends: two steps run at their deadline
        send(job, "a")
        clock.now += 11.0
        job.next_action("a")
        job.gradient("a", job.history[-1].number)
    assert [r.dropped for r in job.history] == [["ghost"], ["ghost"]]
    assert "ghost" not in job.step.batch_sizes   # the next plan leaves it out
    job.next_action("ghost")                     # it asks again: planned from the next step on
    send(job, "a")
    job.gradient("a", job.history[-1].number)
    assert "ghost" in job.step.batch_sizes


def test_a_pending_gradient_comes_before_a_new_average():
    job = session(steps=2, average_every=1)
    job.join("a")
    send(job, "a")
    # The averaging waits for the gradient; the worker is told to fetch it first.
    assert job.next_action("a") == {"kind": "gradient", "step": 1}


def test_adapters_with_absurd_values_are_refused():
    from coordinator.split.session import MAX_ADAPTER_ABS

    job = session(steps=1, average_every=1)
    job.join("a")
    send(job, "a")
    job.gradient("a", 1)
    with pytest.raises(StepError) as refused:
        job.submit_adapter("a", 1, adapter(10 * MAX_ADAPTER_ABS), 10)
    assert refused.value.code == "bad_adapter" and job.averaging.received == {}


def test_a_job_takes_at_most_max_workers():
    from coordinator.split import session as module

    job = session()
    for index in range(module.MAX_WORKERS):
        job.join(f"w{index}")
    with pytest.raises(StepError) as full:
        job.join("one-too-many")
    assert full.value.code == "job_full" and len(job.workers) == module.MAX_WORKERS


def test_a_top_step_that_overflows_updates_nothing():
    from coordinator.split.top import SplitTop

    class Overflowing(FakeTop):
        def step(self, features, labels):
            self.calls.append(features.size(0))
            return float("nan"), torch.zeros_like(features)

    job = session(top=Overflowing())
    job.join("a")
    send(job, "a")
    assert job.summary()["last_step"]["loss"] is None          # strict JSON: no NaN
    assert torch.equal(job.gradient("a", 1), torch.zeros(job.history[0].planned["a"], SEQ, HIDDEN))
    assert callable(SplitTop.step)

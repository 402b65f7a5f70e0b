"""A job's label-position tier (``tier.loss_positions`` K) must fit its task's labels.

A program compiled with K computes the loss at the first K labelled positions of a row and
every trainer refuses a batch with more, so the coordinator refuses, at creation, a job whose
task's examples carry more than K labelled positions under the model's tokenizer (a 422 that
says what to do, nothing stored), and accepts one whose task fits. ``bbcnews`` labels its
topic word: 5-14 byte tokens on the tiny model (one SmolLM2 token); ``chatterbot`` answers are
free text. The first tests call ``parse_job_spec`` (what both the API and the dashboard's form
use) directly; the last ones go through a served coordinator.
"""

from __future__ import annotations

import json

import pytest

from coordinator.errors import ApiError
from coordinator.scheduling.configurator import JobView, get_configurator
from coordinator.services.jobs import parse_job_spec
from coordinator_harness import (JOB_TIER, artifact_cache, assert_error, backend, cleanup_jobs,  # noqa: F401
                                 count_rows, server)
from models.tier_algebra import normalized_tier, sub_tier

#: ``len(" entertainment")``: the longest bbcnews target on the tiny byte-level tokenizer.
TINY_TOPIC_TOKENS = 14


def _spec(task: str = "bbcnews", model: str = "tiny", **tier):
    return parse_job_spec({"model": model, "task": task, "rounds": 1, "tier": {**JOB_TIER, **tier}}, 10.0)


def _refusal(**kwargs) -> str:
    with pytest.raises(ApiError) as caught:
        _spec(**kwargs)
    assert caught.value.code == "invalid_field"
    return caught.value.message


def test_a_task_whose_labels_fit_is_accepted_with_its_k():
    assert _spec(loss_positions=TINY_TOPIC_TOKENS).tier["loss_positions"] == TINY_TOPIC_TOKENS
    assert _spec(loss_positions=20).tier["loss_positions"] == 20
    assert "loss_positions" not in _spec().tier            # no head, nothing checked, nothing stored
    # K = seq - 1 holds every row there is, free text included (no speed-up, but nothing refused).
    assert _spec(task="chatterbot", loss_positions=JOB_TIER["seq"] - 1).tier["loss_positions"] == 31


def test_a_k_below_the_longest_label_word_is_refused_saying_what_to_do():
    message = _refusal(loss_positions=TINY_TOPIC_TOKENS - 1)
    assert message == ("tier.loss_positions: 13 is smaller than the 14 label tokens of the examples of task "
                       "'bbcnews' under the tokenizer of model 'tiny' (seq 32); devices would refuse their "
                       "batches: raise loss_positions to at least 14 or leave it out")
    assert "at least 14" in _refusal(loss_positions=1)


def test_free_text_tasks_are_refused_any_k_that_a_row_can_exceed():
    message = _refusal(task="chatterbot", loss_positions=4)
    assert message.startswith("tier.loss_positions: 4 is smaller than the up to 31 labelled positions per row "
                              "of task 'chatterbot' (free-text targets at seq 32)")
    assert "leave loss_positions out" in message


def test_a_model_whose_tokenizer_does_not_load_is_refused_not_waved_through(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    message = _refusal(model=str(tmp_path), loss_positions=2)
    assert message.startswith("tier.loss_positions: cannot count the label tokens of task 'bbcnews' under the "
                              "tokenizer of model")
    assert "leave loss_positions out" in message


@pytest.mark.parametrize("name", ["legend", "fedspine", "hetlora"])
def test_every_tier_a_configurator_derives_keeps_the_jobs_k(name):
    """Why checking the job's tier is enough: sub-tiers are built from it and keep K."""
    from models.registry import TINY_CONFIG

    reference = normalized_tier({**JOB_TIER, "lora_layers": 4, "lora_rank": 8, "loss_positions": 3})
    assert sub_tier(reference, (2, 4), prune_ratio=0.25)["loss_positions"] == 3
    shape = {key: TINY_CONFIG[key] for key in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                "num_attention_heads", "num_key_value_heads", "head_dim",
                                                "vocab_size")}
    job = JobView(job_id=1, model="tiny", reference_tier=reference, local_steps=20, round_number=1,
                  model_shape=shape, fleet=({"ram_mb": 4096, "gflops": 10.0, "runtimes": ["executorch"]},))
    candidates = get_configurator(name).candidate_tiers(job)
    assert len(candidates) > 1
    assert {t.get("loss_positions") for t in candidates} == {3}


# --- through the API --------------------------------------------------------------------------

@pytest.mark.parametrize("task, tier, snippet", [
    ("bbcnews", {"loss_positions": 1}, "smaller than the 14 label tokens"),
    ("chatterbot", {"loss_positions": 4}, "free-text targets"),
], ids=["bbcnews-k1-tiny", "chatterbot-k4"])
def test_a_mismatched_job_is_422_and_changes_nothing(server, task, tier, snippet):
    before = count_rows(server.database)
    body = {"model": "tiny", "task": task, "rounds": 1, "tier": {**JOB_TIER, **tier}}
    error = assert_error(server.admin().post("/api/v1/jobs", json=body), 422, "invalid_field")
    assert snippet in error["error"]["message"] and "loss_positions" in error["error"]["message"], error
    assert count_rows(server.database) == before


def test_a_fitting_job_is_created_and_its_artifact_has_the_label_head(server, cleanup_jobs):
    admin = server.admin()
    # Portable kernels: the export this needs takes ~10 s instead of ~45 s.
    created = admin.create_job(tier={**JOB_TIER, "kernels": "portable", "loss_positions": TINY_TOPIC_TOKENS})
    cleanup_jobs.append(created["job_id"])
    assert created["tier"]["loss_positions"] == TINY_TOPIC_TOKENS
    job = admin.wait_job(created["job_id"], lambda j: j["status"] == "running", timeout=300, what="ran")
    manifest = admin.get(job["artifact"]["url"]).json()
    assert manifest["program"]["loss_positions"] == TINY_TOPIC_TOKENS

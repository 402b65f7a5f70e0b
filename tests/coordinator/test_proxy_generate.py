"""``POST /api/v1/jobs/<id>/generate`` and the dashboard's "try prompts" page, in process.

One coordinator app (SQLite, no background threads) with one job whose tier prunes the tiny
model to half width: its artifact (exported once here, with ``pruned_base/``) is S, the
unpruned tiny model is L. A round-1 global adapter with non-zero B matrices is stored like
an aggregated one, so S_tuned really differs from S_base, and the endpoint's completion is
checked against ``models.proxy`` run by hand on the same models.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

ADMIN = "proxy-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    from conftest import tiny_tier

    from coordinator.app import create_app
    from coordinator.models import GlobalAdapter, Job, JobStatus, utcnow

    tmp = tmp_path_factory.mktemp("proxy-generate")
    app = create_app({"DATABASE": f"sqlite:///{tmp / 'db.sqlite3'}", "INSTANCE_PATH": str(tmp / "inst"),
                      "ARTIFACT_CACHE": str(tmp / "cache"), "ADMIN_TOKEN": ADMIN, "ENROLLMENT_KEY": "e",
                      "BACKGROUND": False})
    state = app.extensions["pockettune"]
    now = utcnow()
    job_ids = {}
    with state.db.write() as session:
        for name, prune in (("pruned", 0.5), ("preparing", 0.0)):
            job = Job(name=name, model="tiny", task="bbcnews", tier=tiny_tier(prune_ratio=prune, kernels="portable").to_dict(), rounds=2,
                      devices_per_round=1, min_updates=1, round_deadline_s=60.0, local_steps=1, lr=0.1,
                      strategy="fedavg", max_update_norm=100.0, eval_examples=0, status=JobStatus.PREPARING,
                      created_at=now, updated_at=now)
            session.add(job)
            session.flush()
            job_ids[name] = job.id
    state.worker.prepare(job_ids["pruned"])           # exports the pruned tiny artifact (portable kernels: ~10 s)
    with state.db.read() as session:
        initial = session.query(GlobalAdapter).filter_by(job_id=job_ids["pruned"], round=0).one()
    start = state.adapters.tensors(initial.weights_sha256)
    rng = np.random.default_rng(0)
    tuned = {k: (v + rng.normal(0, 0.5, v.shape)).astype(np.float32) if "lora_B" in k else v
             for k, v in start.items()}
    weights, ptd = state.adapters.store(tuned)
    with state.db.write() as session:
        session.add(GlobalAdapter(job_id=job_ids["pruned"], round=1, config_sha256=initial.config_sha256,
                                  weights_sha256=weights.sha256, weights_size=weights.size, ptd_sha256=ptd.sha256,
                                  ptd_size=ptd.size, num_updates=1, num_examples=1, strategy="fedavg",
                                  created_at=utcnow()))
    yield app, job_ids, tuned
    state.db.dispose()


def _by_hand(app, job_id, tensors, prompt, **settings):
    """The completion models.proxy gives for the job's artifact model with ``tensors`` and tiny as L."""
    from coordinator.models import Artifact, Job
    from export.server_model import load_artifact_model, set_adapter_tensors
    from models.proxy import GenerationSettings, ProxyTunedLM
    from models.registry import load_base_model

    state = app.extensions["pockettune"]
    with state.db.read() as session:
        artifact = session.get(Artifact, session.get(Job, job_id).artifact_id)
    small = load_artifact_model(state.worker.cache.directory(artifact.key))
    set_adapter_tensors(small.peft_model, tensors)
    large = load_base_model("tiny")
    proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small.peft_model, small.tokenizer)
    return proxy.generate(prompt, GenerationSettings(**settings))


def test_generate_returns_the_proxy_tuned_completion_of_the_latest_adapter(coordinator):
    app, jobs, tuned = coordinator
    client = app.test_client()
    response = client.post(f"/api/v1/jobs/{jobs['pruned']}/generate", headers=AUTH,
                           json={"prompt": "Topic:", "alpha": 1.5, "max_new_tokens": 10, "compare": True})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["round"] == 1 and body["large"] == "tiny" and body["alpha"] == 1.5
    assert body["small"]["prune_ratio"] == 0.5 and body["small"]["num_attention_heads"] == 2
    expected = _by_hand(app, jobs["pruned"], tuned, "Topic:", alpha=1.5, max_new_tokens=10)
    assert body["token_ids"] == expected.token_ids and body["completion"] == expected.text
    alone = _by_hand(app, jobs["pruned"], tuned, "Topic:", alpha=0.0, max_new_tokens=10)
    assert body["large_alone"]["token_ids"] == alone.token_ids
    assert body["token_ids"] != alone.token_ids, "the adapter's offset should change a greedy completion"
    # Round 0 (B = 0): S_tuned is S_base, so the proxy is L alone whatever alpha is.
    round0 = client.post(f"/api/v1/jobs/{jobs['pruned']}/generate", headers=AUTH,
                         json={"prompt": "Topic:", "alpha": 1.5, "max_new_tokens": 10, "round": 0}).get_json()
    assert round0["round"] == 0 and round0["token_ids"] == alone.token_ids
    # Sampling with a seed reproduces.
    sampled = [client.post(f"/api/v1/jobs/{jobs['pruned']}/generate", headers=AUTH,
                           json={"prompt": "ab", "temperature": 1.0, "top_p": 0.9, "seed": 4,
                                 "max_new_tokens": 8}).get_json()["token_ids"] for _ in range(2)]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 8


@pytest.mark.parametrize("body, status, code, message", [
    ({"prompt": "hi", "alpha": -1}, 422, "invalid_field", "alpha must be between 0"),
    ({"prompt": "hi", "alpha": "strong"}, 422, "invalid_field", "alpha must be a finite number"),
    ({"prompt": "hi", "alpha": True}, 422, "invalid_field", "alpha must be a finite number"),
    ({"prompt": "hi", "max_new_tokens": 0}, 422, "invalid_field", "max_new_tokens must be an integer from 1 to 256"),
    ({"prompt": "hi", "max_new_tokens": 300}, 422, "invalid_field", "max_new_tokens must be an integer from 1 to 256"),
    ({"prompt": "hi", "max_new_tokens": 2.5}, 422, "invalid_field", "max_new_tokens must be an integer"),
    ({"prompt": "hi", "top_p": 0}, 422, "invalid_field", "top_p must be in (0, 1]"),
    ({"prompt": ""}, 422, "invalid_field", "prompt must be a non-empty string"),
    ({"prompt": "x" * 9000}, 422, "invalid_field", "prompt is 9000 characters; at most 8000"),
    ({"prompt": "x" * 500, "max_new_tokens": 64}, 422, "invalid_field", "the prompt is 500 tokens; at most 448 fit"),
    ({"prompt": "hi", "round": 7}, 404, "not_found", "has no global adapter for round 7"),
    ({"prompt": "hi", "round": -1}, 422, "invalid_field", "round must be an integer in [0, "),
    ({"prompt": "hi", "large": "no-such-model"}, 422, "invalid_field", "large must name a base model"),
    ({"prompt": "hi", "temp": 1}, 422, "invalid_field", 'unknown fields ["temp"]'),
])
def test_bad_requests_are_refused_with_a_message(coordinator, body, status, code, message):
    app, jobs, _ = coordinator
    response = app.test_client().post(f"/api/v1/jobs/{jobs['pruned']}/generate", headers=AUTH, json=body)
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code and message in error["message"], error


def test_unknown_job_no_adapter_yet_mismatched_tokenizer_and_auth(coordinator, tmp_path):
    from tests.test_proxy import _word_tokenizer

    from models.registry import load_base_model

    app, jobs, _ = coordinator
    client = app.test_client()
    missing = client.post("/api/v1/jobs/999/generate", headers=AUTH, json={"prompt": "hi"})
    assert missing.status_code == 404 and "no job 999" in missing.get_json()["error"]["message"]
    preparing = client.post(f"/api/v1/jobs/{jobs['preparing']}/generate", headers=AUTH, json={"prompt": "hi"})
    assert preparing.status_code == 404
    assert "still being prepared" in preparing.get_json()["error"]["message"]
    # A large model whose tokenizer is not the job's: refused, saying why and what to use instead.
    other = tmp_path / "other-large"
    load_base_model("tiny").model.save_pretrained(str(other))
    _word_tokenizer().save_pretrained(str(other))
    refused = client.post(f"/api/v1/jobs/{jobs['pruned']}/generate", headers=AUTH,
                          json={"prompt": "hi", "large": str(other)})
    assert refused.status_code == 422
    assert "cannot steer this job's model" in refused.get_json()["error"]["message"]
    assert "same tokenizer" in refused.get_json()["error"]["message"] or "L's tokenizer" in \
        refused.get_json()["error"]["message"]
    assert client.post(f"/api/v1/jobs/{jobs['pruned']}/generate", json={"prompt": "hi"}).status_code == 401
    not_json = client.post(f"/api/v1/jobs/{jobs['pruned']}/generate", headers=AUTH, data="prompt=hi")
    assert not_json.status_code == 400 and not_json.get_json()["error"]["code"] == "invalid_json"


def test_dashboard_form_needs_login_and_shows_the_completion(coordinator):
    app, jobs, tuned = coordinator
    client = app.test_client()
    url = f"/jobs/{jobs['pruned']}/generate"
    assert client.get(url).status_code == 302                       # login first
    assert client.post("/login", data={"token": ADMIN}).status_code == 302
    page = client.get(url).get_data(as_text=True)
    assert 'id="generate-form"' in page and "Latest global adapter: round 1" in page
    assert 'id="try-prompts"' in client.get(f"/jobs/{jobs['pruned']}").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post(url, data={"csrf_token": "forged", "prompt": "hi"}).status_code == 400
    shown = client.post(url, data={"csrf_token": token, "prompt": "Topic:", "alpha": "1.5", "max_new_tokens": "10",
                                   "temperature": "0", "top_p": "1", "seed": "0", "round": "", "large": "",
                                   "compare": "on"})
    assert shown.status_code == 200
    html = shown.get_data(as_text=True)
    expected = _by_hand(app, jobs["pruned"], tuned, "Topic:", alpha=1.5, max_new_tokens=10)
    from markupsafe import escape

    assert f'<span class="hint">Topic:</span>{escape(expected.text)}</pre>' in html
    assert 'id="completion-alone"' in html and "Round 1, alpha 1.5" in html
    bad = client.post(url, data={"csrf_token": token, "prompt": "hi", "alpha": "lots"})
    assert bad.status_code == 422 and "alpha: Alpha (0 = the large model alone) must be a number" in \
        bad.get_data(as_text=True)
    bad = client.post(url, data={"csrf_token": token, "prompt": "hi", "alpha": "20"})
    assert bad.status_code == 422 and "alpha must be between 0" in bad.get_data(as_text=True)
    assert client.get("/jobs/999/generate").status_code == 404
